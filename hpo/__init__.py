"""hpo: hyperparameter search for the mask / gender / age face competition.

``hpo launch --study NAME`` runs an Optuna study defined in ``studies/NAME.yaml``; workers on
many machines can join it; ``hpo promote`` turns the best trials into an ensemble and
``hpo predict`` writes the submission. See the README.
"""
from __future__ import annotations

import warnings

from hpo.errors import EnsembleError, HpoError, SpecError, StorageError

__all__ = ["HpoError", "SpecError", "StorageError", "EnsembleError"]

# Heartbeats, retries and artifacts are marked experimental by Optuna; we rely on them on
# purpose, so their warnings would only be noise in every worker's output.
try:
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
except ImportError:  # pragma: no cover - optuna always ships it
    pass
