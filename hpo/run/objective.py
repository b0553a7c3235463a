"""The objective: one Optuna trial = suggest settings, train with ``trainer.fit``, record.

This is the only module of the service that runs the trainer. Each epoch reports the study's
metric (one storage write for the report, one for the progress attribute, whose last value
goes with the results) and asks the pruner.
A retried trial (its worker died) continues from the dead trial's ``last.pt``.

No work is lost between the upload and COMPLETE. A trial ends in three writes: its files go
into the artifact store (their ids first into the folder's pending list ``stored.json``), then
its results and the files' records in one transaction, then Optuna's COMPLETE. A worker killed
after the records leaves a RUNNING trial that has its result: the retry the heartbeat queues
records that result as its own (same value, same stored files, the checkpoint's sha256 checked)
and trains nothing. One killed between the upload and the records leaves files no record names:
the retry removes them (and the half-written ``*.tmp`` saves) and resumes from ``last.pt``.
Killed earlier, the retry resumes from ``last.pt``. ``HPO_TEST_KILL_AT=after_store`` or
``after_records`` SIGKILLs the worker at those two points: a test-only hook
(tests/hpo/test_records.py), never set in production.

What a trial records is described in :mod:`hpo.store.records`: short scalars as user attributes
(the dashboard's trial table shows each as a column), the large or nested records as ``hpo:``
system attributes.

Checkpoints live only while something may need them (docs/architecture.md): a completed trial
keeps its ``best.pt`` in the store and nothing in its folder; a pruned trial, or one that failed
on its own, keeps none; an interrupted one keeps both for its retry, and when that retry ends
the checkpoints of the trials it retried go too. A trial whose files cannot be stored (a
read-only or full artifact folder) is recorded FAIL with that reason and keeps its
checkpoints: ``hpo retry`` then stores them without training again.

Every storage write is a transaction and every transaction a commit (a WAL sync on SQLite, a
round trip and a log flush on PostgreSQL). Given the study's storage, the objective writes each
group of attributes in one transaction: the start attributes, each epoch's progress, and at the
end the results together with the artifact records. Without it (``storage=None``) it writes
them one by one, as Optuna's ``trial.set_user_attr`` does.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback

import trainer
from hpo.errors import ArtifactStoreError, EnsembleError
from hpo.run.refit_plan import refit_overrides
from hpo.store.artifacts import (
    ArtifactPaths,
    StoredFiles,
    confusion_png,
    drop_checkpoints,
    drop_partial_saves,
    sweep_pending,
)
from hpo.store.optuna_private import cached_frozen_trial, study_id, study_storage, trial_id
from hpo.store.records import (
    ARTIFACT_ATTR_PREFIX,
    ARTIFACTS_KEY,
    EPOCHS_KEY,
    METRICS_KEY,
    RESULT_USER_KEYS,
    SHA256_KEY,
    VALUE_KEY,
    VERSIONS_KEY,
    artifact_ids,
    library_versions,
    recorded_sha256,
    recorded_value,
)
from hpo.studyfile.space import build_config, suggest
from hpo.studyfile.spec import StudySpec

__all__ = ["Objective", "val_hash"]

log = logging.getLogger("hpo")


def val_hash(paths: list[str], labels: np.ndarray) -> str:
    """Identifies a validation set: trials with the same hash can be ensembled."""
    h = hashlib.sha256()
    for p, y in zip(paths, labels.tolist()):
        h.update(f"{Path(p).parent.name}/{Path(p).name}:{y}\n".encode())
    return h.hexdigest()[:16]


def _retry_chain(trial: optuna.Trial) -> list[int]:
    """Numbers of the failed trials this one retries, most recent first."""
    # The retry records (system attributes) are written when the trial is created, and Optuna
    # loaded the created trial into the Trial already: reading that copy saves a database
    # read per trial.
    frozen = cached_frozen_trial(trial)
    if frozen is None:
        frozen = study_storage(trial.study).get_trial(trial_id(trial))
    history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    return list(reversed(history))


def _write_attrs(storage: BaseStorage | None, trial: optuna.Trial, *,
                 user: Mapping[str, Any], system: Mapping[str, Any] | None = None) -> None:
    """One transaction when ``storage`` can batch; otherwise one per attribute (Optuna's way)."""
    tid = trial_id(trial)
    batch = getattr(storage, "set_trial_attrs", None)
    if batch is not None:
        batch(tid, user=user, system=system)
        return
    for key, value in user.items():
        trial.set_user_attr(key, value)
    for key, value in (system or {}).items():
        (storage or trial.storage).set_trial_system_attr(tid, key, value)


def _test_kill(point: str) -> None:
    """Test-only fault injection: ``HPO_TEST_KILL_AT=<point>`` SIGKILLs the worker here."""
    if os.environ.get("HPO_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


class Objective:
    """Callable for ``study.optimize``; keeps the decoded data of one worker between trials.

    Args:
        spec: the validated study file.
        artifacts: where trials keep their files.
        train_dir: overrides the study's ``data.train_dir`` (``--data``).
        fit: the training function (``trainer.fit``; the storage load test passes a stand-in
            with the same signature that sleeps instead of training).
        storage: the study's storage from :func:`hpo.store.storage.open_storage` (the one
            :func:`hpo.store.storage.storage_of` returns for the study): attributes are then
            written a group per transaction. None writes each attribute on its own (slower,
            same data).
        on_start: called first thing in every trial, once Optuna has created it (the worker
            releases its budget lock there); also settable later as ``self.on_start``.
    """

    def __init__(self, spec: StudySpec, artifacts: ArtifactPaths, *, train_dir: str | None = None,
                 fit=None, storage: BaseStorage | None = None,
                 on_start: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.artifacts = artifacts
        self.train_dir = train_dir
        self.fit = fit or trainer.fit
        self.storage = storage
        self.on_start = on_start
        self._prepared: dict[Any, trainer.PreparedData] = {}
        self.current_trial: int | None = None

    def _data(self, cfg: trainer.TrainConfig) -> trainer.PreparedData | None:
        if self.fit is not trainer.fit:
            return None
        key = trainer.data_key(cfg)
        if key not in self._prepared:
            self._prepared[key] = trainer.prepare_data(cfg)
        return self._prepared[key]

    def _resume_point(self, trial: optuna.Trial) -> Path | None:
        for number in _retry_chain(trial):
            last = self.artifacts.trial_dir(trial.study.study_name, number) / "last.pt"
            if last.is_file():
                return last
        return None

    def _write(self, trial: optuna.Trial, user: Mapping[str, Any],
               system: Mapping[str, Any] | None = None) -> None:
        _write_attrs(self.storage, trial, user=user, system=system)

    def _start(self, trial: optuna.Trial, cfg: trainer.TrainConfig) -> Path | None:
        """Write the start attributes (one transaction); returns the checkpoint to resume."""
        resume = self._resume_point(trial)
        start_attrs = {**_worker_attrs(), "seed": cfg.seed, "device": _device_label(cfg.device)}
        if resume is not None:
            done = trainer.load_checkpoint(resume)["epoch"]
            start_attrs["resumed_from"] = {"trial": int(resume.parent.name), "epoch": done}
            log.info("trial %d resumes trial %s from epoch %d", trial.number,
                     resume.parent.name, done)
        self._write(trial, start_attrs, {VERSIONS_KEY: library_versions()})
        return resume

    def _read_trial(self, trial: optuna.Trial, number: int) -> optuna.trial.FrozenTrial:
        # Two reads, only for a retry: cheaper than loading every trial of the study.
        storage = study_storage(trial.study)
        tid = storage.get_trial_id_from_study_id_trial_number(study_id(trial.study), number)
        return storage.get_trial(tid)

    def _finished_before(self, trial: optuna.Trial) -> float | None:
        """For a retry: sweep the retried trials' leftovers, and adopt a result one recorded.

        The retried trials' half-written saves go, and the stored files their pending lists
        name but their records do not (a kill between the upload and the records). A retried
        trial killed after its records has a result: it becomes this trial's (returned).
        """
        chain = _retry_chain(trial)
        retried = []
        for number in chain:
            folder = self.artifacts.trial_dir(trial.study.study_name, number)
            drop_partial_saves(folder)
            frozen = self._read_trial(trial, number)
            sweep_pending(folder, self.artifacts.root, named=artifact_ids(frozen).values())
            retried.append(frozen)
        for frozen in retried:
            value = self._usable_result(frozen)
            if value is not None:
                self._adopt(trial, frozen, value)
                return value
        return None

    def _usable_result(self, frozen: optuna.trial.FrozenTrial) -> float | None:
        """The value of a trial's recorded result whose stored files are all there, unchanged."""
        value = recorded_value(frozen, self.spec.metric)
        ids = artifact_ids(frozen)
        if value is None or recorded_sha256(frozen, "best.pt") is None or "best.pt" not in ids:
            return None
        try:
            for name in ids:
                self.artifacts.stored_path(frozen, name)  # there; best.pt's sha256 checked
        except EnsembleError as exc:
            log.warning("trial %d recorded a result that cannot be used (%s); training again",
                        frozen.number, exc)
            return None
        return value

    def _adopt(self, trial: optuna.Trial, source: optuna.trial.FrozenTrial,
               value: float) -> None:
        """Record ``source``'s result as this trial's: same value, the same stored files."""
        user = {k: source.user_attrs[k] for k in (*RESULT_USER_KEYS, "seed")
                if k in source.user_attrs}
        system = {k: v for k, v in source.system_attrs.items()
                  if k.startswith(("hpo:", ARTIFACT_ATTR_PREFIX))}
        self._write(trial, {**user, **_worker_attrs(), "result_of": source.number},
                    {**system, EPOCHS_KEY: [], VALUE_KEY: value})
        log.info("trial %d takes the result trial %d recorded before its worker died "
                 "(%s %.4f); nothing trained", trial.number, source.number, self.spec.metric,
                 value)
        self._drop_checkpoints(trial)

    def _drop_checkpoints(self, trial: optuna.Trial) -> None:
        """The trial ended for good: its checkpoints and those of the trials it retried go."""
        name = trial.study.study_name
        for number in [trial.number, *_retry_chain(trial)]:
            folder = self.artifacts.trial_dir(name, number)
            try:
                drop_checkpoints(folder)
            except OSError as exc:  # the trial's outcome stands; hpo gc can remove them later
                log.warning("could not remove the checkpoints in %s: %s", folder, exc)

    def __call__(self, trial: optuna.Trial) -> float:
        if self.on_start is not None:
            self.on_start()
        self.current_trial = trial.number
        spec = self.spec
        settings = suggest(trial, spec)
        finished = self._finished_before(trial)
        if finished is not None:
            return finished
        out_dir = self.artifacts.trial_dir(trial.study.study_name, trial.number)
        cfg = build_config(spec, settings, output_dir=str(out_dir), train_dir=self.train_dir)
        cfg, full_value = self._refit_overrides(trial, cfg)
        resume = self._start(trial, cfg)

        epochs_run: list[int] = []
        # Attributes that ride along with the trial's closing write (one commit fewer).
        closing: dict[str, Any] = {}

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            value = metrics.get(spec.metric)  # None: nobody validates (a refit's full model)
            epochs_run.append(epoch)
            progress: dict[str, Any] = {"epoch": epoch, "epochs": cfg.epochs}
            if value is not None:
                trial.report(value, epoch)
                progress[spec.metric] = round(value, 5)
            if epoch >= cfg.epochs:
                # The training is done: keep the result rather than prune it, and let the
                # last progress ride with the results (the closing write follows at once).
                closing["progress"] = progress
                return
            self._write(trial, {"progress": progress})
            if value is not None and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {spec.metric} {value:.4f}")

        try:
            result = self.fit(cfg, on_epoch=on_epoch, resume=resume, data=self._data(cfg))
        except KeyboardInterrupt:
            # Its checkpoints stay: the retry queued next resumes from them.
            self._write(trial, {**closing, "fail_reason": "interrupted (Ctrl-C or SIGTERM); "
                                "retried from its last checkpoint by the next worker"},
                        {EPOCHS_KEY: epochs_run})
            raise
        except optuna.TrialPruned:
            self._write(trial, closing, {EPOCHS_KEY: epochs_run})
            self._drop_checkpoints(trial)
            raise
        except Exception as exc:  # recorded, then optuna marks the trial FAIL; worker goes on
            if isinstance(exc, OSError) and _disk_fault(exc, self.artifacts.root):
                # The folder, not the trial, failed: the checkpoints stay for hpo retry, and
                # the worker's check before its next trial stops it instead of burning budget.
                fault = _training_store_error(trial, self.artifacts.root, exc)
                self._failed(trial, fault, closing, epochs_run)
                raise fault from None
            self._failed(trial, exc, closing, epochs_run)
            self._drop_checkpoints(trial)
            raise
        return self._record(trial, result, epochs_run, closing, value=full_value)

    def _refit_overrides(self, trial: optuna.Trial,
                         cfg: trainer.TrainConfig) -> tuple[trainer.TrainConfig, float | None]:
        """A refit's full model trains every person for its epoch count (hpo.ensemble.refit)."""
        if self.spec.refit is None:
            return cfg, None
        frozen = cached_frozen_trial(trial)  # as in _retry_chain
        attrs = frozen.user_attrs if frozen is not None else trial.user_attrs
        return refit_overrides(attrs, cfg)

    def _failed(self, trial: optuna.Trial, exc: Exception, attrs: dict[str, Any],
                epochs_run: list[int]) -> None:
        reason = _fail_reason(exc)
        self._write(trial, {**attrs, "fail_reason": reason}, {EPOCHS_KEY: epochs_run})
        log.warning("trial %d failed: %s", trial.number, reason)
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _store(self, trial: optuna.Trial, result) -> StoredFiles:
        """The trial's small files, then everything into the store.

        Raises:
            ArtifactStoreError: the artifact folder takes no file (read-only, full, a file).
        """
        out = Path(result.output_dir)
        try:
            np.save(out / "val_labels.npy", result.val_labels)
            if len(result.val_labels):  # a full model validates on nobody
                matrix = trainer.confusion(result.val_probs, result.val_labels)
                confusion_png(matrix, out / "confusion.png",
                              title=f"trial {trial.number}: best epoch {result.best_epoch}, "
                                    f"f1 {result.best_metrics['f1']:.4f}")
            return self.artifacts.store_files(out)
        except OSError as exc:
            raise _store_error(trial, self.artifacts.root, exc) from None

    def _record(self, trial: optuna.Trial, result, epochs_run: list[int],
                closing: dict[str, Any], *, value: float | None = None) -> float:
        try:
            stored = self._store(trial, result)
        except ArtifactStoreError as exc:
            self._failed(trial, exc, closing, epochs_run)
            raise
        _test_kill("after_store")
        if value is None:
            value = float(result.best_metrics[self.spec.metric])
        attrs = {
            **closing,
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 1),
            "device": result.device,
        }
        if len(result.val_labels):
            attrs["val_hash"] = val_hash(result.val_paths, result.val_labels)
        for key in ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1"):
            if key in result.best_metrics:
                attrs[key] = round(float(result.best_metrics[key]), 6)
        system = {
            **stored.records,
            ARTIFACTS_KEY: stored.ids,
            SHA256_KEY: stored.sha256,
            METRICS_KEY: {k: round(float(v), 6) for k, v in result.best_metrics.items()},
            VALUE_KEY: value,
            EPOCHS_KEY: epochs_run,
        }
        self._write(trial, attrs, system)
        _test_kill("after_records")
        # Every id on the pending list is recorded now: the list goes.
        sweep_pending(Path(result.output_dir), self.artifacts.root, named=stored.ids.values())
        self._drop_checkpoints(trial)  # the store has best.pt; last.pt is needed no more
        return value


def _worker_attrs() -> dict[str, str | int]:
    # cpu_threads: the share of the machine this trial ran with (hpo.run.cpu)
    return {"host": socket.gethostname(), "worker": f"{socket.gethostname()}:{os.getpid()}",
            "cpu_threads": torch.get_num_threads()}


def _device_label(device: str) -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu" if device == "auto" else device


def _store_error(trial: optuna.Trial, root: Path, exc: OSError) -> ArtifactStoreError:
    where = Path(exc.filename) if exc.filename else root
    try:
        where = where.relative_to(root)
    except ValueError:
        pass
    if where.parts[:1] == ("store",):
        where = Path("store")  # not the fresh artifact id: the folder is what needs fixing
    return ArtifactStoreError(
        f"trial {trial.number}'s files cannot be stored in the artifact folder {root} "
        f"({where}: {exc.strerror or type(exc).__name__}); its checkpoints stay in "
        f"trials/{trial.study.study_name}/{trial.number}: make the folder writable or free "
        f"space, then hpo retry --study {trial.study.study_name} stores them without "
        "training again")


_DISK_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)


def _disk_fault(exc: OSError, root: Path) -> bool:
    """The artifact folder refused a write (read-only, full, no permission), not the data."""
    if exc.errno not in _DISK_ERRNOS:
        return False
    if not exc.filename:
        return exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
    return Path(exc.filename).absolute().is_relative_to(root.absolute())


def _training_store_error(trial: optuna.Trial, root: Path, exc: OSError) -> ArtifactStoreError:
    """One line, the same for every trial of the study (so streaks and logs group it)."""
    name = trial.study.study_name
    return ArtifactStoreError(
        f"the artifact folder {root} stopped taking files while trial {trial.number} trained "
        f"({exc.strerror or type(exc).__name__}); make it writable or free space, then hpo "
        f"retry --study {name} resumes the trial from its last checkpoint")


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "CUDA out of memory: lower batch_size or img_size for this model"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
