"""Train one face-attribute classifier (mask / gender / age, 18 classes) on the competition layout.

``trainer`` knows nothing of Optuna or ``hpo``: ``fit(cfg, on_epoch=..., resume=...)`` trains one
model from a :class:`TrainConfig`, ``predict`` scores images with a checkpoint, and the factories
(``create_loss``, ``create_augmentation``, ``create_model``) build the parts by name.
"""
from __future__ import annotations

import importlib
from typing import Any

# Exports load on first use, so `python -m trainer.synth` does not pay for torch and timm.
_EXPORTS = {
    "COMPETITION_AGE_BINS": "trainer.layout",
    "ConfigError": "trainer.errors",
    "DataConfig": "trainer.config",
    "DataError": "trainer.errors",
    "FitResult": "trainer.engine",
    "LossConfig": "trainer.config",
    "METRIC_NAMES": "trainer.metrics",
    "ModelConfig": "trainer.config",
    "NUM_CLASSES": "trainer.layout",
    "OptimConfig": "trainer.config",
    "PreparedData": "trainer.data",
    "TrainConfig": "trainer.config",
    "TrainerError": "trainer.errors",
    "TrainingDiverged": "trainer.errors",
    "WeightsSource": "trainer.weights",
    "age_bin": "trainer.layout",
    "build_cache": "trainer.cache",
    "classification_metrics": "trainer.metrics",
    "config_from_dict": "trainer.config",
    "config_to_dict": "trainer.config",
    "confusion": "trainer.metrics",
    "create_augmentation": "trainer.augment",
    "create_loss": "trainer.losses",
    "create_loss_mix": "trainer.losses",
    "create_mixer": "trainer.augment",
    "create_model": "trainer.models",
    "data_key": "trainer.data",
    "decode_image": "trainer.cache",
    "decode_label": "trainer.layout",
    "device_label": "trainer.device",
    "encode_label": "trainer.layout",
    "fit": "trainer.engine",
    "list_augmentations": "trainer.augment",
    "list_losses": "trainer.losses",
    "load_checkpoint": "trainer.checkpoint",
    "load_config": "trainer.config",
    "make_dataset": "trainer.synth",
    "predict": "trainer.inference",
    "prepare_data": "trainer.data",
    "read_eval": "trainer.layout",
    "replace_path": "trainer.config",
    "resolve_device": "trainer.device",
    "resolve_weights": "trainer.weights",
    "save_config": "trainer.config",
    "scan_train": "trainer.layout",
    "split_frame": "trainer.split",
    "split_people": "trainer.split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
