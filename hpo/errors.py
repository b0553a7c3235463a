"""Every exception of ``hpo``, the bottom layer. The CLI prints any of them (and the trainer's)
as one line, ``Error: ...``, exit code 1."""
from __future__ import annotations

from trainer import TrainerError

__all__ = [
    "ArtifactStoreError",
    "EnsembleError",
    "FailureStreak",
    "HpoError",
    "RefitError",
    "SpecError",
    "StorageError",
]


class HpoError(TrainerError):
    """Base of every error the service raises for user input or environment problems.

    It derives from the trainer's base so one ``except TrainerError`` catches both layers.
    """


class SpecError(HpoError, ValueError):
    """A study file is invalid (bad YAML, unknown key, wrong type, bad range, unknown name)."""


class StorageError(HpoError):
    """The study storage cannot be reached or used (URL, credentials, schema)."""


class EnsembleError(HpoError):
    """Promotion or prediction cannot proceed (no completed trials, altered checkpoint, ...)."""


class RefitError(HpoError):
    """A refit cannot start: nothing to refit, a bad fold count, a changed plan."""


class FailureStreak(HpoError):
    """Trials keep failing the same way: the worker stops rather than fail the whole budget."""


class ArtifactStoreError(HpoError):
    """A trial's files cannot be written to the artifact folder (read-only, full, a file)."""
