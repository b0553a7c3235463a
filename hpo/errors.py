"""The service's errors. The CLI prints any of them (and the trainer's) as one line."""
from __future__ import annotations

from trainer import TrainerError

__all__ = ["HpoError", "SpecError", "StorageError", "EnsembleError"]


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
