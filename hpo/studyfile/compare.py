"""Two versions of a study file, compared: which changes keep the study's trials comparable.

A study resumed from a changed file (:func:`hpo.run.study.create_or_resume`) may go on when
the file only steers the study (its budget, sampler, pruner, description, enqueued trials),
and must not when it changes what a trial means (its metric, direction, fixed settings,
search space or refit section).
"""
from __future__ import annotations

from typing import Any

from hpo.studyfile.spec import ParamSpec, PrunerSpec, SamplerSpec, StudySpec

__all__ = ["MEANING", "STEERING", "spec_changes"]

# A study file changing these (or the split) cannot resume a study: its trials would not be
# comparable. Changing only STEERING can.
MEANING = ("metric", "direction", "fixed", "space", "refit")
STEERING = ("description", "n_trials", "timeout", "sampler", "pruner", "enqueue")


def spec_changes(old: StudySpec, new: StudySpec) -> tuple[list[str], list[str]]:
    """(changes that make trials incomparable, changes that only steer the study), as text,
    e.g. ``metric f1 -> accuracy`` or ``space: optim.lr added``."""
    meaning, steering = [], []
    for name in MEANING + STEERING:
        was, now = getattr(old, name), getattr(new, name)
        if name in ("space", "fixed"):  # the space by key: its order only orders suggestions
            diff = _diff(*map(_dist if name == "space" else _flat, (was, now)))
            if not diff:
                continue
            shown = f"{name}: {', '.join(diff[:3])}" + (f" and {len(diff) - 3} more"
                                                        if len(diff) > 3 else "")
        elif was == now:
            continue
        elif name in ("description", "enqueue", "refit"):
            shown = "refit section" if name == "refit" else name
        else:  # metric, direction, n_trials, timeout, sampler, pruner
            shown = f"{name} {_short(was)} -> {_short(now)}"
        (meaning if name in MEANING else steering).append(shown)
    return meaning, steering


def _diff(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return ([f"{k} removed" for k in was if k not in now]
            + [f"{k} added" for k in now if k not in was]
            + [f"{k} {_short(was[k])} -> {_short(now[k])}" for k in was
               if k in now and was[k] != now[k]])


def _dist(space: tuple[ParamSpec, ...]) -> dict[str, str]:  # {type: float, low: 0.001, ...}
    return {p.key: str({k: v for k, v in vars(p).items() if k != "key" and v is not None
                        and v is not False and v != {}}).replace("'", "") for p in space}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:  # {"data.img_size": ...}
    return {k: v for key, value in tree.items() for k, v in (
        _flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value
        else {f"{prefix}{key}": value}).items()}


def _short(value: Any, most: int = 80) -> str:
    if isinstance(value, (SamplerSpec, PrunerSpec)):
        value = f"{value.name} {value.options}"
    text = " ".join(str(value).split())
    return text if len(text) <= most else text[:most - 3] + "..."
