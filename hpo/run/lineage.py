"""A trial's lineage: its retries, and the failure streaks that stop a study's workers.

A trial that fails on its own (a bad setting, a NaN loss) is recorded FAIL and the worker goes
on. But when trials keep failing the same way (no weights offline, a broken data folder, a bug)
every further trial fails too: :func:`failure_streak` spots that, so workers stop instead of
spending the budget. A failed trial comes back as a retry (:func:`queue_retry`) that resumes
from its last checkpoint and counts once against the budget (:mod:`hpo.run.budget`);
``hpo retry`` queues every failed trial again once the cause is fixed (:func:`retry_failed`).
"""
from __future__ import annotations

import copy

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.errors import FailureStreak
from hpo.run.budget import retried_numbers
from hpo.store.storage import MAX_RETRY, with_retries

__all__ = ["failure_streak", "queue_retry", "retry_failed", "streak_error"]


def _reason(t: optuna.trial.FrozenTrial) -> str:
    return str(t.user_attrs.get("fail_reason") or "no reason recorded")


def failure_streak(study: optuna.Study, limit: int) -> str | None:
    """The reason shared by the study's last ``limit`` finished trials, if all failed with it.

    Only failures that stand (not retried: a killed worker's trial comes back as a retry) count;
    the trials are taken in the order they finished, across every worker.

    Returns:
        The common failure reason, or None when there is no such streak.
    """
    if limit < 1:
        return None
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    finished = [t for t in trials if t.state.is_finished() and t.number not in retried
                and t.datetime_complete is not None]
    finished.sort(key=lambda t: (t.datetime_complete, t.number))
    last = finished[-limit:]
    if len(last) < limit or any(t.state != TrialState.FAIL for t in last):
        return None
    reasons = {_reason(t) for t in last}
    return reasons.pop() if len(reasons) == 1 else None


def streak_error(study_name: str, limit: int, reason: str) -> FailureStreak:
    """The one line that stops the workers of a study whose trials keep failing."""
    return FailureStreak(f"stopped study {study_name}: the last {limit} trials failed with the "
                         f"same reason: {reason}; fix the cause, then queue them again with "
                         f"hpo retry --study {study_name} (and hpo launch to run them)")


def queue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial, *,
                max_retry: int | None = MAX_RETRY) -> None:
    """Queue the retry of a failed trial: it resumes from the trial's last checkpoint.

    The retry starts with the failed trial's user attributes (Optuna copies them), less its
    ``fail_reason``: the retry has not failed.
    """
    clean = copy.deepcopy(trial)
    clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
    RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, clean)


def retry_failed(study: optuna.Study) -> list[int]:
    """Queue a retry of every failed trial that has none yet (same parameters, same lineage).

    A retry resumes from its trial's last checkpoint when there is one, and does not count
    against the budget again.

    Returns:
        The numbers of the failed trials that were queued.
    """
    trials = with_retries(lambda: study.get_trials(deepcopy=False), what="reading trials")
    retried = retried_numbers(trials)
    queue = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    for t in queue:  # by hand: no limit on retries; the retry has not failed (no fail_reason)
        with_retries(lambda t=t: queue_retry(study, t, max_retry=None),
                     what=f"queueing a retry of trial {t.number}")
    return [t.number for t in queue]
