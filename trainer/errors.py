"""Errors raised by the trainer for user mistakes (bad config, bad data)."""
from __future__ import annotations

__all__ = ["TrainerError", "ConfigError", "DataError", "TrainingDiverged"]


class TrainerError(Exception):
    """Base of every error caused by user input; the CLI prints it as one line."""


class ConfigError(TrainerError, ValueError):
    """A configuration value is invalid (unknown name, wrong type, out of range)."""


class DataError(TrainerError):
    """The dataset on disk is unusable (bad layout, unreadable images, empty)."""


class TrainingDiverged(TrainerError):
    """The training loss became NaN or infinite."""
