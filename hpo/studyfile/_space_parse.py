"""The ``space`` and ``enqueue`` sections of a study file: parameters, conditions, loss mixes.

``parse_space`` turns each dotted trainer key's distribution into a
:class:`~hpo.studyfile.spec.ParamSpec` and checks every endpoint and choice by building a real
config on top of ``fixed``;
``parse_enqueue`` checks the trials to run first against that space. Both raise only
:class:`~hpo.errors.SpecError`, in one line.
"""
from __future__ import annotations

__all__ = ["parse_enqueue", "parse_space"]

import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpo.studyfile._checks import (
    MISSING,
    Ctx,
    boolean,
    choose,
    hint,
    integer,
    is_number,
    mapping,
    match_choice,
    number,
    show,
    show_choices,
    unknown_keys,
)
from hpo.studyfile._trainer_keys import build, config_raw, sections, trainer_fields, value_kind
from hpo.studyfile.spec import NO_HOLDOUT, PARAM_TYPES, SPLIT_KEYS, ParamSpec
from trainer import ConfigError, TrainConfig, list_losses, replace_path

_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "loss_mix": ("type", "mixed", "low", "high", "rest", "when"),
}
_LOSS_KEY = "loss.weights"


def _fixed_keys(fixed: Mapping[str, Any]) -> set[str]:
    keys: set[str] = set()
    for key, value in fixed.items():
        if key in sections() and isinstance(value, Mapping):
            keys.update(f"{key}.{sub}" for sub in value)
        else:
            keys.add(key)
    return keys


def parse_space(ctx: Ctx, raw: Any, fixed: Mapping[str, Any],
                base: TrainConfig) -> tuple[ParamSpec, ...]:
    """Validate the ``space`` section.

    Args:
        ctx: the study file.
        raw: the section as read.
        fixed: the validated ``fixed`` section.
        base: the config ``fixed`` and the study's split make, to check values against.

    Returns:
        The parameters, in file order.

    Raises:
        SpecError: the section is empty, a key is not a searchable trainer setting, or a
            distribution, condition or value is invalid.
    """
    example = "{optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}}"
    if raw is None or (isinstance(raw, Mapping) and not raw):
        raise ctx.error("space", f"is empty, but must define at least one parameter, "
                                 f"e.g. {example}")
    raw = mapping(ctx, "space", raw, example)
    fields = trainer_fields()
    valid = sorted(fields)
    params: list[ParamSpec] = []
    for key, dist in raw.items():
        if key not in fields:
            raise ctx.error("space", f"unknown key '{key}'{hint(key, valid)}: not a trainer "
                                     f"setting; valid keys: {', '.join(valid)}")
        if key.startswith("data.") and key[5:] in SPLIT_KEYS:
            raise ctx.error("space", f"{key} cannot be searched: every trial must validate on "
                                     "the same people; set it once in the data section")
        if key == "data.holdout":
            raise ctx.error("space", NO_HOLDOUT)
        if key == "output_dir":
            raise ctx.error("space", "output_dir cannot be searched; hpo sets it per trial")
        params.append(_parse_param(ctx, key, dist, fields[key], params, later=list(raw)))
    fixed_keys = _fixed_keys(fixed)
    for p in params:
        if p.key in fixed_keys and not p.when:
            raise ctx.error("space", f"{p.key} is both fixed and searched; remove it from "
                                     "fixed (or make the parameter conditional with when)")
    _check_mix_budget(ctx, params, base)
    for p in params:
        _check_values(ctx, p, base)
    return tuple(params)


def _parse_param(ctx: Ctx, key: str, raw: Any, annotation: Any, earlier: Sequence[ParamSpec],
                 *, later: Sequence[str]) -> ParamSpec:
    where = f"space: {key}"
    raw = mapping(ctx, where, raw, "{type: float, low: 0.0, high: 1.0}")
    if "type" not in raw:
        raise ctx.error(where, f"has no type; add type: one of {', '.join(PARAM_TYPES)}")
    kind = choose(ctx, f"{where}: type", raw["type"], PARAM_TYPES, "distribution type")
    unknown_keys(ctx, where, raw, _PARAM_KEYS[kind])
    _check_kind_fits(ctx, where, key, kind, annotation)
    when = _parse_when(ctx, key, raw.get("when"), earlier, space_keys=later)
    if kind in ("float", "int"):
        return _parse_range(ctx, where, key, kind, raw, when)
    if kind == "categorical":
        choices = _parse_choices(ctx, where, raw.get("choices"), annotation)
        return ParamSpec(key=key, type=kind, choices=choices, when=when)
    return _parse_loss_mix(ctx, where, key, raw, when)


def _parse_choices(ctx: Ctx, where: str, choices: Any, annotation: Any) -> tuple[Any, ...]:
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ctx.error(f"{where}: choices", f"{show(choices)} is not a non-empty list; "
                                             "write e.g. choices: [32, 64, 128]")
    out: list[Any] = []
    for i, choice in enumerate(choices):
        choice = _parse_choice(ctx, f"{where}: choices[{i}]", choice, annotation)
        if match_choice(choice, out) is not MISSING:
            raise ctx.error(f"{where}: choices", f"{show(choice)} is listed twice; "
                                                 "remove the duplicate")
        out.append(choice)
    return tuple(out)


def _parse_choice(ctx: Ctx, where: str, choice: Any, annotation: Any) -> Any:
    """One choice: a scalar, or for a list setting (``data.age_bins``) a list of numbers.

    A list choice is kept as a tuple; :mod:`hpo.studyfile.space` hands it to Optuna as a string.
    """
    kind = value_kind(annotation)
    if isinstance(choice, (list, tuple)) and kind == "tuple":
        if not choice or not all(is_number(v) for v in choice):
            raise ctx.error(where, f"{show(choice)} is not a list of numbers; a choice of a "
                                   "list setting is a list of numbers, e.g. [30, 58]")
        return tuple(choice)
    if choice is not None and not isinstance(choice, (bool, int, float, str)):
        also = "" if kind != "tuple" else " or lists of numbers, e.g. [30, 58]"
        raise ctx.error(where, f"{show(choice)} is not a single value; choices must be "
                               f"scalars{also}")
    if kind == "float" and isinstance(choice, str):
        choice = number(ctx, where, choice)
    return choice


def _check_kind_fits(ctx: Ctx, where: str, key: str, kind: str, annotation: Any) -> None:
    target = value_kind(annotation)
    if kind == "loss_mix" or target == "dict":
        if kind != "loss_mix" or key != _LOSS_KEY:
            raise ctx.error(where, f"type {kind} does not fit {key}; search loss weights with "
                                   f"{_LOSS_KEY}: {{type: loss_mix, mixed: f1, rest: [focal]}}")
    elif kind == "float" and target == "int":
        raise ctx.error(where, f"{key} is an integer setting, but type is float; "
                               "use type: int or categorical")
    elif kind in ("float", "int") and target not in ("float", "int"):
        raise ctx.error(where, f"{key} is not a number setting, so type {kind} does not fit; "
                               "use type: categorical with choices")


def _parse_range(ctx: Ctx, where: str, key: str, kind: str, raw: Mapping[str, Any],
                 when: dict[str, tuple[Any, ...]]) -> ParamSpec:
    for required in ("low", "high"):
        if required not in raw:
            raise ctx.error(where, f"has no {required}; a {kind} parameter needs low and high")
    log = boolean(ctx, f"{where}: log", raw.get("log", False))
    step_raw = raw.get("step")
    step: float | int | None
    if kind == "int":
        low: float = integer(ctx, f"{where}: low", raw["low"])
        high: float = integer(ctx, f"{where}: high", raw["high"])
        step = 1 if step_raw is None else integer(ctx, f"{where}: step", step_raw, minimum=1)
        if log and step != 1:
            raise ctx.error(where, f"log is true and step is {step}; a log range cannot have a "
                                   "step, so remove one of them")
    else:
        low = number(ctx, f"{where}: low", raw["low"])
        high = number(ctx, f"{where}: high", raw["high"])
        step = None if step_raw is None else number(ctx, f"{where}: step", step_raw)
        if step is not None and step <= 0:
            raise ctx.error(f"{where}: step", f"{step:g} is not > 0; use a positive step "
                                              "or null for a continuous range")
        if log and step is not None:
            raise ctx.error(where, f"log is true and step is {step:g}; a log range cannot have "
                                   "a step, so remove one of them")
        if not math.isfinite(high - low):
            raise ctx.error(where, f"the range [{low:g}, {high:g}] is too wide; narrow it")
    if low > high:
        raise ctx.error(where, f"low ({low:g}) is greater than high ({high:g}), but must be "
                               "<= high; swap them")
    if log and low <= 0:
        need = ">= 1" if kind == "int" else "> 0"
        raise ctx.error(where, f"log is true but low is {low:g}; a log range needs low {need}, "
                               "so raise low or set log: false")
    if step is not None:
        span = high - low
        n = span / step
        if n > 1e9:  # optuna's grid arithmetic (decimal, 28 digits) fails far beyond this
            raise ctx.error(where, f"step {step:g} cuts [{low:g}, {high:g}] into {n:.3g} values, "
                                   "but at most 1e9 are allowed; use a larger step or null")
        if abs(n - round(n)) > 1e-6 * max(1.0, abs(n)):
            fit = low + math.floor(n) * step
            raise ctx.error(where, f"high - low ({span:g}) is not a multiple of step "
                                   f"({step:g}); set high to {fit:g} or change step")
    return ParamSpec(key=key, type=kind, low=low, high=high, log=log, step=step, when=when)


def _parse_loss_mix(ctx: Ctx, where: str, key: str, raw: Mapping[str, Any],
                    when: dict[str, tuple[Any, ...]]) -> ParamSpec:
    losses = list_losses()
    if "mixed" not in raw:
        raise ctx.error(where, "has no mixed loss; add e.g. mixed: f1")
    mixed = _loss_name(ctx, f"{where}: mixed", raw["mixed"], losses)
    rest_raw = raw.get("rest")
    if rest_raw is None:
        raise ctx.error(where, "has no rest; add e.g. rest: [focal, weighted_ce, ce]")
    names = [rest_raw] if isinstance(rest_raw, str) else rest_raw
    if not isinstance(names, (list, tuple)) or not names:
        raise ctx.error(f"{where}: rest", f"{show(rest_raw)} is not a loss name or a non-empty "
                                          "list of them; write e.g. rest: [focal, ce]")
    rest: list[str] = []
    for i, item in enumerate(names):
        name = _loss_name(ctx, f"{where}: rest[{i}]", item, losses)
        if name == mixed:
            raise ctx.error(f"{where}: rest", f"'{name}' is also the mixed loss; the rest must "
                                              "be other losses, so remove it from rest")
        if name in rest:
            raise ctx.error(f"{where}: rest", f"'{name}' is listed twice; remove the duplicate")
        rest.append(name)
    low = number(ctx, f"{where}: low", raw.get("low", 0.0))
    high = number(ctx, f"{where}: high", raw.get("high", 1.0))
    for label, value in (("low", low), ("high", high)):
        if not 0.0 <= value <= 1.0:
            raise ctx.error(f"{where}: {label}", f"{value:g} is not a weight in [0, 1]; "
                                                 f"the weight of {mixed} must be in [0, 1]")
    if low > high:
        raise ctx.error(where, f"low ({low:g}) is greater than high ({high:g}), but must be "
                               "<= high; swap them")
    return ParamSpec(key=key, type="loss_mix", low=low, high=high, when=when, mixed=mixed,
                     rest=tuple(rest))


def _loss_name(ctx: Ctx, where: str, value: Any, losses: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in losses:
        close = hint(value, losses) if isinstance(value, str) else ""
        raise ctx.error(where, f"unknown loss {show(value)}{close}; valid losses: "
                               f"{', '.join(losses)}")
    return value


def _parse_when(ctx: Ctx, own: str, raw: Any, earlier: Sequence[ParamSpec], *,
                space_keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    where = f"space: {own}: when"
    raw = mapping(ctx, where, raw, "{optim.name: sgd}")
    if not raw:
        raise ctx.error(where, "is empty; give a condition like {optim.name: sgd} or remove it")
    by_key = {p.key: p for p in earlier}
    categorical = [p.key for p in earlier if p.type == "categorical"]
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in raw.items():
        parent = by_key.get(key)
        if parent is None and key in space_keys:
            raise ctx.error(where, f"{key} comes after {own} in space (or is {own} itself), "
                                   f"but a condition must refer to an earlier parameter; "
                                   f"move {own} below {key}")
        if parent is None:
            listing = ", ".join(categorical) if categorical else "none"
            raise ctx.error(where, f"'{key}' is not a parameter defined above {own} in space"
                                   f"{hint(key, categorical)}; a condition refers to an "
                                   f"earlier categorical parameter (here: {listing}), so "
                                   "define it first")
        if parent.type != "categorical":
            raise ctx.error(where, f"'{key}' is a {parent.type} parameter, but conditions can "
                                   "only refer to categorical ones; make it categorical")
        items = _when_values(values, parent.choices or ())
        if not items:
            raise ctx.error(f"{where}: {key}", "is an empty list; give the values that "
                                               f"activate {own}")
        matched = []
        for item in items:
            choice = match_choice(item, parent.choices or ())
            if choice is MISSING:
                shown = show_choices(parent.choices or ())
                raise ctx.error(f"{where}: {key}", f"{show(item)} is not among the choices "
                                                   f"of {key} ({shown}); use one of them")
            matched.append(choice)
        out[key] = tuple(matched)
    return out


def _when_values(values: Any, choices: Sequence[Any]) -> list[Any]:
    """A condition's values: one value, or a list of them.

    A list that is itself one of the choices (``when: {data.age_bins: [30, 58]}``) is one value;
    so is a list of numbers that are not choices of a parameter with list choices (reported as
    the one value it was meant to be).
    """
    if not isinstance(values, (list, tuple)) or match_choice(values, choices) is not MISSING:
        return [values]
    items = list(values)
    if (any(isinstance(c, tuple) for c in choices) and all(is_number(v) for v in items)
            and any(match_choice(v, choices) is MISSING for v in items)):
        return [values]
    return items


def _max_value(p: ParamSpec) -> float | None:
    if p.type in ("float", "int"):
        return float(p.high) if p.high is not None else None
    numbers = [float(c) for c in p.choices or () if is_number(c)]
    return max(numbers) if numbers else None


def _check_mix_budget(ctx: Ctx, params: Sequence[ParamSpec], base: TrainConfig) -> None:
    top = {"data.mixup": base.data.mixup, "data.cutmix": base.data.cutmix}
    searched = {}
    for p in params:
        if p.key in top:
            value = _max_value(p)
            if value is not None:
                top[p.key] = value
                searched[p.key] = p
    total = top["data.mixup"] + top["data.cutmix"]
    if total > 1.0 + 1e-9:
        what = " and ".join(f"{k}'s {'high' if k in searched else 'fixed value'}" for k in top)
        raise ctx.error("space", f"data.mixup can reach {top['data.mixup']:g} and data.cutmix "
                                 f"{top['data.cutmix']:g}, {total:g} together, but their sum "
                                 f"must be <= 1 (the rest of the batches stay plain); lower "
                                 f"{what} so they add up to at most 1")


def _check_values(ctx: Ctx, p: ParamSpec, base: TrainConfig) -> None:
    """Each endpoint / choice must make a valid TrainConfig on top of ``fixed``."""
    where = f"space: {p.key}"
    if p.type == "loss_mix":
        values = [{rest: 0.5, p.mixed: 0.5} for rest in p.rest or ()]
    elif p.type == "categorical":
        values = list(p.choices or ())
    else:
        values = [p.low, p.high]
    for value in values:
        try:
            replace_path(base, p.key, value)
        except ConfigError as exc:
            raise ctx.error(where, str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Enqueued trials


def parse_enqueue(ctx: Ctx, raw: Any, space: Sequence[ParamSpec], fixed: Mapping[str, Any],
                  data: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """Validate the ``enqueue`` section: trials in user terms, checked against the space.

    Args:
        ctx: the study file.
        raw: the section as read.
        space: the validated parameters.
        fixed: the validated ``fixed`` section.
        data: the study's split.

    Returns:
        The trials, normalised (``32.0`` -> ``32``, ``loss.weights`` without zero weights).

    Raises:
        SpecError: a key is not searched, a value is outside its distribution, a condition does
            not hold, or the trial makes an invalid config.
    """
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ctx.error("enqueue", f"{show(raw)} is not a list of trials; write e.g. "
                                   "enqueue: [{optim.lr: 1.0e-3}]")
    by_key = {p.key: p for p in space}
    trials = []
    for i, trial in enumerate(raw):
        where = f"enqueue[{i}]"
        trial = mapping(ctx, where, trial, "{optim.lr: 1.0e-3}")
        out: dict[str, Any] = {}
        for key, value in trial.items():
            p = by_key.get(key)
            if p is None:
                if key in trainer_fields():
                    raise ctx.error(where, f"{key} is not searched in this study; an enqueued "
                                           "trial sets only space parameters (put "
                                           "trial-independent settings in fixed)")
                raise ctx.error(where, f"unknown key '{key}'{hint(key, list(by_key))}; an "
                                       f"enqueued trial sets space parameters: "
                                       f"{', '.join(by_key)}")
            out[key] = _enqueued_value(ctx, f"{where}: {key}", p, value)
        chosen = {k: v for k, v in out.items() if by_key[k].type == "categorical"}
        for key in out:
            p = by_key[key]
            for cond in p.when:
                if cond not in chosen:
                    raise ctx.error(where, f"{key} depends on {cond} (when), but the trial does "
                                           f"not set {cond}; set {cond} too")
            if not p.is_active(chosen):
                cond = ", ".join(f"{k} in {_plain(v)}" for k, v in p.when.items())
                raise ctx.error(where, f"{key} is set, but its condition ({cond}) does not hold "
                                       f"in this trial; remove {key} or change the condition")
        build(ctx, where, config_raw(fixed, data, out))
        trials.append(out)
    return tuple(trials)


def _plain(choices: Sequence[Any]) -> list[Any]:
    return [list(c) if isinstance(c, tuple) else c for c in choices]


def _enqueued_value(ctx: Ctx, where: str, p: ParamSpec, value: Any) -> Any:
    if p.type == "categorical":
        choices = p.choices or ()
        choice = match_choice(value, choices)
        if choice is MISSING and isinstance(value, str):
            try:  # 1e-4 arrives from YAML as a string
                choice = match_choice(float(value), choices)
            except ValueError:
                pass
        if choice is MISSING:
            raise ctx.error(where, f"{show(value)} is not among the choices "
                                   f"({show_choices(choices)}); use one of them")
        # a list choice stays a plain list in the enqueued trial (as the study file wrote it)
        return _plain([choice])[0]
    if p.type == "loss_mix":
        return _enqueued_mix(ctx, where, p, value)
    if p.type == "int":
        got: float = integer(ctx, where, value)
    else:
        got = number(ctx, where, value)
    assert p.low is not None and p.high is not None
    if not p.low <= got <= p.high:
        raise ctx.error(where, f"{got:g} is outside the range [{p.low:g}, {p.high:g}]; "
                               "use a value in the range or widen it")
    if p.step is not None:
        n = (got - p.low) / p.step
        if abs(n - round(n)) > 1e-6:
            raise ctx.error(where, f"{got:g} is not on the grid low + k * step ({p.low:g} + "
                                   f"k * {p.step:g}); round it to the grid")
    return got


def _enqueued_mix(ctx: Ctx, where: str, p: ParamSpec, value: Any) -> dict[str, float]:
    allowed = [p.mixed, *(p.rest or ())]
    value = mapping(ctx, where, value, "{weighted_ce: 1.0}")
    weights: dict[str, float] = {}
    for name, w in value.items():
        if name not in allowed:
            raise ctx.error(where, f"'{name}' is not part of this study's loss mix"
                                   f"{hint(name, allowed)} ({p.mixed} mixed with one of "
                                   f"{', '.join(p.rest or ())}); use those losses")
        w = number(ctx, f"{where}: {name}", w, "a weight >= 0", "0.5")
        if w < 0:
            raise ctx.error(f"{where}: {name}", f"{w:g} is negative; weights must be >= 0")
        weights[name] = w
    rest_used = [n for n, w in weights.items() if n != p.mixed and w > 0]
    if len(rest_used) > 1:
        raise ctx.error(where, f"gives weight to {', '.join(rest_used)}, but the mix takes "
                               f"{p.mixed} plus one of the rest; keep one of them")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise ctx.error(where, f"the weights sum to {total:g}, but must sum to 1 (the mix is "
                               f"rest: 1 - w, {p.mixed}: w); rescale them")
    w = weights.get(p.mixed, 0.0)
    assert p.low is not None and p.high is not None
    if not p.low <= w <= p.high:
        raise ctx.error(where, f"the {p.mixed} weight {w:g} is outside the range [{p.low:g}, "
                               f"{p.high:g}]; use a weight in the range or widen it")
    return {n: wt for n, wt in weights.items() if wt > 0}
