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
import sys
import time
from collections.abc import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from hpo.admin import FailureStreak, failure_streak, streak_error
from hpo.artifacts import ArtifactPaths
from hpo.budget import Budget, BudgetLock, budget_state
from hpo.diskcheck import check_artifacts_writable, check_room
from hpo.objective import Objective
from hpo.spec import StudySpec
from hpo.storage import MAX_RETRY, mask_url, resolve_storage_url, storage_of, with_retries
from hpo.study import create_or_resume
from trainer import COMPETITION_AGE_BINS, scan_train

__all__ = [
    "STREAK_EXIT",
    "check_data",
    "install_stop_signals",
    "run_worker",
    "worker_main",
]

log = logging.getLogger("hpo")
STREAK_EXIT = 3  # a worker's exit code when it stopped on a failure streak


def check_data(spec: StudySpec, train_dir: str | None = None) -> int:
    """Scan the study's training folder before any trial starts; returns the image count.

    A wrong folder is one error now, not the same failure in every trial.

    Raises:
        DataError: missing folder, no parsable person folders, a person missing an image.
    """
    fixed_data = spec.fixed.get("data") or {}
    frame = scan_train(train_dir or spec.data["train_dir"],
                       age_bins=tuple(fixed_data.get("age_bins", COMPETITION_AGE_BINS)),
                       relabel_csv=fixed_data.get("relabel_csv"))
    return len(frame)


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
    max_failures: int = 3,
) -> int:
    """Run trials of the study until its budget is met; returns how many this worker ran.

    Trials that fail (NaN loss, out of memory, a bad image) are recorded FAIL with their reason
    and the worker goes on, unless the study's last ``max_failures`` trials all failed with the
    same reason (0: never stop); trials of dead workers are retried from their last checkpoint.

    Raises:
        KeyboardInterrupt: on Ctrl-C or SIGTERM, after the running trial was recorded FAIL.
        FailureStreak: the study's trials keep failing the same way.
    """
    budget = budget or Budget(spec.n_trials, spec.timeout)
    if fit is None:  # a stand-in trainer (storage benchmark) reads no data
        check_data(spec, train_dir)
    check_artifacts_writable(artifacts)
    url = resolve_storage_url(storage)
    study = create_or_resume(spec, storage=url, train_dir=train_dir,
                             heartbeat_interval=heartbeat_interval, seed_offset=seed_offset)
    objective = Objective(spec, ArtifactPaths(artifacts), train_dir=train_dir, fit=fit,
                          storage=storage_of(study))
    lock = BudgetLock(url, spec.name)
    try:
        return _trials_until_done(study, objective, lock, spec=spec, budget=budget,
                                  artifacts=artifacts, heartbeat_interval=heartbeat_interval,
                                  max_failures=max_failures,
                                  callbacks=[_notify(on_trial)] if on_trial else None)
    finally:
        lock.close()


def _trials_until_done(study: optuna.Study, objective: Objective, lock: BudgetLock, *,
                       spec: StudySpec, budget: Budget, artifacts: str | None,
                       heartbeat_interval: int | None, max_failures: int, callbacks) -> int:
    started = time.monotonic()
    ran = 0
    while budget.timeout is None or time.monotonic() - started < budget.timeout:
        reason = with_retries(lambda: failure_streak(study, max_failures),
                              what="reading recent trials")
        if reason is not None:
            raise streak_error(spec.name, max_failures, reason)
        check_room(artifacts)
        if heartbeat_interval:
            # A dead worker's trial only turns FAIL (and gets its retry) when someone looks.
            with_retries(lambda: fail_stale_trials(study), what="checking for dead workers")
        # Held from the count until the new trial exists (the objective's first line releases
        # it), so workers starting at once cannot overshoot the budget.
        with_retries(lock.acquire, what="taking the study's budget lock")
        try:
            lineages, waiting, running = with_retries(lambda: budget_state(study),
                                                      what="counting trials")
            if budget.n_trials is not None and lineages >= budget.n_trials and not waiting:
                lock.release()
                if running and heartbeat_interval:
                    # One of them may belong to a dead worker: wait until it finishes or its
                    # heartbeat goes stale and it comes back as a retry to run here.
                    time.sleep(min(heartbeat_interval, 5))
                    continue
                break
            objective.on_start = lock.release
            _run_one(study, objective, callbacks)
        finally:
            lock.release()
        ran += 1
    return ran


def _run_one(study: optuna.Study, objective: Objective, callbacks) -> None:
    try:
        with_retries(lambda: study.optimize(objective, n_trials=1, catch=(Exception,),
                                            callbacks=callbacks),
                     what="running a trial")
    except KeyboardInterrupt:
        _retry_interrupted(study, objective.current_trial)
        raise


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
        if os.environ.get("HPO_LAUNCHED") == "1":
            return 130  # hpo launch prints one resume hint for all its workers
        hint = f"hpo worker --study {spec.name}"
        if kwargs.get("train_dir"):
            hint += f" --data {kwargs['train_dir']}"
        if kwargs.get("storage"):
            hint += f" --storage {mask_url(resolve_storage_url(kwargs['storage']))}"
        print(f"worker stopped; its running trial was recorded FAIL and queued to resume from "
              f"its last checkpoint. Resume with: {hint}", file=sys.stderr)
        return 130
    except FailureStreak as exc:
        if os.environ.get("HPO_LAUNCHED") != "1":  # hpo launch says it once for all workers
            print(f"Error: {exc}", file=sys.stderr)
        return STREAK_EXIT
    return 0
