"""Fuzzing the study loader: whatever a file holds, it yields a StudySpec or a SpecError.

And a spec that loads is usable: its sampler and pruner build, and every trial it suggests
(enqueued ones included) builds a valid trainer config.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo.errors import SpecError
from hpo.studyfile.files import load_study_spec
from hpo.studyfile.parse import parse_study_spec
from hpo.studyfile.samplers import create_pruner, create_sampler
from hpo.studyfile.space import build_config, enqueue_params, suggest
from hpo.studyfile.spec import StudySpec

REPO_STUDIES = Path(__file__).resolve().parents[2] / "studies"
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VOCAB = [
    "description", "metric", "direction", "n_trials", "timeout", "sampler", "pruner", "data",
    "fixed", "space", "enqueue", "type", "low", "high", "choices", "when", "name", "log", "step",
    "mixed", "rest", "seed", "multivariate", "group", "constant_liar", "n_startup_trials",
    "n_warmup_steps", "interval_steps", "min_resource", "max_resource", "reduction_factor",
    "qmc_type", "train_dir", "val_fraction", "split_seed", "fold", "n_folds", "model", "optim",
    "loss", "epochs", "batch_size", "weights", "img_size", "mixup", "cutmix", "model.name",
    "optim.name", "optim.lr", "optim.momentum", "batch_size", "data.mixup", "data.cutmix",
    "loss.weights", "data.augmentation", "model.head", "output_dir", "pretrained",
]
WORDS = [
    "float", "int", "categorical", "loss_mix", "tpe", "random", "cmaes", "qmc", "median",
    "hyperband", "successive_halving", "none", "f1", "focal", "ce", "weighted_ce",
    "label_smoothing", "adam", "momentum", "sgd", "resnet34", "test_resnet", "basic", "teams",
    "auto", "maximize", "minimize", "accuracy", "sobol", "1e-3", "nan",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=300),
    st.integers(),
    st.sampled_from([2**63, -(2**64), 10**40]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from(WORDS),
    st.text(max_size=8),
)
keys = st.one_of(st.sampled_from(VOCAB), st.text(max_size=6))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=30,
)
top_level = st.one_of(st.dictionaries(st.sampled_from(VOCAB[:11]), documents, max_size=8),
                      documents)

TOKENS = [
    "metric", "space", "sampler", "pruner", "data", "fixed", "enqueue", "n_trials", "timeout",
    "type", "low", "high", "choices", "when", "optim.lr", "model.name", ": ", ":", "\n", "  ",
    "- ", "{", "}", "[", "]", ", ", "'", '"', "#", "&a ", "*a", "? ", "<<: ", "!!binary ",
    "!!set ", "!!python/object:os.system ", "!!float ", "!!int ", "2021-02-30", "2021-02-03",
    ".nan", ".inf", "-.inf", "null", "~", "true", "1e-3", "1.0e-3", "0x1F", "0o17", "1_000",
    "190:20:30", "9" * 40, "\t", "\x00", "\x85", "\ufeff", "|", ">", "---", "...", "%YAML 1.1",
]
yamlish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=40).map(
    "".join)


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "study.yaml"


def check_usable(spec: StudySpec) -> None:
    """A spec that loads must run: sampler, pruner, enqueued and suggested trials all build."""
    try:
        sampler = create_sampler(spec.sampler)
    except SpecError:
        assert spec.sampler.name == "cmaes"  # only when the cmaes package is missing
        sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(direction=spec.direction, sampler=sampler,
                                pruner=create_pruner(spec.pruner))
    for params in enqueue_params(spec):
        study.enqueue_trial(params)
    for _ in range(len(spec.enqueue) + 2):
        trial = study.ask()
        cfg = build_config(spec, suggest(trial, spec), output_dir="out")
        study.tell(trial, float(cfg.optim.lr))


def parse_or_spec_error(raw: Any) -> StudySpec | None:
    try:
        spec = parse_study_spec(raw, name="fuzz", path="fuzz.yaml")
    except SpecError as exc:
        assert str(exc).startswith("fuzz.yaml") and "\n" not in str(exc)
        return None
    assert isinstance(spec, StudySpec)
    return spec


def load_or_spec_error(path: Path) -> StudySpec | None:
    try:
        spec = load_study_spec(path)
    except SpecError as exc:
        assert "\n" not in str(exc)
        return None
    assert isinstance(spec, StudySpec)
    return spec


@pytest.fixture(autouse=True)
def _quiet():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's out-of-range and independent-sampling notes
        yield
    optuna.logging.set_verbosity(level)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), yamlish))
def test_random_text(study_file, text):
    study_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_spec_error(study_file)


@FUZZ
@given(raw=top_level)
def test_random_structures(study_file, raw):
    parse_or_spec_error(raw)
    study_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    load_or_spec_error(study_file)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


SHIPPED = {name: yaml.safe_load((REPO_STUDIES / f"{name}.yaml").read_text())
           for name in ("smoke", "effnet")}
replacements = st.one_of(scalars, st.sampled_from(WORDS), documents,
                         st.sampled_from(["DELETE", "DELETE", "DELETE"]))


@FUZZ
@given(data=st.data())
def test_mutated_studies(data):
    """Change a few values of a shipped study; the result loads and runs, or fails cleanly."""
    raw = copy.deepcopy(SHIPPED[data.draw(st.sampled_from(sorted(SHIPPED)))])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(raw)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        node = raw
        for key in path[:-1]:
            node = node[key]
        value = data.draw(replacements)
        if value == "DELETE":
            del node[path[-1]]
        else:
            node[path[-1]] = value
    spec = parse_or_spec_error(raw)
    if spec is not None:
        check_usable(spec)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_valid_numeric_spaces_run(data):
    """Random but valid ranges and conditions: loads, and every suggestion builds a config."""
    low = data.draw(st.floats(1e-6, 1e-2))
    high = data.draw(st.floats(low, 1.0))
    mix_high = data.draw(st.floats(0.0, 1.0))
    raw = {
        "n_trials": 3,
        "sampler": {"name": data.draw(st.sampled_from(["tpe", "random", "qmc"])), "seed": 0},
        "fixed": {"model": {"name": "test_resnet", "pretrained": False}},
        "space": {
            "optim.name": {"type": "categorical", "choices": ["adam", "momentum"]},
            "optim.lr": {"type": "float", "low": low, "high": high,
                         "log": data.draw(st.booleans())},
            "optim.momentum": {"type": "float", "low": 0.0, "high": 0.99,
                               "when": {"optim.name": "momentum"}},
            "epochs": {"type": "int", "low": 1, "high": data.draw(st.integers(1, 50))},
            "data.mixup": {"type": "float", "low": 0.0, "high": mix_high},
            "data.cutmix": {"type": "float", "low": 0.0, "high": 1.0 - mix_high},
            "loss.weights": {"type": "loss_mix", "mixed": "f1",
                             "rest": data.draw(st.sampled_from(["ce", ["ce", "focal"]]))},
        },
        "enqueue": [{"optim.name": "momentum", "optim.momentum": 0.5, "optim.lr": high,
                     "data.mixup": mix_high, "data.cutmix": 1.0 - mix_high}],
    }
    spec = parse_study_spec(raw, name="valid")
    check_usable(spec)
