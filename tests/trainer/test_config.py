from __future__ import annotations

import pytest

from trainer.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    replace_path,
    save_config,
)
from trainer.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict({"data": {"crop": [320, 256]}, "loss": {"weights": {"f1": 0.4,
                                                                               "focal": 0.6}}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.data.crop == (320, 256)
    assert config_to_dict(again)["loss"]["weights"] == {"f1": 0.4, "focal": 0.6}


def test_yaml_number_strings_and_scalar_sizes():
    cfg = config_from_dict({"optim": {"lr": "1e-4"}, "data": {"img_size": 96}})
    assert cfg.optim.lr == 1e-4 and cfg.data.img_size == (96, 96)


def test_replace_path():
    cfg = replace_path(TrainConfig(), "optim.lr", 0.5)
    assert cfg.optim.lr == 0.5
    cfg = replace_path(cfg, "loss.weights", {"f1": 1.0})
    assert cfg.loss.weights == {"f1": 1.0}
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        replace_path(cfg, "optim.lrr", 1)


@pytest.mark.parametrize(("raw", "message"), [
    ({"optim": {"lrr": 1}}, r"unknown key 'optim.lrr' \(did you mean 'lr'\?\); valid keys: "),
    ({"epoch": 3}, r"unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    ({"data": 3}, r"data must be a mapping"),
    ({"epochs": "ten"}, r"epochs is 'ten', but must be an integer"),
    ({"channels_last": "yes"}, r"channels_last is 'yes', but must be true or false"),
    ({"data": {"img_size": [1, 2, 3]}}, r"data.img_size is \[1, 2, 3\], but must be a list of 2"),
    ({"optim": {"lr": -1}}, r"optim.lr is -1.0, but must be > 0"),
    ({"optim": {"lr": float("nan")}}, r"optim.lr is nan, but must be a finite number"),
    ({"data": {"mixup": 0.7, "cutmix": 0.5}}, r"data.mixup \+ data.cutmix is 1.2, but must be"),
    ({"data": {"val_fraction": 1}}, r"data.val_fraction is 1.0, but must be between 0 and 1"),
    ({"data": {"fold": 5}}, r"data.fold is 5, but must be in 0..4"),
    ({"data": {"age_bins": [60, 30]}}, r"data.age_bins is \[60, 30\]"),
    ({"precision": "fp8"}, r"precision is 'fp8', but must be one of: auto, bf16, fp16, fp32"),
    ({"model": {"name": "resnet3"}}, r"model.name is 'resnet3', which is not a timm model "
                                     r"\(did you mean .*resnet"),
    ({"optim": {"name": "adamm"}}, r"optim.name is 'adamm', an unknown optimizer \(did you mean"),
    ({"data": {"augmentation": "heavy"}}, r"data.augmentation is 'heavy', but must be one of: "
                                          r"basic, none, teams"),
    ({"loss": {"weights": {"focall": 1}}}, r"unknown loss 'focall'; valid losses: ce, f1, focal"),
    ({"device": "tpu"}, r"device is 'tpu', but must be auto, cpu, cuda or cuda:N"),
])
def test_bad_values_name_the_key_and_rule(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train_dir: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line \d+, column \d+"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
