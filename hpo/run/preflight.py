"""Pre-flight: before trial 0, every model a study can sample has weights and builds.

Without it a study whose models cannot get their weights (no internet, a weights folder without
their files) or cannot run at the study's image size fails every trial, one at a time, each
after its own wait. :func:`check_models` finds that out in seconds, in one line, before any
trial starts: the weights through :func:`trainer.resolve_weights` (no download), the build by
creating each model without weights and running one tiny batch through it on the CPU.
"""
from __future__ import annotations

__all__ = ["MODEL_KEYS", "check_models", "model_variants"]

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from hpo.errors import HpoError, SpecError
from hpo.studyfile.space import build_config
from hpo.studyfile.spec import ParamSpec, StudySpec
from trainer import NUM_CLASSES, TrainConfig, WeightsSource, create_model, resolve_weights

# The searched settings that change which weights a trial needs or whether its model builds.
MODEL_KEYS = ("model.name", "model.head", "model.pretrained", "model.pretrained_file",
              "model.weights_dir", "data.img_size")


def _plain(choice: Any) -> Any:
    return list(choice) if isinstance(choice, tuple) else choice


def _expand(variants: list[dict[str, Any]], param: ParamSpec) -> list[dict[str, Any]]:
    choices = [{param.key: _plain(c)} for c in param.choices or ()]
    out: list[dict[str, Any]] = []
    for v in variants:
        if all(key in MODEL_KEYS for key in param.when):
            # decidable from the model keys chosen so far
            out += [{**v, **c} for c in choices] if param.is_active(v) else [v]
        else:  # depends on another setting: the trial may or may not search it
            out += [v] + [{**v, **c} for c in choices]
    return out


def model_variants(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the searched model settings a trial of ``spec`` can get.

    Only the categorical parameters of :data:`MODEL_KEYS` count; a ``when`` condition on
    another of them is followed, one on any other setting counts both ways.

    Args:
        spec: the study.

    Returns:
        Dotted settings (``{"model.name": "resnet34", "model.head": "multitask"}``), one dict
        per combination, without duplicates; ``[{}]`` when none of them is searched.
    """
    variants: list[dict[str, Any]] = [{}]
    for param in spec.space:
        if param.type == "categorical" and param.key in MODEL_KEYS:
            variants = _expand(variants, param)
    unique: dict[str, dict[str, Any]] = {}
    for v in variants:
        unique.setdefault(repr(sorted(v.items())), v)
    return list(unique.values())


def _weights_error(spec: StudySpec, missing: list[WeightsSource]) -> HpoError:
    by_reason: dict[str, list[str]] = {}
    for source in missing:
        by_reason.setdefault(str(source.reason), []).append(source.model)
    what = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    files = ", ".join(sorted({f"{s.model.split('.')[0]}.pth" for s in missing}))  # tag dropped
    searched = " or model.pretrained" if any(p.key == "model.pretrained" for p in spec.space) \
        else ""
    return HpoError(
        f"{spec.path}: no pretrained weights for {len(missing)} model(s) the study can sample "
        f"({what}); put {files} (timm state dicts) in the folder HPO_WEIGHTS_DIR names, set "
        f"model.pretrained: false in the study's fixed section, or drop them from "
        f"space: model.name{searched}")


def _check_weights(spec: StudySpec, configs: list[TrainConfig],
                   hub_timeout: float) -> list[WeightsSource]:
    sources: dict[tuple[Any, ...], WeightsSource] = {}
    for cfg in configs:
        m = cfg.model
        key = (m.name, m.pretrained, m.pretrained_file, m.weights_dir)
        if key not in sources:
            sources[key] = resolve_weights(m, hub_timeout=hub_timeout)
    missing = [s for s in sources.values() if s.kind == "missing"]
    if missing:
        raise _weights_error(spec, missing)
    return list(sources.values())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@torch.no_grad()
def _build_error(cfg: TrainConfig) -> str | None:
    model_cfg = dataclasses.replace(cfg.model, pretrained=False, pretrained_file=None)
    height, width = cfg.data.img_size
    try:
        model = create_model(model_cfg).eval()
        out = model(torch.zeros(1, 3, height, width))
    except Exception as exc:  # noqa: BLE001 - any failure is reported, in one line
        return _first_line(exc)
    if tuple(out.shape) != (1, NUM_CLASSES):
        return f"its output has shape {tuple(out.shape)}, not (1, {NUM_CLASSES})"
    return None


def _check_builds(spec: StudySpec, configs: list[TrainConfig],
                  log: Callable[[str], None] | None) -> None:
    failed: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    for cfg in configs:
        key = (cfg.model.name, cfg.model.head, tuple(cfg.data.img_size))
        if key in seen:
            continue
        seen.add(key)
        if log is not None:
            log(f"pre-flight: building {key[0]} ({key[1]} head) at {list(key[2])}")
        error = _build_error(cfg)
        if error is not None:
            failed.append(f"{key[0]} with the {key[1]} head at data.img_size {list(key[2])} "
                          f"({error})")
    if failed:
        raise SpecError(f"{spec.path}: {len(failed)} model setting(s) the study can sample do "
                        f"not build: {'; '.join(failed)}; drop them from space: model.name, or "
                        "change data.img_size / model.head so they fit")


def check_models(
    spec: StudySpec,
    *,
    train_dir: str | None = None,
    build: bool = True,
    hub_timeout: float = 3.0,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Check, before trial 0, that every model ``spec`` can sample gets weights and builds.

    Every combination of :func:`model_variants` is made into a trial config on top of the
    study's fixed settings. First (instant) each distinct model's pretrained weights must
    resolve (:func:`trainer.resolve_weights`: a file, the weights folder, timm's local cache or
    a hub that answers within ``hub_timeout`` s; nothing is downloaded); then, when ``build``,
    each distinct (model, head, image size) is created without weights and runs one zero batch
    of the study's ``data.img_size`` on the CPU (about a second per model).

    Args:
        spec: the study.
        train_dir: the data folder the trials will use (the CLI's ``--data``), if overridden.
        build: also build every model and run the tiny batch.
        hub_timeout: seconds to wait for the hub when a model's weights are not local.
        log: called with a line before each build (e.g. ``click.echo``), if given.

    Returns:
        One line per distinct model weights source, e.g.
        ``"mobilenetv2_100: weights from folder /w/mobilenetv2_100.in1k.pth"``, for the log.

    Raises:
        HpoError: some models' weights cannot be found; one line names them, why, and the
            fixes (weights files in HPO_WEIGHTS_DIR, ``model.pretrained: false``, or dropping
            them from the space).
        SpecError: a model setting does not build or run at the study's image size and head;
            one line names each with its error.
    """
    configs = [build_config(spec, settings, output_dir="preflight", train_dir=train_dir)
               for settings in model_variants(spec)]
    sources = _check_weights(spec, configs, hub_timeout)
    if build:
        _check_builds(spec, configs, log)
    return [source.describe() for source in sources]
