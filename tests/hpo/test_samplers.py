"""Samplers and pruners: every registered name builds, and every bad name or option fails in
one line that lists the valid ones."""
from __future__ import annotations

import importlib.util
import inspect
import warnings

import optuna
import pytest

from hpo.errors import SpecError
from hpo.studyfile.samplers import (
    PRUNERS,
    SAMPLERS,
    check_options,
    create_pruner,
    create_sampler,
    list_pruners,
    list_samplers,
)
from hpo.studyfile.spec import PrunerSpec, SamplerSpec

HAS_CMAES = importlib.util.find_spec("cmaes") is not None


def test_registries_are_listed():
    assert list_samplers() == ["tpe", "random", "cmaes", "qmc"]
    assert list_pruners() == ["median", "successive_halving", "hyperband", "none"]
    assert all(SAMPLERS[name].name == name for name in list_samplers())
    assert all(PRUNERS[name].name == name for name in list_pruners())


@pytest.mark.parametrize("record", [*SAMPLERS.values(), *PRUNERS.values()],
                         ids=lambda r: r.name)
def test_every_option_is_a_builder_keyword(record):
    """An option declared in the registry must be a keyword its Optuna class takes."""
    accepted = inspect.signature(record.build).parameters
    assert set(record.options) <= set(accepted), set(record.options) - set(accepted)


def test_every_registered_name_builds_with_defaults():
    for name in list_samplers():
        if name == "cmaes" and not HAS_CMAES:
            with pytest.raises(SpecError, match=r"^sampler: cmaes needs the cmaes package, "
                                                r"which is not installed; run `pip install "
                                                r"cmaes` or use sampler tpe$"):
                create_sampler(SamplerSpec(name, {}))
            continue
        assert isinstance(create_sampler(SamplerSpec(name, {})), optuna.samplers.BaseSampler)
    for name in list_pruners():
        assert isinstance(create_pruner(PrunerSpec(name, {})), optuna.pruners.BasePruner)


@pytest.mark.parametrize("name", list_samplers())
def test_create_sampler(name):
    options = {"seed": 1}
    spec = SamplerSpec(name, options)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            with pytest.raises(SpecError, match=r"pip install cmaes"):
                create_sampler(spec)
            return
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        sampler = create_sampler(spec)
    expected = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler}
    assert isinstance(sampler, expected[name])


def test_create_tpe_with_all_options():
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        sampler = create_sampler(SamplerSpec("tpe", {"seed": 0, "multivariate": True,
                                                     "group": True, "constant_liar": True,
                                                     "n_startup_trials": 4}))
    assert isinstance(sampler, optuna.samplers.TPESampler)


@pytest.mark.parametrize("name", list_pruners())
def test_create_pruner(name):
    options = {
        "median": {"n_startup_trials": 2, "n_warmup_steps": 1, "interval_steps": 1},
        "successive_halving": {"min_resource": "auto", "reduction_factor": 3,
                               "min_early_stopping_rate": 0},
        "hyperband": {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3},
        "none": {},
    }[name]
    expected = {"median": optuna.pruners.MedianPruner,
                "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
                "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)
        assert isinstance(create_pruner(PrunerSpec(name, options)), expected[name])


def test_factories_validate_hand_made_specs():
    with pytest.raises(SpecError, match=r"'grid' is not a known sampler; use one of: tpe"):
        create_sampler(SamplerSpec("grid", {}))
    with pytest.raises(SpecError, match=r"unknown option 'sed' for sampler 'tpe'"):
        create_sampler(SamplerSpec("tpe", {"sed": 1}))
    with pytest.raises(SpecError, match=r"reduction_factor: 1 is too small"):
        create_pruner(PrunerSpec("hyperband", {"reduction_factor": 1}))
    with pytest.raises(SpecError, match=r"is not a known pruner"):
        create_pruner(PrunerSpec("percentile", {}))


@pytest.mark.parametrize(("kind", "name", "options", "message"), [
    ("sampler", "grid", {}, "sampler: name: 'grid' is not a known sampler; use one of: tpe, "
                            "random, cmaes, qmc"),
    ("sampler", "rnadom", {}, "sampler: name: 'rnadom' is not a known sampler (did you mean "
                              "'random'?); use one of: tpe, random, cmaes, qmc"),
    ("pruner", 3, {}, "pruner: name: 3 is not a known pruner; use one of: median, "
                      "successive_halving, hyperband, none"),
    ("sampler", "random", {"n_startup_trials": 1}, "sampler: unknown option 'n_startup_trials' "
                                                   "for sampler 'random'; valid options: seed"),
    ("pruner", "none", {"n_startup_trials": 1}, "pruner: unknown option 'n_startup_trials' for "
                                                "pruner 'none'; valid options: none"),
    ("pruner", "median", {"n_warmup": 1}, "pruner: unknown option 'n_warmup' for pruner "
                                          "'median' (did you mean 'n_warmup_steps'?); valid "
                                          "options: n_startup_trials, n_warmup_steps, "
                                          "interval_steps"),
    ("sampler", "tpe", {"seed": 2**32}, "sampler: seed: 4294967296 is too large; it must be an "
                                        "integer in 0..4294967295 (or null)"),
    ("sampler", "qmc", {"scramble": "yes"}, "sampler: scramble: 'yes' is not true or false; "
                                            "write true or false"),
    ("pruner", "hyperband", {"min_resource": 3, "max_resource": 2},
     "pruner: max_resource is 2, but must be >= min_resource (3); set max_resource to the "
     "number of epochs or 'auto'"),
])
def test_messages(kind, name, options, message):
    with pytest.raises(SpecError) as info:
        check_options(kind, name, options)
    assert str(info.value) == message
    with pytest.raises(SpecError) as info:
        check_options(kind, name, options, path="studies/x.yaml")
    assert str(info.value) == f"studies/x.yaml: {message}"


def test_check_options_normalises():
    assert check_options("sampler", "tpe", {"seed": 3.0, "n_startup_trials": 2.0}) == {
        "seed": 3, "n_startup_trials": 2}
    assert check_options("sampler", "tpe", {"seed": None}) == {"seed": None}
    assert check_options("pruner", "successive_halving", {"min_resource": "auto"}) == {
        "min_resource": "auto"}
