"""Search space: suggestions from a real in-memory Optuna study build valid trainer configs."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from hpo.errors import SpecError
from hpo.studyfile.files import list_studies, load_study_spec
from hpo.studyfile.parse import parse_study_spec
from hpo.studyfile.samplers import create_pruner, create_sampler
from hpo.studyfile.space import REST_PARAM, build_config, enqueue_params, mix_weight_param, suggest
from hpo.studyfile.spec import StudySpec
from trainer import TrainConfig

REPO_STUDIES = Path(__file__).resolve().parents[2] / "studies"
SGD_FAMILY = ("momentum", "sgd", "nesterov")

# The competition teams' recipes enqueued as trial 0 of each shipped study.
RECIPES = {
    "effnet": {"model": "efficientnetv2_rw_t", "optim": "adam", "lr": 2.5e-4, "batch_size": 128,
               "weights": {"weighted_ce": 1.0}, "mixup": 0.5, "cutmix": 0.0},
    "vit": {"model": "vit_small_r26_s32_224", "optim": "momentum", "lr": 1e-3, "batch_size": 64,
            "weights": {"label_smoothing": 1.0}, "mixup": 0.35, "cutmix": 0.35},
    "resnet": {"model": "resnet34", "optim": "adam", "lr": 1e-4, "batch_size": 128,
               "weights": {"focal": 1.0}, "mixup": 0.25, "cutmix": 0.25},
}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def run_study(spec: StudySpec, n_trials: int, tmp_path: Path):
    """Optimize a dummy objective; return the study and each trial's (params, settings, cfg)."""
    study = optuna.create_study(direction=spec.direction, sampler=create_sampler(spec.sampler),
                                pruner=create_pruner(spec.pruner))
    for params in enqueue_params(spec):
        study.enqueue_trial(params)
    seen = []

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial, spec)
        cfg = build_config(spec, settings, output_dir=str(tmp_path / f"t{trial.number}"))
        seen.append((dict(trial.params), settings, cfg))
        # a made-up score so TPE has something to model
        return -abs(math.log10(cfg.optim.lr) + 3.5) + cfg.data.mixup

    study.optimize(objective, n_trials=n_trials)
    return study, seen


def check_trial(spec: StudySpec, params: dict, settings: dict, cfg: TrainConfig) -> None:
    by_key = {p.key: p for p in spec.space}
    for key, value in settings.items():
        p = by_key[key]
        if p.type == "loss_mix":
            weights = value
            assert cfg.loss.weights == weights
            assert math.isclose(sum(weights.values()), 1.0)
            assert all(w > 0 for w in weights.values())
            assert set(weights) <= {p.mixed, *p.rest}
            assert len(set(weights) - {p.mixed}) <= 1
            assert p.low <= weights.get(p.mixed, 0.0) <= p.high
            assert mix_weight_param(p) in params
            assert (REST_PARAM in params) == (len(p.rest) > 1)
        else:
            # Optuna stores a list choice as "30,58"; the settings and the config hold the list
            stored = ",".join(map(str, value)) if isinstance(value, list) else value
            assert params[key] == stored
            section, _, field = key.rpartition(".")
            node = getattr(cfg, section) if section else cfg
            got = getattr(node, field)
            assert got == value or (isinstance(got, tuple) and (
                got == (value, value) or list(got) == value))
            if p.type in ("float", "int"):
                assert p.low <= value <= p.high
            else:
                assert (tuple(value) if isinstance(value, list) else value) in p.choices
    # conditional parameters appear exactly when their condition holds
    if "optim.momentum" in by_key:
        assert ("optim.momentum" in params) == (params["optim.name"] in SGD_FAMILY)
    # fixed settings survive, the study's split is applied
    assert cfg.data.train_dir == spec.data["train_dir"]
    assert cfg.data.val_fraction == spec.data["val_fraction"]
    assert cfg.epochs == spec.fixed.get("epochs", 10)


@pytest.mark.parametrize("name", list_studies(studies_dir=REPO_STUDIES))
def test_shipped_study_suggests_valid_configs(name, tmp_path):
    spec = load_study_spec(name, studies_dir=REPO_STUDIES)
    study, seen = run_study(spec, 20, tmp_path)
    assert len(study.trials) == 20
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for params, settings, cfg in seen:
        check_trial(spec, params, settings, cfg)
    # trial 0 is exactly the enqueued trial
    settings0 = seen[0][1]
    for key, value in spec.enqueue[0].items():
        assert settings0[key] == value


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_trial_zero_is_the_recipe(name, tmp_path):
    spec = load_study_spec(name, studies_dir=REPO_STUDIES)
    _, seen = run_study(spec, 2, tmp_path)
    cfg = seen[0][2]
    recipe = RECIPES[name]
    assert cfg.model.name == recipe["model"]
    assert cfg.optim.name == recipe["optim"]
    assert cfg.optim.lr == recipe["lr"]
    assert cfg.batch_size == recipe["batch_size"]
    assert cfg.loss.weights == recipe["weights"]
    assert cfg.data.mixup == recipe["mixup"]
    assert cfg.data.cutmix == recipe["cutmix"]
    assert tuple(cfg.data.age_bins) == (30, 60)  # the recipe's, not a sampled threshold
    assert cfg.data.img_size == (224, 224)
    assert cfg.model.pretrained is True


def test_enqueue_params_in_optuna_terms():
    spec = load_study_spec("effnet", studies_dir=REPO_STUDIES)
    assert enqueue_params(spec) == [{
        "model.name": "efficientnetv2_rw_t", "data.age_bins": "30,60", "optim.name": "adam",
        "optim.lr": 2.5e-4, "batch_size": 128, "loss.f1_weight": 0.0, "loss.rest": "weighted_ce",
        "data.mixup": 0.5, "data.cutmix": 0.0,
    }]


SMALL = {
    "n_trials": 3,
    "fixed": {"model": {"name": "test_resnet", "pretrained": False}, "epochs": 2,
              "data": {"img_size": [64, 48], "mixup": 0.1}},
    "data": {"train_dir": "somewhere/train", "split_seed": 3},
    "space": {
        "optim.name": {"type": "categorical", "choices": ["adam", "momentum", "sgd"]},
        "optim.momentum": {"type": "float", "low": 0.8, "high": 0.95, "step": 0.05,
                           "when": {"optim.name": ["momentum", "sgd"]}},
        "optim.warmup_epochs": {"type": "int", "low": 0, "high": 4, "step": 2,
                                "when": {"optim.name": "sgd"}},
        "loss.weights": {"type": "loss_mix", "mixed": "f1", "low": 0.0, "high": 1.0,
                         "rest": ["focal", "weighted_ce"]},
    },
}


def small_spec(**changes) -> StudySpec:
    raw = yaml.safe_load(yaml.safe_dump(SMALL, sort_keys=False))
    raw.update(changes)
    return parse_study_spec(raw, name="small")


@pytest.mark.parametrize(("params", "expected"), [
    ({"optim.name": "adam", "loss.f1_weight": 0.4, "loss.rest": "focal"},
     {"optim.name": "adam", "loss.weights": {"focal": 0.6, "f1": 0.4}}),
    ({"optim.name": "momentum", "optim.momentum": 0.9, "loss.f1_weight": 0.0,
      "loss.rest": "weighted_ce"},
     {"optim.name": "momentum", "optim.momentum": 0.9, "loss.weights": {"weighted_ce": 1.0}}),
    ({"optim.name": "sgd", "optim.momentum": 0.85, "optim.warmup_epochs": 2,
      "loss.f1_weight": 1.0, "loss.rest": "focal"},
     {"optim.name": "sgd", "optim.momentum": 0.85, "optim.warmup_epochs": 2,
      "loss.weights": {"f1": 1.0}}),
])
def test_suggest_with_fixed_trial(params, expected):
    spec = small_spec()
    settings = suggest(optuna.trial.FixedTrial(params), spec)
    assert settings.keys() == expected.keys()
    for key, value in expected.items():
        if key == "loss.weights":
            assert settings[key] == pytest.approx(value)
            assert set(settings[key]) == set(value)  # a zero weight is dropped
        else:
            assert settings[key] == value


def test_conditional_params_follow_their_condition(tmp_path):
    spec = small_spec(n_trials=30)
    _, seen = run_study(spec, 30, tmp_path)
    names = set()
    for params, _, _ in seen:
        names.add(params["optim.name"])
        assert ("optim.momentum" in params) == (params["optim.name"] in ("momentum", "sgd"))
        assert ("optim.warmup_epochs" in params) == (params["optim.name"] == "sgd")
        if "optim.momentum" in params:
            assert any(math.isclose(params["optim.momentum"], v) for v in (0.8, 0.85, 0.9, 0.95))
        if "optim.warmup_epochs" in params:
            assert params["optim.warmup_epochs"] in (0, 2, 4)
    assert names == {"adam", "momentum", "sgd"}


def test_single_rest_needs_no_rest_param():
    raw = yaml.safe_load(yaml.safe_dump(SMALL, sort_keys=False))
    raw["space"]["loss.weights"]["rest"] = "ce"
    raw["enqueue"] = [{"loss.weights": {"ce": 0.75, "f1": 0.25}}, {"loss.weights": {"f1": 1.0}}]
    spec = parse_study_spec(raw, name="small")
    assert spec.space[-1].rest == ("ce",)
    trial = optuna.trial.FixedTrial({"optim.name": "adam", "loss.f1_weight": 0.25})
    assert suggest(trial, spec)["loss.weights"] == {"ce": 0.75, "f1": 0.25}
    assert enqueue_params(spec) == [{"loss.f1_weight": 0.25}, {"loss.f1_weight": 1.0}]


def test_enqueue_params_leave_out_unknown_rest():
    spec = small_spec(enqueue=[{"optim.name": "sgd", "optim.momentum": 0.9,
                                "loss.weights": {"f1": 1.0}}])
    assert enqueue_params(spec) == [{"optim.name": "sgd", "optim.momentum": 0.9,
                                     "loss.f1_weight": 1.0}]


def test_build_config_layers(tmp_path):
    spec = small_spec()
    cfg = build_config(spec, {"optim.name": "sgd", "optim.momentum": 0.8, "data.mixup": 0.3,
                              "loss.weights": {"focal": 1.0}}, output_dir=str(tmp_path / "t0"))
    assert cfg.model.name == "test_resnet" and cfg.epochs == 2  # fixed
    assert cfg.data.img_size == (64, 48)
    assert cfg.data.train_dir == "somewhere/train" and cfg.data.split_seed == 3  # data section
    assert cfg.data.mixup == 0.3  # the trial beats fixed
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.8
    assert cfg.loss.weights == {"focal": 1.0}
    assert cfg.output_dir == str(tmp_path / "t0")
    assert cfg.seed == 0
    cfg = build_config(spec, {}, output_dir="out", train_dir="elsewhere/train", seed=7)
    assert cfg.data.train_dir == "elsewhere/train" and cfg.seed == 7
    assert spec.data["train_dir"] == "somewhere/train"  # the spec is not modified


def test_build_config_rejects_invalid_settings():
    spec = small_spec()
    with pytest.raises(SpecError, match=r"^<string>: trial settings .*data.mixup \+ "
                                        r"data.cutmix is 1.6, but must be <= 1"):
        build_config(spec, {"data.mixup": 0.8, "data.cutmix": 0.8}, output_dir="out")
    with pytest.raises(SpecError, match=r"unknown key 'optim.lrr'"):
        build_config(spec, {"optim.lrr": 0.1}, output_dir="out")


AGE_BINS = [[30, 60], [30, 59], [30, 58]]


def age_spec(**changes) -> StudySpec:
    raw = yaml.safe_load(yaml.safe_dump(SMALL, sort_keys=False))
    raw["sampler"] = {"name": "random", "seed": 0}
    raw["space"]["data.age_bins"] = {"type": "categorical", "choices": AGE_BINS}
    raw["space"]["data.img_size"] = {"type": "categorical", "choices": [[64, 48], 32]}
    raw["space"]["early_stop_patience"] = {"type": "int", "low": 1, "high": 3,
                                           "when": {"data.age_bins": [30, 58]}}
    raw["fixed"]["data"].pop("img_size")
    raw["enqueue"] = [{"data.age_bins": [30, 59]},
                      {"data.age_bins": [30, 58], "early_stop_patience": 2,
                       "data.img_size": [64, 48]}]
    raw.update(changes)
    return parse_study_spec(raw, name="ages")


def test_age_bins_choices_parse_enqueue_and_build(tmp_path):
    spec = age_spec()
    # Optuna's choices are scalars: a list choice travels as "30,59"
    assert enqueue_params(spec) == [
        {"data.age_bins": "30,59"},
        {"data.age_bins": "30,58", "early_stop_patience": 2, "data.img_size": "64,48"},
    ]
    study, seen = run_study(spec, 16, tmp_path)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for params, settings, cfg in seen:
        check_trial(spec, params, settings, cfg)
        assert params["data.age_bins"] in ("30,60", "30,59", "30,58")
        assert isinstance(settings["data.age_bins"], list)
        assert list(cfg.data.age_bins) == settings["data.age_bins"]
        assert ("early_stop_patience" in params) == (cfg.data.age_bins == (30, 58))
        assert cfg.data.img_size in ((64, 48), (32, 32))
        yaml.safe_dump(settings)  # the settings stay plain data (config files, attributes)
    # the enqueued trials come first, decoded back to lists
    assert seen[0][1]["data.age_bins"] == [30, 59] and seen[0][2].data.age_bins == (30, 59)
    assert seen[1][1]["data.age_bins"] == [30, 58] and seen[1][2].early_stop_patience == 2
    assert seen[1][1]["data.img_size"] == [64, 48] and seen[1][2].data.img_size == (64, 48)
    assert {tuple(cfg.data.age_bins) for _, _, cfg in seen} == {tuple(b) for b in AGE_BINS}
    # the split is the study's whatever the thresholds: every trial validates the same people
    assert {(c.data.val_fraction, c.data.split_seed, c.data.fold) for _, _, c in seen} == \
        {(spec.data["val_fraction"], 3, None)}


@pytest.mark.parametrize(("encoded", "expected"), [("30,60", (30, 60)), ("30,59", (30, 59)),
                                                   ("30,58", (30, 58))])
def test_suggest_decodes_list_choices(encoded, expected, tmp_path):
    spec = age_spec()
    params = {"optim.name": "adam", "loss.f1_weight": 0.5, "loss.rest": "focal",
              "data.age_bins": encoded, "data.img_size": 32, "early_stop_patience": 3}
    settings = suggest(optuna.trial.FixedTrial(params), spec)
    assert settings["data.age_bins"] == list(expected)
    assert settings["data.img_size"] == 32
    assert ("early_stop_patience" in settings) == (expected == (30, 58))
    cfg = build_config(spec, settings, output_dir=str(tmp_path / "t"))
    assert cfg.data.age_bins == expected and cfg.data.img_size == (32, 32)


def test_study_of_age_bins_through_an_optuna_storage(tmp_path):
    # enqueue_trial and suggest_categorical round-trip the encoded choice through a real storage
    spec = age_spec(enqueue=[{"data.age_bins": [30, 58]}])
    storage = f"sqlite:///{tmp_path / 'ages.db'}"
    study = optuna.create_study(storage=storage, study_name="ages",
                                sampler=create_sampler(spec.sampler))
    for params in enqueue_params(spec):
        study.enqueue_trial(params)
    bins = []

    def objective(trial: optuna.Trial) -> float:
        cfg = build_config(spec, suggest(trial, spec), output_dir=str(tmp_path / "t"))
        bins.append(cfg.data.age_bins)
        return float(cfg.data.age_bins[1])

    study.optimize(objective, n_trials=3)
    assert bins[0] == (30, 58)
    assert study.trials[0].params["data.age_bins"] == "30,58"
    assert study.trials[0].distributions["data.age_bins"].choices == ("30,60", "30,59", "30,58")
