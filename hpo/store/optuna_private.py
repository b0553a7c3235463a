"""Every use of Optuna's private API, in one place.

Optuna exports no public name for a study's storage and ids, a trial's id, the trial cache's
backend, the stale-trial query or the ORM table classes; ``hpo`` needs them to write a trial's
attributes in one transaction, to heartbeat and fail dead workers' trials, and to retry the
storage calls Optuna's own trial cache makes. They are reached only through this module, and
``tests/hpo/test_optuna_private.py`` checks each name in :data:`PRIVATE_NAMES` still exists in
the installed Optuna (pyproject caps optuna below its next major version).
"""
from __future__ import annotations

from typing import Any

import optuna

# Optuna's table classes: the batch write in hpo.store.storage must write exactly the rows
# Optuna's own calls write.
from optuna.storages._rdb.models import (
    TrialHeartbeatModel,
    TrialModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
)

__all__ = [
    "CACHE_CALLS",
    "PRIVATE_NAMES",
    "STALE_TRIAL_IDS",
    "TrialHeartbeatModel",
    "TrialModel",
    "TrialSystemAttributeModel",
    "TrialUserAttributeModel",
    "stale_trial_ids",
    "study_id",
    "study_storage",
    "trial_id",
    "cached_frozen_trial",
    "unwrap_cache",
]

# RDBStorage's query of a study's trials whose heartbeat stopped (hpo.store.storage overrides
# it to count silence only while the database was up).
STALE_TRIAL_IDS = "_get_stale_trial_ids"
# The private RDBStorage methods Optuna's trial cache calls: retried like the public reads.
CACHE_CALLS = ("_get_trials", "_set_trial_param", "_get_best_trial_id")

# (owner, attribute) for every private name used here; the test checks each still exists.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("optuna.study.Study", "_storage"),
    ("optuna.study.Study", "_study_id"),
    ("optuna.trial.Trial", "_trial_id"),
    ("optuna.trial.FrozenTrial", "_trial_id"),
    ("optuna.trial.Trial", "_cached_frozen_trial"),
    ("optuna.storages._cached_storage._CachedStorage", "_backend"),
    ("optuna.storages.RDBStorage", STALE_TRIAL_IDS),
    *(("optuna.storages.RDBStorage", name) for name in CACHE_CALLS),
    ("optuna.storages._rdb.models", "TrialHeartbeatModel"),
    ("optuna.storages._rdb.models", "TrialModel"),
    ("optuna.storages._rdb.models", "TrialSystemAttributeModel"),
    ("optuna.storages._rdb.models", "TrialUserAttributeModel"),
)


def study_storage(study: optuna.Study) -> Any:
    """The storage a study reads and writes through (Optuna's trial cache, for an RDB)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in its storage (not its number)."""
    return trial._trial_id


def cached_frozen_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The frozen copy Optuna loaded when it created the trial (None: read it instead)."""
    return getattr(trial, "_cached_frozen_trial", None)


def unwrap_cache(storage: Any) -> Any:
    """The storage behind Optuna's write-through trial cache (itself, when there is none)."""
    return getattr(storage, "_backend", storage)


def stale_trial_ids(storage: Any, study: optuna.Study) -> list[int]:
    """The ids of the study's running trials whose heartbeat stopped."""
    return getattr(storage, STALE_TRIAL_IDS)(study_id(study))
