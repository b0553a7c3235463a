"""The objective: one Optuna trial = suggest settings, train with ``trainer.fit``, record.

This is the only module of the service that runs the trainer. Each epoch reports the study's
metric (one storage write for the report, one for the progress attribute, whose last value
goes with the results) and asks the pruner.
A retried trial (its worker died) continues from the dead trial's ``last.pt``.

Checkpoints live only while something may need them (DESIGN.md "Disk"): a completed trial
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

import hashlib
import logging
import os
import platform
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback

import trainer
from hpo.artifacts import ArtifactPaths, ArtifactStoreError, confusion_png, drop_checkpoints
from hpo.space import build_config, suggest
from hpo.spec import StudySpec

__all__ = ["Objective", "library_versions", "val_hash"]

log = logging.getLogger("hpo")


def library_versions() -> dict[str, str]:
    """Versions recorded on every trial (so a result can be reproduced)."""
    import albumentations
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "optuna": optuna.__version__,
            "albumentations": albumentations.__version__, "numpy": np.__version__}


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
    # read per trial. Optuna has no public name for it, so fall back to a read.
    frozen = getattr(trial, "_cached_frozen_trial", None)
    if frozen is None:
        frozen = trial.study._storage.get_trial(trial._trial_id)
    history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    return list(reversed(history))


def _write_attrs(storage: BaseStorage | None, trial: optuna.Trial, *,
                 user: Mapping[str, Any], system: Mapping[str, Any] | None = None) -> None:
    """One transaction when ``storage`` can batch; otherwise one per attribute (Optuna's way)."""
    # Optuna has no public trial id; upload_artifact reads the same private attribute.
    trial_id = trial._trial_id
    batch = getattr(storage, "set_trial_attrs", None)
    if batch is not None:
        batch(trial_id, user=user, system=system)
        return
    for key, value in user.items():
        trial.set_user_attr(key, value)
    for key, value in (system or {}).items():
        (storage or trial.storage).set_trial_system_attr(trial_id, key, value)


class Objective:
    """Callable for ``study.optimize``; keeps the decoded data of one worker between trials.

    Args:
        spec: the validated study file.
        artifacts: where trials keep their files.
        train_dir: overrides the study's ``data.train_dir`` (``--data``).
        fit: the training function (``trainer.fit``; the storage load test passes a stand-in
            with the same signature that sleeps instead of training).
        storage: the study's storage from :func:`hpo.storage.open_storage` (the one
            :func:`hpo.storage.storage_of` returns for the study): attributes are then written
            a group per transaction. None writes each attribute on its own (slower, same data).
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
        key = (cfg.data.train_dir, cfg.data.img_size, cfg.data.crop, cfg.data.val_fraction,
               cfg.data.fold, cfg.data.n_folds, cfg.data.split_seed, cfg.data.age_bins,
               cfg.data.relabel_csv, cfg.data.cache_dir)
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
        start_attrs = {"host": socket.gethostname(),
                       "worker": f"{socket.gethostname()}:{os.getpid()}", "seed": cfg.seed,
                       "versions": library_versions(),
                       "device": _device_label(cfg.device)}
        if resume is not None:
            done = trainer.load_checkpoint(resume)["epoch"]
            start_attrs["resumed_from"] = {"trial": int(resume.parent.name), "epoch": done}
            log.info("trial %d resumes trial %s from epoch %d", trial.number,
                     resume.parent.name, done)
        self._write(trial, start_attrs)
        return resume

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
        spec = self.spec
        settings = suggest(trial, spec)
        out_dir = self.artifacts.trial_dir(trial.study.study_name, trial.number)
        cfg = build_config(spec, settings, output_dir=str(out_dir), train_dir=self.train_dir)
        resume = self._start(trial, cfg)

        epochs_run: list[int] = []
        # Attributes that ride along with the trial's closing write (one commit fewer).
        closing: dict[str, Any] = {}

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            value = metrics[spec.metric]
            epochs_run.append(epoch)
            trial.report(value, epoch)
            progress = {"epoch": epoch, "epochs": cfg.epochs, spec.metric: round(value, 5)}
            if epoch >= cfg.epochs:
                # The training is done: keep the result rather than prune it, and let the
                # last progress ride with the results (the closing write follows at once).
                closing["progress"] = progress
                return
            self._write(trial, {"progress": progress})
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {spec.metric} {value:.4f}")

        self.current_trial = trial.number
        try:
            result = self.fit(cfg, on_epoch=on_epoch, resume=resume, data=self._data(cfg))
        except KeyboardInterrupt:
            # Its checkpoints stay: the retry queued next resumes from them.
            self._write(trial, {**closing, "epochs_run": epochs_run,
                                "fail_reason": "interrupted (Ctrl-C or SIGTERM); retried from "
                                "its last checkpoint by the next worker"})
            raise
        except optuna.TrialPruned:
            self._write(trial, {**closing, "epochs_run": epochs_run})
            self._drop_checkpoints(trial)
            raise
        except Exception as exc:  # recorded, then optuna marks the trial FAIL; worker goes on
            self._failed(trial, exc, {**closing, "epochs_run": epochs_run})
            self._drop_checkpoints(trial)
            raise
        return self._record(trial, result, epochs_run, closing)

    def _failed(self, trial: optuna.Trial, exc: Exception, attrs: dict[str, Any]) -> None:
        reason = _fail_reason(exc)
        self._write(trial, {**attrs, "fail_reason": reason})
        log.warning("trial %d failed: %s", trial.number, reason)
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _store(self, trial: optuna.Trial, result) -> tuple[dict[str, str], dict[str, str]]:
        """The trial's small files, then everything into the store.

        Raises:
            ArtifactStoreError: the artifact folder takes no file (read-only, full, a file).
        """
        out = Path(result.output_dir)
        try:
            np.save(out / "val_labels.npy", result.val_labels)
            matrix = trainer.confusion(result.val_probs, result.val_labels)
            confusion_png(matrix, out / "confusion.png",
                          title=f"trial {trial.number}: best epoch {result.best_epoch}, "
                                f"f1 {result.best_metrics['f1']:.4f}")
            return self.artifacts.store_files(out)
        except OSError as exc:
            raise _store_error(trial, self.artifacts.root, exc) from None

    def _record(self, trial: optuna.Trial, result, epochs_run: list[int],
                closing: dict[str, Any]) -> float:
        try:
            ids, records = self._store(trial, result)
        except ArtifactStoreError as exc:
            self._failed(trial, exc, {**closing, "epochs_run": epochs_run})
            raise
        attrs = {
            **closing,
            "metrics": {k: round(float(v), 6) for k, v in result.best_metrics.items()},
            "best_epoch": result.best_epoch,
            "epochs_run": epochs_run,
            "seconds": round(result.seconds, 2),
            "images_per_second": round(result.images_per_second, 1),
            "device": result.device,
            "val_hash": val_hash(result.val_paths, result.val_labels),
            "artifacts": ids,
        }
        for key in ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1"):
            attrs[key] = round(float(result.best_metrics[key]), 6)
        self._write(trial, attrs, records)
        self._drop_checkpoints(trial)  # the store has best.pt; last.pt is needed no more
        return float(result.best_metrics[self.spec.metric])


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


def _fail_reason(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "CUDA out of memory: lower batch_size or img_size for this model"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
