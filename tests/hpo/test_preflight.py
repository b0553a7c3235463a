"""Pre-flight before trial 0: weights for every model a study can sample, and each one builds.

Real timm models; HF_HUB_OFFLINE=1 (tests/conftest.py), so the hub is unreachable by definition.
Each message is also checked against docs/errors.md, as tests/test_errors.py does.
"""
from __future__ import annotations

import dataclasses
import re
import time

import pytest
import yaml

from hpo.errors import HpoError, SpecError
from hpo.run.preflight import check_models, model_variants
from hpo.studyfile.files import load_study_spec, parse_study_text
from hpo.studyfile.spec import StudySpec
from tests.conftest import REPO, SHARED
from trainer import ConfigError, ModelConfig, create_model

WEIGHTS = SHARED / "weights"
needs_weights = pytest.mark.skipif(not (WEIGHTS / "mobilenetv2_100.in1k.pth").is_file(),
                                   reason="../shared/weights is not beside the repository")
DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")
STUDIES = sorted(p.stem for p in (REPO / "studies").glob("*.yaml"))


def _in_doc(message: str) -> None:
    fragment = re.sub(r"/\S+/", "", message)  # the doc shows names without temp folders
    assert fragment in DOC, f"docs/errors.md lacks: {fragment}"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _study(tmp_path, fixed: dict, space: dict, name: str = "bad") -> StudySpec:
    text = yaml.safe_dump({"n_trials": 2, "fixed": fixed, "space": space}, sort_keys=False)
    return parse_study_text(text, name=name, path=str(tmp_path / f"{name}.yaml"))


def _models(*names: str) -> dict:
    return {"model.name": {"type": "categorical", "choices": list(names)}}


def _no_hub(monkeypatch):
    """Reaching for the hub fails the test; HF_HUB_OFFLINE is unset so it is not what stops it."""
    import huggingface_hub.constants

    import trainer.weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def hub(*args, **kwargs):
        raise AssertionError("the hub was asked although a weights folder is set")

    monkeypatch.setattr(trainer.weights, "_hub_answers", hub)


def _effnet() -> StudySpec:
    """The shipped effnet study, shown as ``studies/effnet.yaml`` whatever the working folder."""
    text = (REPO / "studies" / "effnet.yaml").read_text()
    return parse_study_text(text, name="effnet", path="studies/effnet.yaml")


def _unpretrained(spec: StudySpec) -> StudySpec:
    model = {**spec.fixed.get("model", {}), "pretrained": False}
    return dataclasses.replace(spec, fixed={**spec.fixed, "model": model})


def test_offline_without_weights_names_every_model_and_the_fixes():
    spec = _effnet()
    start = time.monotonic()
    with pytest.raises(HpoError) as exc:
        check_models(spec)
    assert time.monotonic() - start < 5  # no hub retries
    message = _one_line(exc)
    for name in ("efficientnetv2_rw_t", "efficientnet_b0", "efficientnet_b3",
                 "tf_efficientnetv2_s"):
        assert name in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "efficientnet_b0.pth" in message and "HPO_WEIGHTS_DIR" in message
    assert "set model.pretrained: false in the study's fixed section" in message
    assert "drop them from space: model.name" in message
    _in_doc(message)


def test_only_the_models_without_weights_are_named(tmp_path):
    spec = _study(tmp_path, {"data": {"img_size": [32, 24]}}, _models("resnet18", "test_resnet"))
    with pytest.raises(HpoError) as exc:
        check_models(spec, build=False)
    assert "for 2 model(s) the study can sample (resnet18, test_resnet: none on" in _one_line(exc)


def test_a_weights_folder_without_the_file_is_an_error_never_the_hub(tmp_path, monkeypatch):
    _no_hub(monkeypatch)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "resnet34d.pth").write_bytes(b"")  # a longer name is not a match
    monkeypatch.setenv("HPO_WEIGHTS_DIR", str(folder))
    spec = _effnet()
    with pytest.raises(HpoError) as exc:
        check_models(spec)
    message = _one_line(exc)
    assert f"weights folder {folder} (set by HPO_WEIGHTS_DIR) has no" in message
    assert "never falls back to the hub" in message
    _in_doc(message)

    with pytest.raises(ConfigError) as exc:
        create_model(ModelConfig(name="resnet34"))
    message = _one_line(exc)
    assert message.startswith("no pretrained weights for model resnet34: weights folder")
    assert "put resnet34.pth there" in message
    _in_doc(message)


@needs_weights
def test_the_shared_weights_folder_serves_its_models(tmp_path, monkeypatch):
    _no_hub(monkeypatch)
    monkeypatch.setenv("HPO_WEIGHTS_DIR", str(WEIGHTS))
    space = {**_models("efficientnet_lite0", "mobilenetv2_100"),
             "model.head": {"type": "categorical", "choices": ["single", "multitask"]}}
    spec = _study(tmp_path, {"data": {"img_size": [64, 48]}, "model": {"pretrained": True}},
                  space)
    lines = check_models(spec)
    assert lines == [f"{name}: weights from folder {WEIGHTS / f'{name}.in1k.pth'}"
                     for name in ("efficientnet_lite0", "mobilenetv2_100")]

    spec = _study(tmp_path, {"data": {"img_size": [64, 48]}},
                  _models("mobilenetv2_100", "resnet18"))
    with pytest.raises(HpoError) as exc:
        check_models(spec, build=False)
    message = _one_line(exc)
    assert "(resnet18: weights folder" in message and "mobilenetv2_100" not in message


def test_pretrained_false_needs_no_weights(tmp_path):
    spec = _study(tmp_path, {"data": {"img_size": [32, 24]}, "model": {"pretrained": False}},
                  _models("resnet18", "test_resnet"))
    assert check_models(spec) == ["resnet18: no pretrained weights (pretrained: false)",
                                  "test_resnet: no pretrained weights (pretrained: false)"]


def test_a_model_that_does_not_build_at_the_image_size_is_named(tmp_path):
    spec = _study(tmp_path, {"data": {"img_size": [64, 48]}, "model": {"pretrained": False}},
                  _models("test_resnet", "vit_small_patch16_224"))
    with pytest.raises(SpecError) as exc:
        check_models(spec)
    message = _one_line(exc)
    assert "bad.yaml: 1 model setting(s) the study can sample do not build: " \
           "vit_small_patch16_224 with the single head at data.img_size [64, 48]" in message
    assert "test_resnet" not in message
    _in_doc(message)


def test_variants_follow_conditions_between_model_settings(tmp_path):
    space = {**_models("test_resnet", "test_efficientnet"),
             "model.head": {"type": "categorical", "choices": ["single", "multitask"],
                            "when": {"model.name": ["test_resnet"]}},
             "data.img_size": {"type": "categorical", "choices": [[32, 24], [48, 36]]}}
    spec = _study(tmp_path, {"model": {"pretrained": False}}, space)
    variants = model_variants(spec)
    assert len(variants) == 6
    assert {"model.name": "test_efficientnet", "data.img_size": [48, 36]} in variants
    assert {"model.name": "test_resnet", "model.head": "multitask",
            "data.img_size": [32, 24]} in variants
    seen = []
    check_models(spec, log=seen.append)
    assert len(seen) == 6


@pytest.mark.parametrize("name", STUDIES)
def test_every_shipped_study_builds(name):
    spec = _unpretrained(load_study_spec(str(REPO / "studies" / f"{name}.yaml")))
    lines = check_models(spec)
    assert lines and all(line.endswith("no pretrained weights (pretrained: false)")
                         for line in lines)
