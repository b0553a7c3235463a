"""Looking after a study: failure streaks, re-queueing failed trials, deleting a study.

A trial that fails on its own (a bad setting, a NaN loss) is recorded FAIL and the worker goes
on. But when trials keep failing the same way (no weights offline, a broken data folder, a bug)
every further trial fails too: :func:`failure_streak` spots that, so workers stop instead of
spending the budget. ``hpo retry`` queues the failed trials again once the cause is fixed;
``hpo delete`` removes a study and its files.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.artifacts import default_artifacts_dir
from hpo.budget import retried_numbers
from hpo.errors import HpoError
from hpo.storage import with_retries
from hpo.study import open_for_reading

__all__ = [
    "DeleteResult",
    "FailureStreak",
    "delete_study",
    "failure_streak",
    "streak_error",
    "retry_failed",
]


# optuna.artifacts.upload_artifact records each stored file as the trial system attribute
# "artifacts:<artifact id>" (the dashboard lists them from there).
ARTIFACTS_ATTR_PREFIX = "artifacts:"


class FailureStreak(HpoError):
    """Trials keep failing the same way: the worker stops rather than fail the whole budget."""


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
    again = RetryHeartbeatStaleTrialCallback(max_retry=None)
    for t in queue:
        with_retries(lambda t=t: again(study, t), what=f"queueing a retry of trial {t.number}")
    return [t.number for t in queue]


@dataclass(frozen=True)
class DeleteResult:
    """What :func:`delete_study` removed."""

    name: str
    trials: int
    files: int
    bytes: int


def _study_files(study: optuna.Study, root: Path) -> list[Path]:
    """The study's stored artifacts and its trials' working folder (that exist)."""
    files = []
    for t in study.get_trials(deepcopy=False):
        ids = set((t.user_attrs.get("artifacts") or {}).values())
        ids.update(k[len(ARTIFACTS_ATTR_PREFIX):] for k in t.system_attrs
                   if k.startswith(ARTIFACTS_ATTR_PREFIX))
        files += [root / "store" / i for i in ids if "/" not in i and i not in ("", ".", "..")]
    return [p for p in files if p.is_file()]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def delete_study(study: optuna.Study, *, storage: str | None,
                 artifacts: str | None = None) -> DeleteResult:
    """Delete a study from its storage, with its stored trial files and trial folders.

    Ensemble manifests are kept (they name their checkpoints; ``hpo predict`` says when one is
    gone).

    Returns:
        What was removed.
    """
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    name = study.study_name
    n_trials = len(study.get_trials(deepcopy=False))
    files = _study_files(study, root)
    folder = root / "trials" / name
    freed = sum(_size(p) for p in files) + (_size(folder) if folder.is_dir() else 0)
    store = open_for_reading(storage, study=name)
    with_retries(lambda: optuna.delete_study(study_name=name, storage=store),
                 what="deleting the study")
    for p in files:
        p.unlink(missing_ok=True)
    if folder.is_dir() and folder.parent == root / "trials":
        shutil.rmtree(folder, ignore_errors=True)
    return DeleteResult(name=name, trials=n_trials, files=len(files), bytes=freed)
