"""Optuna samplers and pruners by name: one record per registered thing, like timm's registry.

A record holds the name a study file uses, the options it accepts (each with its checker), the
Optuna class that builds it, the package it needs and any rule across options. The study-file
parser and the factories validate through the same records, so a name or option is declared
once::

    sampler: {name: tpe, seed: 0, multivariate: true}   ->   create_sampler(spec.sampler)
"""
from __future__ import annotations

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Registered",
    "check_options",
    "create_pruner",
    "create_sampler",
    "list_pruners",
    "list_samplers",
]

import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna

from hpo.errors import SpecError
from hpo.studyfile._checks import Ctx, boolean, choose, hint, integer
from hpo.studyfile.spec import PrunerSpec, SamplerSpec

Kind = Literal["sampler", "pruner"]
# (ctx, where, value) -> the normalised value; raises SpecError
Checker = Callable[[Ctx, str, Any], Any]
_SEED_LIMIT = 2**32  # numpy's RandomState, under every optuna sampler, takes seeds below 2**32


@dataclass(frozen=True)
class Registered:
    """One sampler or pruner a study file may name.

    Attributes:
        name: the name in study files (``tpe``, ``median``).
        build: the Optuna class (or any callable) called with the checked options.
        options: option name -> checker, in the order messages list them.
        requires: a package the builder needs, checked before building (``cmaes``).
        rule: a check across the checked options, ``rule(ctx, options)``.
    """

    name: str
    build: Callable[..., Any]
    options: Mapping[str, Checker] = field(default_factory=dict)
    requires: str | None = None
    rule: Callable[[Ctx, Mapping[str, Any]], None] | None = None


def _seed(ctx: Ctx, where: str, value: Any) -> int | None:
    return None if value is None else integer(
        ctx, where, value, minimum=0, maximum=_SEED_LIMIT - 1,
        rule=f"an integer in 0..{_SEED_LIMIT - 1} (or null)")


def _flag(ctx: Ctx, where: str, value: Any) -> bool:
    return boolean(ctx, where, value)


def _at_least(minimum: int, rule: str = "") -> Checker:
    return lambda ctx, where, value: integer(ctx, where, value, minimum=minimum, rule=rule)


def _resource(*, auto: bool) -> Checker:
    def check(ctx: Ctx, where: str, value: Any) -> int | str:
        if auto and value == "auto":
            return "auto"
        rule = "an integer >= 1 or 'auto'" if auto else "an integer >= 1"
        return integer(ctx, where, value, minimum=1, rule=rule)

    return check


def _qmc_type(ctx: Ctx, where: str, value: Any) -> str:
    return choose(ctx, where, value, ("sobol", "halton"), "qmc_type")


def _tpe_rule(ctx: Ctx, options: Mapping[str, Any]) -> None:
    if options.get("group") and options.get("multivariate") is False:
        raise ctx.error("", "group is true but multivariate is false; group needs the "
                            "multivariate TPE, so set multivariate: true (or group: false)")


def _hyperband_rule(ctx: Ctx, options: Mapping[str, Any]) -> None:
    low, high = options.get("min_resource", 1), options.get("max_resource", "auto")
    if isinstance(low, int) and isinstance(high, int) and high < low:
        raise ctx.error("", f"max_resource is {high}, but must be >= min_resource ({low}); "
                            "set max_resource to the number of epochs or 'auto'")


def _registry(*records: Registered) -> dict[str, Registered]:
    return {r.name: r for r in records}


SAMPLERS: dict[str, Registered] = _registry(
    Registered("tpe", optuna.samplers.TPESampler, {
        "seed": _seed, "multivariate": _flag, "group": _flag, "constant_liar": _flag,
        "n_startup_trials": _at_least(0)}, rule=_tpe_rule),
    Registered("random", optuna.samplers.RandomSampler, {"seed": _seed}),
    Registered("cmaes", optuna.samplers.CmaEsSampler,
               {"seed": _seed, "n_startup_trials": _at_least(0)}, requires="cmaes"),
    Registered("qmc", optuna.samplers.QMCSampler,
               {"seed": _seed, "qmc_type": _qmc_type, "scramble": _flag}),
)
PRUNERS: dict[str, Registered] = _registry(
    Registered("median", optuna.pruners.MedianPruner, {
        "n_startup_trials": _at_least(0), "n_warmup_steps": _at_least(0),
        "interval_steps": _at_least(1)}),
    Registered("successive_halving", optuna.pruners.SuccessiveHalvingPruner, {
        "min_resource": _resource(auto=True),
        "reduction_factor": _at_least(2, "an integer >= 2 (e.g. 3)"),
        "min_early_stopping_rate": _at_least(0)}),
    Registered("hyperband", optuna.pruners.HyperbandPruner, {
        "min_resource": _resource(auto=False), "max_resource": _resource(auto=True),
        "reduction_factor": _at_least(2, "an integer >= 2 (e.g. 3)")}, rule=_hyperband_rule),
    Registered("none", optuna.pruners.NopPruner),
)
_REGISTRIES: dict[str, dict[str, Registered]] = {"sampler": SAMPLERS, "pruner": PRUNERS}
_FALLBACK = {"sampler": "tpe", "pruner": "median"}


def list_samplers() -> list[str]:
    """Names of the samplers a study file may use.

    Returns:
        The names, in registry order (``tpe`` first).
    """
    return list(SAMPLERS)


def list_pruners() -> list[str]:
    """Names of the pruners a study file may use.

    Returns:
        The names, in registry order (``median`` first).
    """
    return list(PRUNERS)


def check_options(kind: Kind, name: Any, options: Mapping[str, Any], *,
                  path: str = "") -> dict[str, Any]:
    """Validate a sampler's or pruner's name and options against its record.

    Args:
        kind: ``sampler`` or ``pruner``.
        name: the registered name.
        options: the options, as a study file gives them.
        path: the study file, put before ``<kind>:`` in messages (none for a hand-made spec).

    Returns:
        The options, normalised (``3.0`` -> ``3``), ready for the builder.

    Raises:
        SpecError: unknown name (listing the valid ones), unknown option (listing the valid
            ones), a value its checker rejects, or a rule across options broken.
    """
    ctx = Ctx(f"{path}: {kind}" if path else kind)
    record = _record(ctx, kind, name)
    valid = list(record.options)
    for key in options:
        if key not in record.options:
            listing = ", ".join(valid) if valid else "none"
            raise ctx.error("", f"unknown option '{key}' for {kind} '{name}'"
                                f"{hint(str(key), valid)}; valid options: {listing}")
    out = {key: record.options[key](ctx, key, value) for key, value in options.items()}
    if record.rule is not None:
        record.rule(ctx, out)
    return out


def _record(ctx: Ctx, kind: Kind, name: Any) -> Registered:
    registry = _REGISTRIES[kind]
    return registry[choose(ctx, "name", name, list(registry), kind)]


def _create(kind: Kind, name: str, options: Mapping[str, Any]) -> Any:
    checked = check_options(kind, name, options)
    record = _REGISTRIES[kind][name]
    if record.requires and importlib.util.find_spec(record.requires) is None:
        raise SpecError(f"{kind}: {name} needs the {record.requires} package, which is not "
                        f"installed; run `pip install {record.requires}` or use {kind} "
                        f"{_FALLBACK[kind]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return record.build(**checked)


def create_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler a study file names.

    Args:
        spec: the study's sampler (``spec.sampler``).

    Returns:
        A new sampler; optuna's experimental-feature warnings are silenced.

    Raises:
        SpecError: unknown name or option, or ``cmaes`` without the ``cmaes`` package.
    """
    return _create("sampler", spec.name, spec.options)


def create_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    """Build the Optuna pruner a study file names.

    Args:
        spec: the study's pruner (``spec.pruner``).

    Returns:
        A new pruner (``NopPruner`` for ``none``); experimental warnings are silenced.

    Raises:
        SpecError: unknown name or option.
    """
    return _create("pruner", spec.name, spec.options)
