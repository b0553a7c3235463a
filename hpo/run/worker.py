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
import threading
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from hpo.errors import FailureStreak
from hpo.run.budget import Budget, BudgetLock, budget_state
from hpo.run.diskcheck import check_artifacts_writable, check_room
from hpo.run.lineage import failure_streak, queue_retry, streak_error
from hpo.run.objective import Objective
from hpo.run.study import create_or_resume
from hpo.store.artifacts import ArtifactPaths
from hpo.store.optuna_private import stale_trial_ids, study_storage, trial_id
from hpo.store.storage import (
    database_lost,
    lost_error,
    storage_of,
    with_retries,
)
from hpo.store.url import StorageURL, as_storage
from hpo.studyfile.spec import StudySpec
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
    storage: StorageURL | str,
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
    study = create_or_resume(spec, storage=storage, train_dir=train_dir,
                             heartbeat_interval=heartbeat_interval, seed_offset=seed_offset)
    objective = Objective(spec, ArtifactPaths(artifacts), train_dir=train_dir, fit=fit,
                          storage=storage_of(study))
    lock = BudgetLock(as_storage(storage).url, spec.name)
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
        # The folder can go read-only or fill between trials: stop here, not in the next trial.
        check_artifacts_writable(artifacts)
        check_room(artifacts)
        if heartbeat_interval:
            # A dead worker's trial only turns FAIL (and gets its retry) when someone looks.
            with_retries(lambda: _fail_stale(study), what="checking for dead workers")
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
    """One trial: create it, train it under a heartbeat, record its outcome exactly once.

    Optuna's ``study.optimize`` does the same but cannot ride out a lost database (it crashes
    on a trial failed behind its back, or on a tell whose answer was lost); this loop retries
    every storage call through :func:`with_retries` and drops a trial another worker failed.
    """
    trial = with_retries(lambda: _ask(study), what="starting a trial")
    value, state, interrupt = None, TrialState.FAIL, None
    with _Heartbeat(study, trial_id(trial)):
        try:
            value, state = objective(trial), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt as exc:
            interrupt = exc
        except Exception as exc:  # recorded by the objective (fail_reason): the trial is FAIL
            if database_lost(exc):  # ... unless the database stayed away past the bound
                raise lost_error(f"running trial {trial.number}", exc) from None
    frozen = _tell(study, trial, state, value)
    if interrupt is not None:
        if frozen is not None:  # else the worker that failed it queued its retry already
            _retry_interrupted(study, trial.number)
        raise interrupt
    for callback in (frozen is not None and callbacks) or ():
        callback(study, frozen)


def _fail_stale(study: optuna.Study) -> None:
    """Fail the trials of silent workers, record why, and queue their retries."""
    storage = storage_of(study)
    if storage is None:
        fail_stale_trials(study)
        return
    grace = storage.grace_period or 2 * (storage.heartbeat_interval or 0)
    for stale_id in stale_trial_ids(storage, study):
        worker = storage.get_trial(stale_id).user_attrs.get("worker", "?")
        try:
            if not storage.set_trial_state_values(stale_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished, or another worker failed it first
        trial = storage.get_trial(stale_id)
        storage.set_fail_reason(stale_id, f"its worker {worker} was silent (no heartbeat) for "
                                f"more than {grace} s while the database was up; retried from "
                                "its last checkpoint")
        log.warning("trial %d failed: its worker %s stopped beating; retried from its last "
                    "checkpoint", trial.number, worker)
        queue_retry(study, trial)


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # "Heartbeat ... supposed to be used with Study.optimize": _Heartbeat beats instead
        warnings.simplefilter("ignore", UserWarning)
        return study.ask()


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState,
          value: float | None) -> optuna.trial.FrozenTrial | None:
    """Record the trial's outcome once; None when another worker finished it first (stale)."""
    told = {"state": state, "tries": 0}

    def tell() -> optuna.trial.FrozenTrial | None:
        told["tries"] += 1
        before = study_storage(study).get_trial(trial_id(trial))
        if before.state.is_finished():
            # On a repeat, our first tell may have committed before its answer was lost.
            ours = told["tries"] > 1 and before.state == told["state"]
            return before if ours else None
        try:
            return study.tell(trial, value if state == TrialState.COMPLETE else None,
                              state=state, skip_if_finished=True)
        except ValueError as exc:  # e.g. a NaN value: the trial fails, as optimize does
            log.warning("trial %d failed: %s", trial.number, exc)
            told["state"] = TrialState.FAIL
            return study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    frozen = with_retries(tell, what=f"recording trial {trial.number} {state.name}")
    if frozen is None or frozen.state != told["state"]:
        log.warning("trial %d was failed by another worker while this one ran it (its heartbeat "
                    "was silent longer than the grace period) and is retried there; this worker "
                    "drops it and goes on", trial.number)
        return None
    return frozen


class _Heartbeat:
    """Records the running trial's heartbeat every interval in a background thread.

    The storage's ``record_heartbeat`` never raises (it logs a lost database once), so the
    thread lives as long as the trial, through any outage.
    """

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.storage = study_storage(study)
        get = getattr(self.storage, "get_heartbeat_interval", None)
        self.interval = get() if get is not None else None
        self.trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # never let the thread die
                log.warning("heartbeat of trial id %d failed: %s", self.trial_id, exc)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name=f"heartbeat-{self.trial_id}")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # a beat may wait for a connection (10 s timeout)


def _retry_interrupted(study: optuna.Study, number: int | None) -> None:
    """Queue a retry of a trial stopped by Ctrl-C/SIGTERM; it resumes from its last.pt."""
    if number is None:
        return
    try:
        trial = study.get_trials(deepcopy=False)[number]
        if trial.state == TrialState.FAIL:
            queue_retry(study, trial)
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
        storage = as_storage(kwargs["storage"])
        if storage.explicit:
            hint += f" --storage {storage.masked}"
        print(f"worker stopped; its running trial was recorded FAIL and queued to resume from "
              f"its last checkpoint. Resume with: {hint}", file=sys.stderr)
        return 130
    except FailureStreak as exc:
        if os.environ.get("HPO_LAUNCHED") != "1":  # hpo launch says it once for all workers
            print(f"Error: {exc}", file=sys.stderr)
        return STREAK_EXIT
    return 0
