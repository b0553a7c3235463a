"""The trainer's configuration: a tree of frozen dataclasses built and validated in one place.

A config is written as YAML (or a nested dict) with the sections ``data``, ``model``, ``optim``
and ``loss`` plus a few top-level settings. Every key is checked: an unknown key, a wrong type or
a value out of range raises :class:`~trainer.errors.ConfigError` naming the key, the rule and the
fix. The resolved config is saved next to every checkpoint (``config.yaml``) so any run can be
rebuilt exactly.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.errors import ConfigError
from trainer.layout import COMPETITION_AGE_BINS

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "LossConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "replace_path",
]


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they become batches.

    ``img_size`` and ``crop`` are (height, width). ``crop`` is a center crop applied to the
    original photo before resizing (the teams cropped 384x512 photos to the face region).
    ``age_bins`` are the age thresholds the run *trains* with (e.g. [30, 58]); the split and
    every validation metric use the competition's (``COMPETITION_AGE_BINS``, [30, 60]).
    ``holdout: false`` trains on every person and validates on none (``fold`` and
    ``val_fraction`` then do not matter): the last epoch is the model. ``hpo refit --full``
    trains its final models so, for the epoch count its folds validated.
    """

    train_dir: str = "data/train"
    img_size: tuple[int, int] = (224, 224)
    crop: tuple[int, int] | None = None
    val_fraction: float = 0.2
    n_folds: int = 5
    fold: int | None = None
    holdout: bool = True
    split_seed: int = 0
    age_bins: tuple[int, int] = COMPETITION_AGE_BINS
    relabel_csv: str | None = None
    cache_dir: str | None = None
    augmentation: str = "basic"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_alpha: float = 0.4
    cutmix_alpha: float = 1.0
    balanced_sampler: bool = False
    num_workers: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """Which timm model, which head and which starting weights.

    ``head='single'`` is an 18-way classifier; ``'multitask'`` predicts mask (3), gender (2) and
    age (3) and combines them into 18 class log-probabilities. ``weights_dir`` (or the environment
    variable ``HPO_WEIGHTS_DIR``) is searched for ``<model name>*.pth`` so runs work offline.
    """

    name: str = "resnet34"
    head: Literal["single", "multitask"] = "single"
    pretrained: bool = True
    pretrained_file: str | None = None
    weights_dir: str | None = None
    drop_rate: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer (any name of timm's ``create_optimizer_v2``) and learning-rate schedule."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_epochs: int = 10
    decay_rate: float = 0.1
    accum_steps: int = 1
    clip_grad: float | None = None


@dataclass(frozen=True)
class LossConfig:
    """A weighted mix of named losses, e.g. ``weights: {f1: 0.4, focal: 0.6}``."""

    weights: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})
    gamma: float = 2.0
    smoothing: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; ``trainer.fit`` takes exactly this."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    early_stop_patience: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool = True
    output_dir: str = "runs/default"

    def __post_init__(self) -> None:
        _validate(self)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loss": LossConfig}


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(key, value, inner[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            valid = ", ".join(map(str, choices))
            raise ConfigError(f"{key} is {value!r}, but must be one of: {valid}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and len(args) == 2:
            value = (value, value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(
                f"{key} is {value!r}, but must be a list of {len(args)} values, e.g. [224, 224]"
            )
        return tuple(_convert(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} is {value!r}, but must be a mapping, e.g. {{ce: 1.0}}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(f"{key}.{k}", v, vt) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} is {value!r}, but must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} is {value!r}, but must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads 1e-3 as a string; accept it as users mean it
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} is {value!r}, but must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key} is {value!r}, but must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} is {value!r}, but must be a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _unknown_key(prefix: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    where = f"{prefix}.{key}" if prefix else key
    return ConfigError(f"unknown key '{where}'{hint}; valid keys: {', '.join(valid)}")


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown_key(prefix, str(key), fields)
        full = f"{prefix}.{key}" if prefix else key
        if key in _SECTIONS and cls is TrainConfig:
            kwargs[key] = value if isinstance(value, _SECTIONS[key]) else _build(
                _SECTIONS[key], value if value is not None else {}, key
            )
        else:
            kwargs[key] = _convert(full, value, hints[key])
    return cls(**kwargs)


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested mapping (e.g. parsed YAML).

    Args:
        raw: sections ``data``, ``model``, ``optim``, ``loss`` and top-level keys.

    Returns:
        The validated, frozen config.

    Raises:
        ConfigError: unknown key, wrong type or value out of range (one line, names the key).
    """
    return _build(TrainConfig, raw if raw is not None else {}, "")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-Python form of a config (tuples as lists), the inverse of :func:`config_from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config file (``yaml.safe_load``) and validate it.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or holds an invalid config.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}; check the path") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    return config_from_dict(raw or {})


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML so the run can be rebuilt exactly."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace_path(cfg: TrainConfig, dotted: str, value: Any) -> TrainConfig:
    """A copy of ``cfg`` with one setting changed: ``replace_path(c, "optim.lr", 1e-4)``.

    The new value goes through the same validation as a config file.
    """
    raw = config_to_dict(cfg)
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise _unknown_key("", dotted, sorted(_dotted_keys()))
        node = node[part]
    if parts[-1] not in node and not (len(parts) > 2 and parts[-2] == "weights"):
        raise _unknown_key("", dotted, sorted(_dotted_keys()))
    node[parts[-1]] = value
    return config_from_dict(raw)


def _dotted_keys() -> list[str]:
    keys = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SECTIONS:
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(_SECTIONS[f.name])]
        else:
            keys.append(f.name)
    return keys


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate(cfg: TrainConfig) -> None:
    """Range checks across the whole tree; names come from the registries they index."""
    d, m, o, loss = cfg.data, cfg.model, cfg.optim, cfg.loss
    _check(cfg.epochs >= 1, f"epochs is {cfg.epochs}, but must be >= 1")
    _check(cfg.batch_size >= 1, f"batch_size is {cfg.batch_size}, but must be >= 1")
    _check(cfg.eval_batch_size >= 1, f"eval_batch_size is {cfg.eval_batch_size}, but must be >= 1")
    if cfg.early_stop_patience is not None:
        _check(cfg.early_stop_patience >= 1,
               f"early_stop_patience is {cfg.early_stop_patience}, but must be >= 1 (or null)")
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
           f"device is {cfg.device!r}, but must be auto, cpu, cuda or cuda:N")
    h, w = d.img_size
    _check(h >= 8 and w >= 8, f"data.img_size is {list(d.img_size)}, but both must be >= 8")
    if d.crop is not None:
        _check(min(d.crop) >= 8, f"data.crop is {list(d.crop)}, but both must be >= 8 (or null)")
    _check(0.0 < d.val_fraction < 1.0,
           f"data.val_fraction is {d.val_fraction}, but must be between 0 and 1 (exclusive)")
    _check(d.n_folds >= 2, f"data.n_folds is {d.n_folds}, but must be >= 2")
    if d.fold is not None:
        _check(0 <= d.fold < d.n_folds,
               f"data.fold is {d.fold}, but must be in 0..{d.n_folds - 1} (data.n_folds - 1)")
    lo, hi = d.age_bins
    _check(0 < lo < hi, f"data.age_bins is {list(d.age_bins)}, but must be two ages with "
           "0 < young/middle < middle/old, e.g. [30, 60]")
    for key in ("mixup", "cutmix"):
        p = getattr(d, key)
        _check(0.0 <= p <= 1.0, f"data.{key} is {p}, but must be a probability in [0, 1]")
    _check(d.mixup + d.cutmix <= 1.0 + 1e-9,
           f"data.mixup + data.cutmix is {d.mixup + d.cutmix:g}, but must be <= 1 "
           "(the rest of the batches are left plain)")
    _check(d.mixup_alpha > 0 and d.cutmix_alpha > 0, "data.mixup_alpha and data.cutmix_alpha "
           f"are {d.mixup_alpha} and {d.cutmix_alpha}, but must be > 0")
    if d.num_workers is not None:
        _check(d.num_workers >= 0, f"data.num_workers is {d.num_workers}, but must be >= 0")
    _check(0.0 <= m.drop_rate < 1.0, f"model.drop_rate is {m.drop_rate}, but must be in [0, 1)")
    _check(o.lr > 0, f"optim.lr is {o.lr}, but must be > 0")
    _check(o.weight_decay >= 0, f"optim.weight_decay is {o.weight_decay}, but must be >= 0")
    _check(0 <= o.momentum < 1, f"optim.momentum is {o.momentum}, but must be in [0, 1)")
    _check(o.warmup_epochs >= 0, f"optim.warmup_epochs is {o.warmup_epochs}, but must be >= 0")
    _check(o.accum_steps >= 1, f"optim.accum_steps is {o.accum_steps}, but must be >= 1")
    _check(o.decay_epochs >= 1, f"optim.decay_epochs is {o.decay_epochs}, but must be >= 1")
    if o.clip_grad is not None:
        _check(o.clip_grad > 0, f"optim.clip_grad is {o.clip_grad}, but must be > 0 (or null)")
    _validate_names(cfg)
    # Loss weights, gamma and smoothing are checked by the loss factory itself.
    from trainer.losses import create_loss_mix

    create_loss_mix(loss.weights, gamma=loss.gamma, smoothing=loss.smoothing,
                    class_counts=[1] * 18)


def _validate_names(cfg: TrainConfig) -> None:
    # Imported here, not at the top: timm and albumentations take seconds to import, and a
    # config is often read (hpo status, study files) without being validated.
    from timm.optim import list_optimizers

    from trainer.augment import list_augmentations
    from trainer.model_names import check_model_name

    augs = list_augmentations()
    _check(cfg.data.augmentation in augs, f"data.augmentation is {cfg.data.augmentation!r}, "
           f"but must be one of: {', '.join(augs)}")
    opts = list_optimizers()
    if cfg.optim.name.lower() not in opts:
        close = difflib.get_close_matches(cfg.optim.name.lower(), opts, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"optim.name is {cfg.optim.name!r}, an unknown optimizer{hint}; "
                          "use a name from timm.optim.list_optimizers(), e.g. sgd, adam, adamw")
    check_model_name(cfg.model.name)
