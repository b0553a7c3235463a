"""The parser of study files: a parsed YAML document in, a validated :class:`StudySpec` out.

:func:`parse_study_spec` checks everything, against the trainer's own registries and by building
real configs, so a bad study fails before any worker starts. Whatever the document holds, it
raises only :class:`~hpo.errors.SpecError`, in one line that names the file, the key, the rule
and the fix. The space and enqueued trials are :mod:`hpo.studyfile._space_parse`.
"""
from __future__ import annotations

__all__ = ["parse_study_spec"]

import copy
from collections.abc import Mapping
from typing import Any, Literal

from hpo.studyfile._checks import (
    Ctx,
    check_plain,
    choose,
    hint,
    integer,
    mapping,
    number,
    show,
    string,
    unknown_keys,
)
from hpo.studyfile._space_parse import parse_enqueue, parse_space
from hpo.studyfile._trainer_keys import build, config_raw, sections
from hpo.studyfile.samplers import check_options
from hpo.studyfile.spec import (
    DIRECTIONS,
    NO_HOLDOUT,
    SPLIT_KEYS,
    TOP_KEYS,
    ParamSpec,
    PrunerSpec,
    SamplerSpec,
    StudySpec,
    check_study_name,
)
from trainer import METRIC_NAMES, TrainConfig


def parse_study_spec(raw: Any, *, name: str, path: str = "<string>") -> StudySpec:
    """Validate a parsed study document (the core of :func:`hpo.studyfile.files.load_study_spec`).

    Args:
        raw: what ``yaml.safe_load`` returned for the file (any value).
        name: the study's name (the file's stem); it must pass :func:`check_study_name`.
        path: shown at the start of every error message.

    Returns:
        The validated study.

    Raises:
        SpecError: for anything invalid; never another exception, whatever ``raw`` holds.
    """
    check_study_name(name, source=path)
    ctx = Ctx(path)
    if raw is None:
        raise ctx.error("", "is empty; a study needs at least n_trials (or timeout) and space")
    if not isinstance(raw, Mapping):
        kind = "a list" if isinstance(raw, (list, tuple)) else f"the value {show(raw)}"
        raise ctx.error("", f"must be a mapping of study keys ({', '.join(TOP_KEYS)}), "
                            f"but holds {kind}; start with e.g. 'n_trials: 40'")
    check_plain(ctx, raw)
    for key in raw:
        if key not in TOP_KEYS:
            raise ctx.error("", f"unknown top-level key '{key}'{hint(key, TOP_KEYS)}; "
                                f"valid keys: {', '.join(TOP_KEYS)}")

    description = raw.get("description")
    description = "" if description is None else string(
        ctx, "description", description, "'EfficientNet family'")
    metric = raw.get("metric")
    metric = "f1" if metric is None else choose(ctx, "metric", metric, METRIC_NAMES, "metric")
    direction = raw.get("direction")
    direction = "maximize" if direction is None else choose(
        ctx, "direction", direction, DIRECTIONS, "direction")
    n_trials, timeout = _parse_budget(ctx, raw)
    sampler = _parse_sampler(ctx, raw.get("sampler"))
    pruner = _parse_pruner(ctx, raw.get("pruner"))
    data = _parse_data(ctx, raw.get("data"))
    fixed, base = _parse_fixed(ctx, raw.get("fixed"), data)
    space = parse_space(ctx, raw.get("space"), fixed, base)
    enqueue = parse_enqueue(ctx, raw.get("enqueue"), space, fixed, data)
    refit = _parse_refit(ctx, raw.get("refit"), data)
    if refit is not None:
        space = (*space, ParamSpec(key="data.fold", type="int", low=0, high=refit["folds"] - 1))
    return StudySpec(
        name=name, path=path, description=description, metric=metric, direction=direction,
        n_trials=n_trials, timeout=timeout, sampler=sampler, pruner=pruner, data=data,
        fixed=fixed, space=space, enqueue=enqueue, refit=refit,
    )


def _parse_refit(ctx: Ctx, raw: Any, data: dict[str, Any]) -> dict[str, Any] | None:
    """The ``refit`` section that ``hpo refit`` writes: ``{of: SOURCE, folds: K}``."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != {"of", "folds"}:
        raise ctx.error("refit", "must be a mapping with exactly 'of' (the source study) and "
                                 "'folds' (an integer >= 2); hpo refit writes it")
    folds = raw["folds"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ctx.error("refit.folds", f"is {show(folds)}, but must be an integer >= 2")
    source = check_study_name(raw["of"], source=f"{ctx.path}: refit.of")
    if data.get("n_folds") != folds or data.get("fold") is not None:
        raise ctx.error("data", f"must have n_folds: {folds} and fold: null in a refit study "
                                "(each trial trains one fold)")
    return {"of": source, "folds": folds}


def _parse_budget(ctx: Ctx, raw: Mapping[str, Any]) -> tuple[int | None, float | None]:
    n_trials = raw.get("n_trials")
    if n_trials is not None:
        n_trials = integer(ctx, "n_trials", n_trials, minimum=1,
                           rule="an integer >= 1 (or null with a timeout)")
    timeout = raw.get("timeout")
    if timeout is not None:
        timeout = number(ctx, "timeout", timeout, "a number of seconds > 0 (or null)", "7200")
        if timeout <= 0:
            raise ctx.error("timeout", f"{timeout:g} is not > 0; give the study's time budget "
                                       "in seconds, e.g. 7200, or null")
    if n_trials is None and timeout is None:
        raise ctx.error("", "neither n_trials nor timeout is set, but a study needs a budget; "
                            "set n_trials (e.g. n_trials: 40), timeout in seconds, or both")
    return n_trials, timeout


def _parse_named(ctx: Ctx, kind: Literal["sampler", "pruner"], raw: Any,
                 default: str) -> tuple[str, dict[str, Any]]:
    if raw is None:
        return default, {}
    if isinstance(raw, str):  # shorthand: ``sampler: random``
        raw = {"name": raw}
    raw = mapping(ctx, kind, raw, f"{{name: {default}}}")
    name = default if raw.get("name") is None else raw["name"]
    options = {k: v for k, v in raw.items() if k != "name"}
    return name, check_options(kind, name, options, path=ctx.path)


def _parse_sampler(ctx: Ctx, raw: Any) -> SamplerSpec:
    name, options = _parse_named(ctx, "sampler", raw, SamplerSpec.name)
    return SamplerSpec(name=name, options=options)


def _parse_pruner(ctx: Ctx, raw: Any) -> PrunerSpec:
    name, options = _parse_named(ctx, "pruner", raw, PrunerSpec.name)
    return PrunerSpec(name=name, options=options)


def _parse_data(ctx: Ctx, raw: Any) -> dict[str, Any]:
    raw = {} if raw is None else mapping(ctx, "data", raw, "{train_dir: data/train}")
    unknown_keys(ctx, "data", raw, SPLIT_KEYS)
    cfg = build(ctx, "data", {"data": dict(raw)})
    return {key: getattr(cfg.data, key) for key in SPLIT_KEYS}


def _parse_fixed(ctx: Ctx, raw: Any,
                 data: Mapping[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    raw = {} if raw is None else mapping(ctx, "fixed", raw, "{epochs: 10}")
    section_names = sections()
    examples = {"data": "{img_size: [224, 224]}", "model": "{name: resnet34}",
                "optim": "{lr: 1.0e-3}", "loss": "{weights: {ce: 1.0}}"}
    for key, value in raw.items():
        if key in section_names and value is not None:
            mapping(ctx, f"fixed: {key}", value, examples.get(key, "{}"))
    data_section = raw.get("data") or {}
    for key in SPLIT_KEYS:
        if key in data_section:
            raise ctx.error("fixed", f"data.{key} belongs in the study's data section (every "
                                     "trial must validate on the same people); move it there")
    if "holdout" in data_section:
        raise ctx.error("fixed", NO_HOLDOUT)
    if "output_dir" in raw:
        raise ctx.error("fixed", "output_dir is set per trial by hpo; remove it")
    fixed = copy.deepcopy(dict(raw))
    base = build(ctx, "fixed", config_raw(fixed, data, {}))
    return fixed, base
