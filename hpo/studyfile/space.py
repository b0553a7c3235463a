"""Search space: a study's parameters -> Optuna suggestions -> a trainer :class:`TrainConfig`.

Optuna parameter names are the dotted trainer keys (``optim.lr``, ``batch_size``), so the
dashboard and ``study.trials_dataframe()`` read like the study file. A ``loss_mix`` parameter is
searched as two Optuna parameters: ``loss.<mixed>_weight`` (a float in ``[low, high]``) and, when
``rest`` names more than one loss, ``loss.rest`` (categorical). The trainer receives
``loss.weights = {rest: 1 - w, mixed: w}`` with a zero weight dropped.

Optuna's categorical choices are scalars, so a list choice (``data.age_bins: [30, 58]``) is
handed to Optuna as the string ``"30,58"`` and turned back into the list ``[30, 58]`` in the
trial's settings; enqueued trials are encoded the same way.
"""
from __future__ import annotations

__all__ = ["REST_PARAM", "build_config", "enqueue_params", "mix_weight_param", "suggest"]

from typing import Any

import optuna

from hpo.errors import SpecError
from hpo.studyfile._checks import MISSING, match_choice
from hpo.studyfile._trainer_keys import config_raw
from hpo.studyfile.spec import ParamSpec, StudySpec
from trainer import ConfigError, TrainConfig, config_from_dict

REST_PARAM = "loss.rest"


def mix_weight_param(param: ParamSpec) -> str:
    """The Optuna name of a loss_mix parameter's weight, e.g. ``loss.f1_weight``.

    Args:
        param: a ``loss_mix`` parameter.

    Returns:
        ``loss.<mixed>_weight``.
    """
    return f"loss.{param.mixed}_weight"


def _mix(mixed: str, rest: str, weight: float) -> dict[str, float]:
    weights = {rest: 1.0 - weight, mixed: weight}
    return {name: w for name, w in weights.items() if w > 0}


def _to_optuna(choice: Any) -> Any:
    """A choice as Optuna stores it: a list choice as ``"30,58"``, a scalar as itself."""
    if isinstance(choice, (list, tuple)):
        return ",".join(str(v) for v in choice)
    return choice


def _from_optuna(param: ParamSpec, value: Any) -> Any:
    """The choice Optuna's ``value`` stands for: a list choice as a plain list."""
    for choice in param.choices or ():
        if match_choice(value, [_to_optuna(choice)]) is not MISSING:
            return list(choice) if isinstance(choice, tuple) else choice
    return value


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Suggest every active parameter of the study's space, in file order.

    A parameter with ``when`` is suggested only if the categorical parameters it names took one
    of the listed values in this trial, so Optuna never sees inactive parameters.

    Args:
        trial: the running trial.
        spec: the study.

    Returns:
        The dotted trainer settings for this trial, e.g.
        ``{"optim.lr": 0.001, "loss.weights": {"focal": 0.6, "f1": 0.4}}``; a list choice
        comes back as a list (``{"data.age_bins": [30, 58]}``), though Optuna records it as
        ``"30,58"``.
    """
    settings: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for p in spec.space:
        if not p.is_active(chosen):
            continue
        if p.type == "float":
            settings[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "int":
            settings[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high),
                                                step=int(p.step or 1), log=p.log)
        elif p.type == "categorical":
            encoded = trial.suggest_categorical(p.key, [_to_optuna(c) for c in p.choices or ()])
            settings[p.key] = chosen[p.key] = _from_optuna(p, encoded)
        else:
            rest = list(p.rest or ())
            weight = trial.suggest_float(mix_weight_param(p), p.low, p.high)
            if len(rest) > 1:
                rest_name = trial.suggest_categorical(REST_PARAM, rest)
            else:
                rest_name = rest[0]
            settings[p.key] = _mix(str(p.mixed), str(rest_name), weight)
    return settings


def build_config(
    spec: StudySpec,
    settings: dict[str, Any],
    *,
    output_dir: str,
    train_dir: str | None = None,
    seed: int | None = None,
) -> TrainConfig:
    """The trainer config of one trial.

    Layers, later winning: the study's ``fixed`` section, its ``data`` split (``train_dir``
    replaced by the argument when given), the trial's ``settings``, then ``output_dir`` and
    ``seed``.

    Args:
        spec: the study.
        settings: dotted trainer settings, as :func:`suggest` returns them.
        output_dir: the trial's output folder.
        train_dir: overrides the study's ``data.train_dir`` (the CLI's ``--data``).
        seed: overrides the trainer seed when given.

    Returns:
        The validated, frozen config.

    Raises:
        SpecError: the combined settings make an invalid config (the trainer's message).
    """
    data = dict(spec.data)
    if train_dir is not None:
        data["train_dir"] = train_dir
    raw = config_raw(spec.fixed, data, settings)
    raw["output_dir"] = output_dir
    if seed is not None:
        raw["seed"] = seed
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise SpecError(f"{spec.path}: trial settings {settings}: {exc}") from None


def enqueue_params(spec: StudySpec) -> list[dict[str, Any]]:
    """The study's enqueued trials as Optuna parameter dicts, for ``study.enqueue_trial``.

    ``loss.weights`` becomes the loss_mix parameters, e.g. ``{weighted_ce: 1.0}`` with a space
    mixing ``f1`` into ``[focal, weighted_ce, ce]`` gives
    ``{"loss.f1_weight": 0.0, "loss.rest": "weighted_ce"}``. A list choice becomes Optuna's
    string for it (``data.age_bins: [30, 59]`` -> ``"30,59"``). Parameters a trial leaves out are
    sampled as usual; so is ``loss.rest`` when the trial's weights are all on the mixed loss.

    Args:
        spec: the study.

    Returns:
        One dict per enqueued trial, in file order.
    """
    by_key = {p.key: p for p in spec.space}
    out: list[dict[str, Any]] = []
    for trial in spec.enqueue:
        params: dict[str, Any] = {}
        for key, value in trial.items():
            p = by_key[key]
            if p.type != "loss_mix":
                params[key] = _to_optuna(value) if p.type == "categorical" else value
                continue
            rest = list(p.rest or ())
            params[mix_weight_param(p)] = float(value.get(p.mixed, 0.0))
            used = [name for name in value if name != p.mixed]
            if len(rest) > 1 and used:
                params[REST_PARAM] = used[0]
        out.append(params)
    return out
