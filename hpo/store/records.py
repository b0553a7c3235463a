"""What a finished trial recorded, read from where this version writes it and where older ones did.

optuna-dashboard shows every user attribute of a trial as a column of its trial table, so the
user attributes hold only short scalars (the F1 figures, ``best_epoch``, ``seconds``,
``val_hash``, ``device``, ``worker`` ...) plus two small flat dicts other readers follow live
(``progress``, ``resumed_from``). The large or nested records are trial *system* attributes
under the ``hpo:`` prefix, written in the same transaction as the results:

==================  ===============================================================
``hpo:artifacts``   {file name: artifact id} of the files in the artifact store
``hpo:sha256``      {file name: hex sha256} of the stored checkpoint (``best.pt``)
``hpo:metrics``     every validation metric of the best epoch (rounded to 6 places)
``hpo:value``       the trial's value, unrounded (a retry that adopts the result reports it)
``hpo:versions``    the library versions the trial ran with
``hpo:epochs_run``  the epochs this trial trained (a retry lists only its own)
==================  ===============================================================

A retry that found its killed predecessor's result already recorded takes it over without
training (:mod:`hpo.run.objective`) and says so in the user attribute ``result_of`` (that trial's
number).

Studies written before this layout kept ``artifacts``, ``metrics``, ``versions`` and
``epochs_run`` as user attributes: every accessor here falls back to them, so such studies
still promote, predict and report.
"""
from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from typing import Any

import optuna

__all__ = [
    "library_versions",
    "ARTIFACT_ATTR_PREFIX",
    "EPOCHS_ATTR",
    "FOLD_ATTR",
    "FULL",
    "REFIT_ATTR",
    "SOURCE_ATTR",
    "VALUE_ATTR",
    "ARTIFACTS_KEY",
    "EPOCHS_KEY",
    "METRICS_KEY",
    "RESULT_USER_KEYS",
    "SHA256_KEY",
    "VALUE_KEY",
    "VERSIONS_KEY",
    "artifact_ids",
    "best_first",
    "recorded_sha256",
    "recorded_value",
    "trial_epochs_run",
    "trial_metrics",
    "trial_versions",
]

# The companion study of ``hpo refit`` (hpo.run.refit_plan writes these, the objective and
# promotion read them).
REFIT_ATTR = "hpo_refit"  # the companion study's record: source, folds, configurations
SOURCE_ATTR = "refit_source"  # a fold trial's source trial number (in the source study)
FOLD_ATTR = "refit_fold"  # a fold trial's fold, or FULL for the model of every person
FULL = "all"
EPOCHS_ATTR = "refit_epochs"  # a full trial's epoch count (its folds' median best epoch)
VALUE_ATTR = "refit_value"  # a full trial's value: its configuration's mean fold F1
# optuna.artifacts' system attribute prefix of a stored file's record: upload_artifact,
# get_all_artifact_meta and the dashboard write and read it, but Optuna does not export it.
ARTIFACT_ATTR_PREFIX = "artifacts:"
ARTIFACTS_KEY = "hpo:artifacts"
SHA256_KEY = "hpo:sha256"
METRICS_KEY = "hpo:metrics"
VALUE_KEY = "hpo:value"
VERSIONS_KEY = "hpo:versions"
EPOCHS_KEY = "hpo:epochs_run"
# The scalar user attributes of a trial's results (a retry that adopts a result copies them).
RESULT_USER_KEYS = ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1", "best_epoch",
                    "seconds", "images_per_second", "device", "val_hash", "progress")

_Trial = optuna.trial.FrozenTrial


def _read(trial: _Trial, system_key: str, user_key: str) -> Any:
    value = trial.system_attrs.get(system_key)
    if value is None:  # a study written before the hpo: system attributes
        value = trial.user_attrs.get(user_key)
    return value


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def artifact_ids(trial: _Trial) -> dict[str, str]:
    """{file name: artifact id} of a finished trial's stored files ({} when none).

    Args:
        trial: the trial as the storage returns it.

    Returns:
        A new dict (changing it changes nothing recorded).
    """
    return {str(k): str(v) for k, v in _mapping(_read(trial, ARTIFACTS_KEY, "artifacts")).items()}


def trial_metrics(trial: _Trial) -> dict[str, float]:
    """Every validation metric of the trial's best epoch ({} when it recorded none)."""
    return _mapping(_read(trial, METRICS_KEY, "metrics"))


def trial_versions(trial: _Trial) -> dict[str, str]:
    """The library versions the trial ran with ({} when it recorded none)."""
    return _mapping(_read(trial, VERSIONS_KEY, "versions"))


def trial_epochs_run(trial: _Trial) -> list[int] | None:
    """The epochs the trial itself trained (None when it recorded none, e.g. still running)."""
    value = _read(trial, EPOCHS_KEY, "epochs_run")
    return list(value) if isinstance(value, (list, tuple)) else None


def recorded_sha256(trial: _Trial, name: str) -> str | None:
    """The sha256 recorded for a stored file when the trial ended (None: none recorded)."""
    value = _mapping(trial.system_attrs.get(SHA256_KEY)).get(name)
    return value if isinstance(value, str) else None


def recorded_value(trial: _Trial, metric: str) -> float | None:
    """The value a trial's recorded result stands for: exact, else its rounded ``metric``."""
    value = trial.system_attrs.get(VALUE_KEY)
    if isinstance(value, (int, float)):
        return float(value)
    fallback = trial_metrics(trial).get(metric)
    return float(fallback) if isinstance(fallback, (int, float)) else None


def best_first(trials: Iterable[optuna.trial.FrozenTrial],
               direction: optuna.study.StudyDirection) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials with a value, best first for ``direction`` (ties: lower number).

    The one ranking that ``hpo promote``, ``hpo refit --top`` and ``hpo gc --keep-top`` share.
    """
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.value is not None]
    sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (sign * float(t.value), t.number))


def library_versions() -> dict[str, str]:
    """Versions recorded on every trial and ensemble (so a result can be reproduced)."""
    # Imported here: these take seconds to import, and most readers of records never call this.
    import albumentations
    import numpy as np
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "optuna": optuna.__version__,
            "albumentations": albumentations.__version__, "numpy": np.__version__}
