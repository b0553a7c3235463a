"""Studies and workers: create or resume a study, run trials until its budget is met.

A worker is one process that runs trials one after another (``hpo worker``); ``hpo launch``
starts several (one per GPU, or N on the CPU) and shows their progress. Any number of workers on
any number of machines share a study through its storage. The budget counts trial lineages: a
trial retried after its worker died counts once, so a study with ``n_trials: 20`` ends with 20
finished lineages whatever crashed on the way.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from hpo.artifacts import ArtifactPaths
from hpo.errors import HpoError
from hpo.objective import Objective
from hpo.space import enqueue_params
from hpo.spec import SamplerSpec, StudySpec, create_pruner, create_sampler
from hpo.storage import MAX_RETRY, mask_url, open_storage, resolve_storage_url, with_retries

__all__ = [
    "Budget",
    "budget_state",
    "check_data",
    "install_stop_signals",
    "open_study",
    "run_worker",
    "worker_seed_offset",
]

log = logging.getLogger("hpo")
_SPLIT_ATTR = "hpo_split"


@dataclass(frozen=True)
class Budget:
    """When a worker stops: after ``n_trials`` lineages in the study, or ``timeout`` seconds."""

    n_trials: int | None
    timeout: float | None


def _split_of(spec: StudySpec, train_dir: str | None) -> dict[str, Any]:
    split = dict(spec.data)
    if train_dir:
        split["train_dir"] = train_dir
    split["train_dir"] = os.path.abspath(split["train_dir"])
    return split


def open_study(
    spec: StudySpec,
    *,
    storage: str | None = None,
    train_dir: str | None = None,
    heartbeat_interval: int | None = 30,
    create: bool = True,
    seed_offset: int = 0,
) -> optuna.Study:
    """Create the study named after the spec, or load it if it exists (never starts over).

    A new study records its validation split and enqueues the study file's first trials. An
    existing study must have been made with the same split: every trial of a study validates on
    the same people, which promotion relies on.

    Raises:
        StorageError: the storage cannot be reached.
        HpoError: the study does not exist (with ``create=False``), or its split differs.
    """
    url = resolve_storage_url(storage)
    store = open_storage(url, heartbeat_interval=heartbeat_interval)
    if not create:
        names = with_retries(lambda: [s.study_name for s in store.get_all_studies()],
                             what="listing studies")
        if spec.name not in names:
            raise HpoError(f"study {spec.name!r} does not exist in {mask_url(url)}; start it "
                           f"with: hpo launch --study {spec.name}")
    # Parallel workers with one seed would all propose the same settings: each gets its own.
    sampler_spec = _offset_seed(spec.sampler, seed_offset)
    study = with_retries(lambda: optuna.create_study(
        study_name=spec.name, storage=store, sampler=create_sampler(sampler_spec),
        pruner=create_pruner(spec.pruner), direction=spec.direction, load_if_exists=True,
    ), what="opening the study")
    split = _split_of(spec, train_dir)
    recorded = study.user_attrs.get(_SPLIT_ATTR)
    if recorded is None:
        study.set_user_attr(_SPLIT_ATTR, split)
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("study_file", spec.path)
        for params in enqueue_params(spec):
            study.enqueue_trial(params, skip_if_exists=True)
    elif _comparable(recorded) != _comparable(split):
        raise HpoError(f"study {spec.name!r} was started with split {recorded}, but now "
                       f"{split}; every trial must validate on the same people: restore the "
                       "study file's data section (or --data), or rename the study")
    return study


def worker_seed_offset() -> int:
    """Which worker this process is, for its sampler seed (see :func:`open_study`).

    ``hpo launch`` numbers its workers (``HPO_WORKER_INDEX``): worker 0 keeps the study file's
    seed, so a one-worker study is reproducible. A worker started by hand on another machine
    takes an offset from its host name and process id.
    """
    index = os.environ.get("HPO_WORKER_INDEX", "")
    if index.isdigit():
        return int(index)
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_003 + 1


def _offset_seed(sampler: SamplerSpec, offset: int) -> SamplerSpec:
    seed = sampler.options.get("seed")
    if seed is None or offset == 0:
        return sampler
    return replace(sampler, options={**sampler.options, "seed": (seed + 7919 * offset) % 2**32})


def _comparable(split: dict[str, Any]) -> dict[str, Any]:
    # The data folder may be mounted elsewhere on another machine; its name and the split
    # settings must agree.
    return {**split, "train_dir": os.path.basename(os.path.normpath(split["train_dir"]))}


def check_data(spec: StudySpec, train_dir: str | None = None) -> int:
    """Scan the study's training folder before any trial starts; returns the image count.

    A wrong folder is one error now, not the same failure in every trial.

    Raises:
        DataError: missing folder, no parsable person folders, a person missing an image.
    """
    from trainer.layout import scan_train

    fixed_data = spec.fixed.get("data") or {}
    frame = scan_train(train_dir or spec.data["train_dir"],
                       age_bins=tuple(fixed_data.get("age_bins", (30, 60))),
                       relabel_csv=fixed_data.get("relabel_csv"))
    return len(frame)


def budget_state(study: optuna.Study) -> tuple[int, int, int]:
    """(lineages so far, trials waiting, trials running)."""
    trials = study.get_trials(deepcopy=False)
    lineages = sum(1 for t in trials if "failed_trial" not in t.system_attrs)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return lineages, waiting, running


def install_stop_signals() -> None:
    """SIGTERM behaves like Ctrl-C: optuna then marks the running trial FAIL, not RUNNING."""

    def stop(signum, frame):
        # Later signals are ignored so the first one's clean-up (record FAIL, queue the
        # retry) is not itself interrupted.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def run_worker(
    spec: StudySpec,
    *,
    storage: str | None = None,
    artifacts: str | None = None,
    train_dir: str | None = None,
    budget: Budget | None = None,
    heartbeat_interval: int | None = 30,
    fit: Callable | None = None,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
    seed_offset: int = 0,
) -> int:
    """Run trials of the study until its budget is met; returns how many this worker ran.

    Trials that fail (NaN loss, out of memory, a bad image) are recorded FAIL with their reason
    and the worker goes on; trials of dead workers are retried from their last checkpoint.

    Raises:
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after the running trial was recorded FAIL.
    """
    budget = budget or Budget(spec.n_trials, spec.timeout)
    if fit is None:  # a stand-in trainer (storage benchmark) reads no data
        check_data(spec, train_dir)
    study = open_study(spec, storage=storage, train_dir=train_dir,
                       heartbeat_interval=heartbeat_interval, seed_offset=seed_offset)
    objective = Objective(spec, ArtifactPaths(artifacts), train_dir=train_dir, fit=fit)
    started = time.monotonic()
    ran = 0
    callbacks = [_notify(on_trial)] if on_trial else None
    while True:
        if budget.timeout is not None and time.monotonic() - started >= budget.timeout:
            break
        if heartbeat_interval:
            # A dead worker's trial only turns FAIL (and gets its retry) when someone looks.
            with_retries(lambda: fail_stale_trials(study), what="checking for dead workers")
        lineages, waiting, running = with_retries(lambda: budget_state(study),
                                                  what="counting trials")
        if budget.n_trials is not None and lineages >= budget.n_trials and not waiting:
            if running and heartbeat_interval:
                # One of them may belong to a dead worker: wait until it finishes or its
                # heartbeat goes stale and it comes back as a retry to run here.
                time.sleep(min(heartbeat_interval, 5))
                continue
            break
        try:
            with_retries(lambda: study.optimize(objective, n_trials=1, catch=(Exception,),
                                                callbacks=callbacks),
                         what="running a trial")
        except KeyboardInterrupt:
            _retry_interrupted(study, objective.current_trial)
            raise
        ran += 1
    return ran


def _retry_interrupted(study: optuna.Study, number: int | None) -> None:
    """Queue a retry of a trial stopped by Ctrl-C/SIGTERM; it resumes from its last.pt."""
    if number is None:
        return
    try:
        trial = study.get_trials(deepcopy=False)[number]
        if trial.state == TrialState.FAIL:
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
    except Exception as exc:  # stopping must not fail because the database is away
        log.warning("could not queue a retry of trial %s: %s", number, exc)


def _notify(on_trial):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        on_trial(trial)
    return callback


def worker_main(spec: StudySpec, **kwargs) -> int:
    """Entry for a worker process: stop signals, one-line errors, a resume hint."""
    install_stop_signals()
    try:
        run_worker(spec, **kwargs)
    except KeyboardInterrupt:
        print(f"worker stopped; its running trial was recorded FAIL and queued to resume from "
              f"its last checkpoint. Resume with: hpo worker --study {spec.name}",
              file=sys.stderr)
        return 130
    return 0
