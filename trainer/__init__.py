"""Train one face-attribute classifier (mask / gender / age, 18 classes) on the competition layout.

``trainer`` knows nothing of Optuna or ``hpo``: ``fit(cfg, on_epoch=..., resume=...)`` trains one
model from a :class:`TrainConfig`, ``predict`` scores images with a checkpoint, and the factories
(``create_loss``, ``create_augmentation``, ``create_model``) build the parts by name.
"""
from __future__ import annotations

from trainer.augment import create_augmentation, create_mixer, list_augmentations
from trainer.cache import build_cache, decode_image
from trainer.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    replace_path,
    save_config,
)
from trainer.engine import (
    FitResult,
    PreparedData,
    TrainingDiverged,
    fit,
    load_checkpoint,
    predict,
    prepare_data,
    resolve_device,
)
from trainer.errors import ConfigError, DataError, TrainerError
from trainer.layout import decode_label, encode_label, read_eval, scan_train
from trainer.losses import create_loss, create_loss_mix, list_losses
from trainer.metrics import classification_metrics
from trainer.models import create_model
from trainer.split import split_frame, split_people

__all__ = [
    "ConfigError",
    "DataConfig",
    "DataError",
    "FitResult",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PreparedData",
    "TrainConfig",
    "TrainerError",
    "TrainingDiverged",
    "build_cache",
    "classification_metrics",
    "config_from_dict",
    "config_to_dict",
    "create_augmentation",
    "create_loss",
    "create_loss_mix",
    "create_mixer",
    "create_model",
    "decode_image",
    "decode_label",
    "encode_label",
    "fit",
    "list_augmentations",
    "list_losses",
    "load_checkpoint",
    "load_config",
    "predict",
    "prepare_data",
    "read_eval",
    "replace_path",
    "resolve_device",
    "save_config",
    "scan_train",
    "split_frame",
    "split_people",
]
