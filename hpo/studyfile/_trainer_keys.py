"""The trainer's settings as a study file names them: dotted keys, and the layering of a config.

A study file sets trainer settings with dotted :class:`~trainer.TrainConfig` keys
(``optim.lr``, ``batch_size``); these helpers list those keys with their types and build the
nested dict ``config_from_dict`` takes from a study's ``fixed``, ``data`` and a trial's settings.
"""
from __future__ import annotations

__all__ = ["build", "config_raw", "sections", "trainer_fields", "value_kind"]

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from hpo.studyfile._checks import Ctx
from trainer import ConfigError, TrainConfig, config_from_dict


@cache
def trainer_fields() -> dict[str, Any]:
    """Dotted TrainConfig key -> type annotation (``optim.lr`` -> float).

    Returns:
        Every settable key, sections flattened one level.
    """
    out: dict[str, Any] = {}
    top = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        tp = top[f.name]
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            for g in dataclasses.fields(tp):
                out[f"{f.name}.{g.name}"] = hints[g.name]
        else:
            out[f.name] = tp
    return out


@cache
def sections() -> tuple[str, ...]:
    """The TrainConfig fields that are sections (``data``, ``model``, ...).

    Returns:
        Their names, in field order.
    """
    top = typing.get_type_hints(TrainConfig)
    return tuple(f.name for f in dataclasses.fields(TrainConfig)
                 if dataclasses.is_dataclass(top[f.name]))


def value_kind(tp: Any) -> str:
    """What a setting's annotation holds: bool, int, float, str, literal, tuple, dict or other.

    Args:
        tp: a type annotation (``X | None`` counts as ``X``).

    Returns:
        The kind's name.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return value_kind(next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is Literal:
        return "literal"
    if origin is tuple:
        return "tuple"
    if origin is dict:
        return "dict"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, "other")


def config_raw(fixed: Mapping[str, Any], data: Mapping[str, Any],
               settings: Mapping[str, Any]) -> dict[str, Any]:
    """The nested trainer dict: ``fixed``, then the study's split, then dotted ``settings``.

    Args:
        fixed: the study's ``fixed`` section (nested like a TrainConfig).
        data: the study's split (``train_dir``, ``val_fraction``, ...).
        settings: dotted keys to values, later winning.

    Returns:
        A new dict (the inputs are not modified), for ``config_from_dict``.
    """
    raw = copy.deepcopy(dict(fixed))
    section = raw.get("data")
    merged = dict(section) if isinstance(section, Mapping) else {}
    merged.update(data)
    raw["data"] = merged
    for key, value in settings.items():
        head, dot, tail = key.partition(".")
        if dot:
            node = raw.get(head)
            node = dict(node) if isinstance(node, Mapping) else {}
            node[tail] = copy.deepcopy(value)
            raw[head] = node
        else:
            raw[key] = copy.deepcopy(value)
    return raw


def build(ctx: Ctx, where: str, raw: Mapping[str, Any]) -> TrainConfig:
    """``config_from_dict(raw)``, its ConfigError reported at ``where``.

    Args:
        ctx: the file being checked.
        where: the place the settings came from.
        raw: the nested trainer dict.

    Returns:
        The validated config.

    Raises:
        SpecError: the trainer rejects the settings (its message, prefixed).
    """
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ctx.error(where, str(exc)) from None
