"""Study specs: the shipped studies hold what they should; every invalid study fails with a
one-line SpecError that names the key, the rule and the fix."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from hpo.errors import SpecError
from hpo.studyfile.files import list_studies, load_study_spec
from hpo.studyfile.parse import parse_study_spec
from hpo.studyfile.samplers import create_pruner, create_sampler
from hpo.studyfile.spec import SPLIT_KEYS, PrunerSpec, SamplerSpec, StudySpec

REPO_STUDIES = Path(__file__).resolve().parents[2] / "studies"


BASE: dict[str, Any] = {
    "n_trials": 5,
    "fixed": {"model": {"name": "test_resnet", "pretrained": False},
              "data": {"img_size": [64, 48]}},
    "space": {
        "optim.name": {"type": "categorical", "choices": ["adam", "momentum"]},
        "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "optim.momentum": {"type": "float", "low": 0.8, "high": 0.99,
                           "when": {"optim.name": "momentum"}},
        "batch_size": {"type": "categorical", "choices": [16, 32]},
        "data.mixup": {"type": "float", "low": 0.0, "high": 0.5},
        "data.cutmix": {"type": "float", "low": 0.0, "high": 0.5},
        "loss.weights": {"type": "loss_mix", "mixed": "f1", "low": 0.0, "high": 1.0,
                         "rest": ["focal", "ce"]},
    },
    "enqueue": [{"optim.name": "adam", "optim.lr": 1.0e-3, "loss.weights": {"ce": 1.0}}],
}


def write(tmp_path: Path, content: Any, name: str = "study") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def mutated(*edits: tuple[tuple[str, ...], Any]) -> dict[str, Any]:
    """BASE with each (key path, value) set; the value ``DELETE`` removes the key."""
    raw = copy.deepcopy(BASE)
    for keys, value in edits:
        node = raw
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return raw


DELETE = object()


# ---------------------------------------------------------------------------------------------
# Shipped studies


@pytest.mark.parametrize("name", list_studies(studies_dir=REPO_STUDIES))
def test_shipped_study_loads(name):
    spec = load_study_spec(name, studies_dir=REPO_STUDIES)
    assert isinstance(spec, StudySpec)
    assert spec.name == name
    assert spec.n_trials or spec.timeout
    assert set(spec.data) == set(SPLIT_KEYS)
    assert spec.space and len(spec.enqueue) >= 1
    assert isinstance(create_sampler(spec.sampler), optuna.samplers.BaseSampler)
    assert isinstance(create_pruner(spec.pruner), optuna.pruners.BasePruner)


@pytest.mark.parametrize("name", ["effnet", "vit", "resnet"])
def test_competition_studies_share_the_recipe_settings(name):
    spec = load_study_spec(name, studies_dir=REPO_STUDIES)
    assert spec.sampler.name == "tpe"
    assert spec.sampler.options["multivariate"] is True
    assert spec.sampler.options["group"] is True
    assert spec.sampler.options["constant_liar"] is True
    assert spec.pruner.name in ("median", "hyperband")
    assert spec.data["train_dir"] == "data/train"
    keys = {p.key: p for p in spec.space}
    assert keys["optim.lr"].log
    assert keys["optim.momentum"].when == {"optim.name": ("momentum", "sgd")}
    assert keys["data.mixup"].high == keys["data.cutmix"].high == 0.5
    assert keys["loss.weights"].mixed == "f1"


def test_smoke_study_is_tiny():
    spec = load_study_spec("smoke", studies_dir=REPO_STUDIES)
    assert spec.data["train_dir"] == "demo/train"
    assert spec.fixed["model"] == {"name": "test_efficientnet", "pretrained": False}
    assert spec.fixed["data"]["img_size"] == [64, 48]
    assert spec.fixed["epochs"] == 4 and spec.n_trials == 6
    assert spec.pruner == PrunerSpec("median", {"n_startup_trials": 2, "n_warmup_steps": 1,
                                                "interval_steps": 1})
    assert spec.sampler == SamplerSpec("tpe", {"seed": 0, "n_startup_trials": 3})


# ---------------------------------------------------------------------------------------------
# Errors, each with its message


ERRORS = [
    # top level
    ("unknown-top-key", [(("metirc",), "f1")],
     r"unknown top-level key 'metirc' \(did you mean 'metric'\?\); valid keys: description, "
     r"metric"),
    ("n_trials-type", [(("n_trials",), "ten")], r"n_trials: 'ten' is not an integer >= 1"),
    ("n_trials-low", [(("n_trials",), 0)], r"n_trials: 0 is too small; it must be an "
                                           r"integer >= 1"),
    ("n_trials-bool", [(("n_trials",), True)], r"n_trials: True is not an integer"),
    ("timeout-neg", [(("timeout",), -5)], r"timeout: -5 is not > 0"),
    ("timeout-inf", [(("timeout",), float("inf"))], r"timeout: inf is not a finite number"),
    ("no-budget", [(("n_trials",), DELETE)], r"neither n_trials nor timeout is set.*set "
                                             r"n_trials"),
    ("metric", [(("metric",), "auc")], r"metric: 'auc' is not a known metric; use one of: f1, "
                                       r"accuracy"),
    ("direction", [(("direction",), "maximise")], r"direction: 'maximise' is not a known "
     r"direction "
                                             r"\(did you mean 'maximize'\?\)"),
    ("description-type", [(("description",), ["a"])], r"description: \['a'\] is not a string"),
    # sampler / pruner
    ("sampler-name", [(("sampler",), {"name": "tpee"})],
     r"sampler: name: 'tpee' is not a known sampler \(did you mean 'tpe'\?\); use one of: tpe"),
    ("sampler-key", [(("sampler",), {"name": "tpe", "seeed": 1})],
     r"sampler: unknown option 'seeed' for sampler 'tpe' \(did you mean 'seed'\?\); valid "
     r"options: seed, multivariate"),
    ("sampler-key-per-name", [(("sampler",), {"name": "random", "n_startup_trials": 1})],
     r"unknown option 'n_startup_trials' for sampler 'random'; valid options: seed$"),
    ("sampler-seed", [(("sampler",), {"name": "tpe", "seed": -1})],
     r"sampler: seed: -1 is too small; it must be an integer in 0\.\.4294967295"),
    ("sampler-group", [(("sampler",), {"multivariate": False, "group": True})],
     r"group is true but multivariate is false.*set multivariate: true"),
    ("sampler-qmc-type", [(("sampler",), {"name": "qmc", "qmc_type": "lhs"})],
     r"sampler: qmc_type: 'lhs' is not a known qmc_type; use one of: sobol, halton"),
    ("sampler-type", [(("sampler",), [1])], r"sampler: must be a mapping.*got a list"),
    ("pruner-key", [(("pruner",), {"name": "median", "n_warmup": 1})],
     r"pruner: unknown option 'n_warmup' for pruner 'median' \(did you mean "
     r"'n_warmup_steps'\?\)"),
    ("pruner-rf", [(("pruner",), {"name": "successive_halving", "reduction_factor": 1})],
     r"pruner: reduction_factor: 1 is too small; it must be an integer >= 2"),
    ("pruner-hb-range", [(("pruner",), {"name": "hyperband", "min_resource": 4,
                                        "max_resource": 2})],
     r"max_resource is 2, but must be >= min_resource \(4\)"),
    ("pruner-hb-auto", [(("pruner",), {"name": "hyperband", "min_resource": "auto"})],
     r"min_resource: 'auto' is not an integer >= 1"),
    ("pruner-bool", [(("pruner",), {"name": "median", "interval_steps": 0})],
     r"interval_steps: 0 is too small; it must be an integer >= 1"),
    # data
    ("data-key", [(("data",), {"train_dir": "x", "img_size": 64})],
     r"data: unknown key 'img_size'; valid keys: train_dir, val_fraction, split_seed, fold, "
     r"n_folds"),
    ("data-range", [(("data",), {"val_fraction": 1.5})],
     r"data: data.val_fraction is 1.5, but must be between 0 and 1"),
    ("data-fold", [(("data",), {"fold": 5, "n_folds": 5})], r"data.fold is 5, but must be in 0"),
    ("data-type", [(("data",), {"train_dir": 3})], r"data.train_dir is 3, but must be a string"),
    # fixed
    ("fixed-key", [(("fixed", "optim"), {"lrr": 1})],
     r"fixed: unknown key 'optim.lrr' \(did you mean 'lr'\?\); valid keys: name, lr"),
    ("fixed-top", [(("fixed", "epoch"), 3)], r"fixed: unknown key 'epoch' \(did you mean "
                                             r"'epochs'\?\)"),
    ("fixed-section-type", [(("fixed", "optim"), 3)], r"fixed: optim: must be a mapping"),
    ("fixed-split", [(("fixed", "data", "val_fraction"), 0.3)],
     r"fixed: data.val_fraction belongs in the study's data section"),
    ("fixed-output", [(("fixed", "output_dir"), "x")], r"output_dir is set per trial"),
    ("fixed-model", [(("fixed", "model", "name"), "resnet35")],
     r"fixed: model.name is 'resnet35', which is not a timm model \(did you mean .*resnet34"),
    ("fixed-aug", [(("fixed", "data", "augmentation"), "fancy")],
     r"fixed: data.augmentation is 'fancy', but must be one of: basic, none, teams"),
    ("fixed-loss", [(("fixed", "loss"), {"weights": {"focall": 1.0}})],
     r"fixed: unknown loss 'focall'; valid losses: ce, f1"),
    ("fixed-opt", [(("fixed", "optim"), {"name": "adamm"})],
     r"fixed: optim.name is 'adamm', an unknown optimizer"),
    ("fixed-and-searched", [(("fixed", "batch_size"), 8)],
     r"space: batch_size is both fixed and searched"),
    # space keys
    ("space-key", [(("space", "optim.lrr"), {"type": "float", "low": 1, "high": 2})],
     r"space: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\): not a trainer setting; "
     r"valid keys: batch_size, .*optim.lr,"),
    ("space-split", [(("space", "data.fold"), {"type": "int", "low": 0, "high": 1})],
     r"data.fold cannot be searched"),
    ("space-holdout", [(("space", "data.holdout"), {"type": "categorical",
                                                   "choices": [True, False]})],
     r"space: data.holdout cannot be set in a study: a trial needs validation people to "
     r"report its metric; hpo refit --full trains the models of every person"),
    ("fixed-holdout", [(("fixed", "data", "holdout"), False)],
     r"fixed: data.holdout cannot be set in a study"),
    ("space-empty", [(("space",), {})], r"space: is empty"),
    ("space-null", [(("space",), None)], r"space: is empty"),
    ("dist-type", [(("space", "optim.lr", "type"), "floa")],
     r"space: optim.lr: type: 'floa' is not a known distribution type \(did you mean "
     r"'float'\?\)"),
    ("dist-no-type", [(("space", "optim.lr", "type"), DELETE)], r"optim.lr: has no type"),
    ("dist-key", [(("space", "optim.lr", "hgih"), 1)],
     r"space: optim.lr: unknown key 'hgih' \(did you mean 'high'\?\); valid keys: type, low, "
     r"high, log, step, when"),
    ("dist-key-categorical", [(("space", "batch_size", "low"), 1)],
     r"space: batch_size: unknown key 'low'; valid keys: type, choices, when"),
    ("dist-not-mapping", [(("space", "optim.lr"), 0.1)], r"space: optim.lr: must be a mapping"),
    # ranges
    ("low-gt-high", [(("space", "optim.lr", "low"), 0.1)],
     r"space: optim.lr: low \(0.1\) is greater than high \(0.01\), but must be <= high; swap"),
    ("log-low", [(("space", "optim.lr", "low"), 0)],
     r"space: optim.lr: log is true but low is 0; a log range needs low > 0"),
    ("log-step", [(("space", "optim.lr", "step"), 0.001)],
     r"log is true and step is 0.001; a log range cannot have a step"),
    ("step-neg", [(("space", "data.mixup", "step"), -0.1)], r"step: -0.1 is not > 0"),
    ("step-multiple", [(("space", "data.mixup", "step"), 0.3)],
     r"high - low \(0.5\) is not a multiple of step \(0.3\); set high to 0.3"),
    ("low-type", [(("space", "optim.lr", "low"), "small")],
     r"space: optim.lr: low: 'small' is not a number"),
    ("log-type", [(("space", "optim.lr", "log"), "yes")], r"log: 'yes' is not true or false"),
    ("no-high", [(("space", "optim.lr", "high"), DELETE)], r"optim.lr: has no high"),
    ("int-float", [(("space", "optim.warmup_epochs"), {"type": "int", "low": 0, "high": 2.5})],
     r"optim.warmup_epochs: high: 2.5 is not an integer"),
    ("int-log-low", [(("space", "optim.warmup_epochs"), {"type": "int", "low": 0, "high": 2,
                                                         "log": True})],
     r"log is true but low is 0; a log range needs low >= 1"),
    ("float-on-int", [(("space", "epochs"), {"type": "float", "low": 1, "high": 2})],
     r"epochs is an integer setting, but type is float; use type: int or categorical"),
    ("float-on-str", [(("space", "device"), {"type": "float", "low": 1, "high": 2})],
     r"device is not a number setting"),
    ("trainer-range", [(("space", "optim.momentum", "high"), 1.0)],
     r"space: optim.momentum: optim.momentum is 1.0, but must be in \[0, 1\)"),
    ("choices-empty", [(("space", "batch_size", "choices"), [])],
     r"batch_size: choices: \[\] is not a non-empty list"),
    ("choices-nested", [(("space", "batch_size", "choices"), [[16]])],
     r"choices\[0\]: \[16\] is not a single value"),
    ("choices-dup", [(("space", "batch_size", "choices"), [16, 16])], r"16 is listed twice"),
    ("choices-type", [(("space", "batch_size", "choices"), [16, "big"])],
     r"batch_size is 'big', but must be an integer"),
    # list choices, for list settings (data.age_bins, data.img_size) only
    ("choices-list-words", [(("space", "data.age_bins"),
                             {"type": "categorical", "choices": [[30, 60], [30, "old"]]})],
     r"space: data.age_bins: choices\[1\]: \[30, 'old'\] is not a list of numbers; .*"
     r"e.g. \[30, 58\]"),
    ("choices-list-nested", [(("space", "data.age_bins"),
                              {"type": "categorical", "choices": [[30, 60], [[30], 58]]})],
     r"choices\[1\]: \[\[30\], 58\] is not a list of numbers"),
    ("choices-list-empty", [(("space", "data.age_bins"),
                             {"type": "categorical", "choices": [[30, 60], []]})],
     r"choices\[1\]: \[\] is not a list of numbers"),
    ("choices-list-mapping", [(("space", "data.age_bins"),
                               {"type": "categorical", "choices": [[30, 60], {"old": 58}]})],
     r"choices\[1\]: \{'old': 58\} is not a single value; choices must be scalars or "
     r"lists of numbers"),
    ("choices-list-order", [(("space", "data.age_bins"),
                             {"type": "categorical", "choices": [[30, 60], [60, 30]]})],
     r"space: data.age_bins: data.age_bins is \[60, 30\], but must be two ages"),
    ("choices-list-length", [(("space", "data.age_bins"),
                              {"type": "categorical", "choices": [[30, 60], [30, 45, 60]]})],
     r"data.age_bins is \(30, 45, 60\), but must be a list of 2 values"),
    ("choices-list-dup", [(("space", "data.age_bins"),
                           {"type": "categorical", "choices": [[30, 60], [30.0, 60]]})],
     r"data.age_bins: choices: \(30.0, 60\) is listed twice"),
    ("choices-list-mapping-scalar-key", [(("space", "batch_size", "choices"), [{"a": 1}])],
     r"choices\[0\]: \{'a': 1\} is not a single value; choices must be scalars$"),
    ("enqueue-list-choice", [(("space", "data.age_bins"),
                              {"type": "categorical", "choices": [[30, 60], [30, 58]]}),
                             (("enqueue",), [{"data.age_bins": [30, 57]}])],
     r"enqueue\[0\]: data.age_bins: \[30, 57\] is not among the choices "
     r"\(\[30, 60\], \[30, 58\]\)"),
    ("when-list-choice", [(("space", "data.age_bins"),
                           {"type": "categorical", "choices": [[30, 60], [30, 58]]}),
                          (("space", "early_stop_patience"),
                           {"type": "int", "low": 1, "high": 3,
                            "when": {"data.age_bins": [30, 59]}})],
     r"when: data.age_bins: \[30, 59\] is not among the choices of data.age_bins "
     r"\(\[30, 60\], \[30, 58\]\)"),
    # registries
    ("unknown-model", [(("fixed", "model"), {"pretrained": False}),
                       (("space", "model.name"), {"type": "categorical",
                                                  "choices": ["resnet34", "efficentnet_b3"]})],
     r"space: model.name: model.name is 'efficentnet_b3', which is not a timm model \(did you "
     r"mean efficientnet_b3"),
    ("unknown-optimizer", [(("space", "optim.name", "choices"), ["adam", "momentum", "adamm"])],
     r"space: optim.name: optim.name is 'adamm', an unknown optimizer"),
    ("unknown-augmentation", [(("space", "data.augmentation"),
                               {"type": "categorical", "choices": ["basic", "fancy"]})],
     r"data.augmentation is 'fancy', but must be one of: basic, none, teams"),
    ("unknown-loss-rest", [(("space", "loss.weights", "rest"), ["focall"])],
     r"space: loss.weights: rest\[0\]: unknown loss 'focall' \(did you mean 'focal'\?\); "
     r"valid losses: ce, f1, focal, label_smoothing, weighted_ce"),
    ("unknown-loss-mixed", [(("space", "loss.weights", "mixed"), "focals")],
     r"loss.weights: mixed: unknown loss 'focals' \(did you mean 'focal'\?\)"),
    ("loss-rest-mixed", [(("space", "loss.weights", "rest"), ["f1", "ce"])],
     r"'f1' is also the mixed loss"),
    ("loss-range", [(("space", "loss.weights", "high"), 1.5)],
     r"loss.weights: high: 1.5 is not a weight in \[0, 1\]"),
    ("loss-mix-key", [(("space", "loss.gamma"), {"type": "loss_mix", "mixed": "f1",
                                                 "rest": "ce"})],
     r"type loss_mix does not fit loss.gamma"),
    ("loss-weights-float", [(("space", "loss.weights"), {"type": "float", "low": 0, "high": 1})],
     r"type float does not fit loss.weights"),
    # mixup + cutmix
    ("mix-highs", [(("space", "data.mixup", "high"), 0.6)],
     r"data.mixup can reach 0.6 and data.cutmix 0.5, 1.1 together, but their sum must be <= 1"
     r".*lower data.mixup's high and data.cutmix's high"),
    ("mix-fixed", [(("space", "data.cutmix"), DELETE), (("fixed", "data", "cutmix"), 0.7)],
     r"data.mixup can reach 0.5 and data.cutmix 0.7.*data.cutmix's fixed value"),
    ("mix-choices", [(("space", "data.mixup"), {"type": "categorical", "choices": [0.2, 0.8]})],
     r"data.mixup can reach 0.8"),
    # when
    ("when-unknown", [(("space", "optim.momentum", "when"), {"optim.nam": "momentum"})],
     r"when: 'optim.nam' is not a parameter defined above optim.momentum in space \(did you "
     r"mean 'optim.name'\?\)"),
    ("when-later", [(("space", "optim.name", "when"), {"batch_size": 16})],
     r"space: optim.name: when: batch_size comes after optim.name in space.*move optim.name "
     r"below batch_size"),
    ("when-not-categorical", [(("space", "data.cutmix", "when"), {"optim.lr": 0.1})],
     r"'optim.lr' is a float parameter, but conditions can only refer to categorical ones"),
    ("when-value", [(("space", "optim.momentum", "when"), {"optim.name": "sgd"})],
     r"when: optim.name: 'sgd' is not among the choices of optim.name \(adam, momentum\)"),
    ("when-empty", [(("space", "optim.momentum", "when"), {})], r"when: is empty"),
    # enqueue
    ("enqueue-range", [(("enqueue",), [{"optim.lr": 0.5}])],
     r"enqueue\[0\]: optim.lr: 0.5 is outside the range \[0.0001, 0.01\]"),
    ("enqueue-choice", [(("enqueue",), [{"batch_size": 64}])],
     r"enqueue\[0\]: batch_size: 64 is not among the choices \(16, 32\)"),
    ("enqueue-unknown", [(("enqueue",), [{"optim.lrr": 0.001}])],
     r"enqueue\[0\]: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
    ("enqueue-not-searched", [(("enqueue",), [{"epochs": 2}])],
     r"epochs is not searched in this study"),
    ("enqueue-condition", [(("enqueue",), [{"optim.name": "adam", "optim.momentum": 0.9}])],
     r"optim.momentum is set, but its condition \(optim.name in \['momentum'\]\) does not hold"),
    ("enqueue-condition-missing", [(("enqueue",), [{"optim.momentum": 0.9}])],
     r"optim.momentum depends on optim.name \(when\), but the trial does not set optim.name"),
    ("enqueue-loss-name", [(("enqueue",), [{"loss.weights": {"weighted_ce": 1.0}}])],
     r"'weighted_ce' is not part of this study's loss mix"),
    ("enqueue-loss-sum", [(("enqueue",), [{"loss.weights": {"ce": 0.5, "f1": 0.4}}])],
     r"the weights sum to 0.9, but must sum to 1"),
    ("enqueue-loss-two", [(("enqueue",), [{"loss.weights": {"ce": 0.5, "focal": 0.5}}])],
     r"gives weight to ce, focal, but the mix takes f1 plus one of the rest"),
    ("enqueue-mix", [(("enqueue",), [{"data.mixup": 0.5, "data.cutmix": 0.5}]),
                     (("space", "data.mixup", "high"), 0.5)], None),
    ("enqueue-type", [(("enqueue",), {"optim.lr": 0.1})], r"enqueue: .* is not a list"),
]


@pytest.mark.parametrize(("edits", "pattern"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_messages(tmp_path, edits, pattern):
    path = write(tmp_path, mutated(*edits))
    if pattern is None:  # a valid edge case among the errors
        load_study_spec(path)
        return
    with pytest.raises(SpecError, match=pattern) as info:
        load_study_spec(path)
    message = str(info.value)
    assert message.startswith(str(path.name)) or message.startswith(str(path)), message
    assert "\n" not in message


def test_conditional_param_may_also_be_fixed(tmp_path):
    spec = load_study_spec(write(tmp_path, mutated((("fixed", "optim"), {"momentum": 0.5}))))
    assert spec.fixed["optim"] == {"momentum": 0.5}


def test_defaults_and_normalisation(tmp_path):
    raw = mutated((("sampler",), "random"), (("pruner",), {"name": "none"}))
    raw["space"]["optim.lr"].update(low="1e-4", high="1e-2")  # PyYAML's reading of 1e-4
    raw["enqueue"] = [{"optim.lr": "1e-3", "batch_size": 32.0}]
    spec = load_study_spec(write(tmp_path, raw))
    assert spec.metric == "f1" and spec.direction == "maximize" and spec.description == ""
    assert spec.timeout is None
    assert spec.sampler == SamplerSpec("random", {})
    assert spec.pruner == PrunerSpec("none", {})
    assert spec.data == {"train_dir": "data/train", "val_fraction": 0.2, "split_seed": 0,
                         "fold": None, "n_folds": 5}
    lr = next(p for p in spec.space if p.key == "optim.lr")
    assert (lr.low, lr.high, lr.log, lr.step) == (1e-4, 1e-2, True, None)
    assert spec.enqueue == ({"optim.lr": 1e-3, "batch_size": 32},)
    assert type(spec.enqueue[0]["batch_size"]) is int


AGE_BINS_TEXT = """
n_trials: 4
fixed:
  model: {name: test_resnet, pretrained: false}
space:
  data.age_bins: {type: categorical, choices: [[30, 60], [30, 59], [30, 58]]}
  data.img_size: {type: categorical, choices: [64, [32, 24]]}
  early_stop_patience: {type: int, low: 1, high: 3, when: {data.age_bins: [30, 58]}}
  data.mixup: {type: float, low: 0.0, high: 0.5, when: {data.age_bins: [[30, 59], [30, 58]]}}
enqueue:
  - {data.age_bins: [30, 59], data.img_size: [32, 24], data.mixup: 0.25}
  - {data.age_bins: [30, 58], early_stop_patience: 2}
"""


def test_list_choices_for_list_settings(tmp_path):
    spec = load_study_spec(write(tmp_path, AGE_BINS_TEXT))
    by_key = {p.key: p for p in spec.space}
    assert by_key["data.age_bins"].choices == ((30, 60), (30, 59), (30, 58))
    assert by_key["data.img_size"].choices == (64, (32, 24))
    # a condition on a list choice: one list is one value, a list of lists several
    assert by_key["early_stop_patience"].when == {"data.age_bins": ((30, 58),)}
    assert by_key["data.mixup"].when == {"data.age_bins": ((30, 59), (30, 58))}
    assert by_key["data.mixup"].is_active({"data.age_bins": [30, 59]})
    assert not by_key["data.mixup"].is_active({"data.age_bins": [30, 60]})
    # enqueued trials keep list choices as plain lists, as the file wrote them
    assert spec.enqueue == (
        {"data.age_bins": [30, 59], "data.img_size": [32, 24], "data.mixup": 0.25},
        {"data.age_bins": [30, 58], "early_stop_patience": 2},
    )
    assert yaml.safe_load(yaml.safe_dump(list(spec.enqueue))) == list(spec.enqueue)


def test_list_choice_condition_must_hold_in_enqueued_trial(tmp_path):
    text = AGE_BINS_TEXT.replace("data.age_bins: [30, 58], early_stop_patience: 2",
                                 "data.age_bins: [30, 60], early_stop_patience: 2")
    with pytest.raises(SpecError, match=r"enqueue\[1\]: early_stop_patience is set, but its "
                                        r"condition \(data.age_bins in \[\[30, 58\]\]\)"):
        load_study_spec(write(tmp_path, text))


def test_timeout_only_budget(tmp_path):
    spec = load_study_spec(write(tmp_path, mutated((("n_trials",), None),
                                                   (("timeout",), 3600))))
    assert spec.n_trials is None and spec.timeout == 3600.0


def test_parse_study_spec_directly():
    spec = parse_study_spec(copy.deepcopy(BASE), name="inline")
    assert spec.path == "<string>" and spec.name == "inline"
    with pytest.raises(SpecError, match=r"^<string>: unknown top-level key"):
        parse_study_spec({**BASE, "oops": 1}, name="inline")
    with pytest.raises(SpecError, match=r"is a set, not a plain"):
        parse_study_spec({**BASE, "description": {1, 2}}, name="inline")
    cyclic: list[Any] = []
    cyclic.append(cyclic)  # YAML can no longer make one (no aliases), Python code still can
    raw = copy.deepcopy(BASE)
    raw["space"]["batch_size"]["choices"] = cyclic
    with pytest.raises(SpecError, match=r"choices\[0\]: .* is not a single value"):
        parse_study_spec(raw, name="inline")


def test_parse_leaves_text_empty():
    assert parse_study_spec(copy.deepcopy(BASE), name="inline").text == ""
