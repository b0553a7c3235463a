from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import torch

import trainer.weights
from tests.conftest import SHARED
from trainer import WeightsSource, resolve_weights
from trainer.config import ModelConfig
from trainer.errors import ConfigError
from trainer.models import MultiTaskHead, create_model, find_weights, normalization

WEIGHTS = SHARED / "weights"
needs_weights = pytest.mark.skipif(not (WEIGHTS / "mobilenetv2_100.in1k.pth").is_file(),
                                   reason="../shared/weights is not beside the repository")


def test_single_head_has_18_outputs():
    model = create_model(ModelConfig(name="test_resnet", pretrained=False)).eval()
    assert model(torch.rand(2, 3, 32, 24)).shape == (2, 18)


def test_multitask_head_is_a_normalised_joint_distribution():
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="test_resnet", pretrained=False, head="multitask"))
    assert isinstance(model, MultiTaskHead)
    out = model.eval()(torch.rand(3, 3, 32, 24))
    assert out.shape == (3, 18)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    # marginals of the joint equal the per-task softmaxes of the backbone's 8 outputs
    x = torch.rand(1, 3, 32, 24)
    z = model.backbone(x)
    p = model(x).exp().view(3, 2, 3)
    assert torch.allclose(p.sum((1, 2)), torch.softmax(z[0, 0:3], 0), atol=1e-5)
    assert torch.allclose(p.sum((0, 2)), torch.softmax(z[0, 3:5], 0), atol=1e-5)
    assert torch.allclose(p.sum((0, 1)), torch.softmax(z[0, 5:8], 0), atol=1e-5)


def test_multitask_label_order_matches_encode_label():
    head = MultiTaskHead(torch.nn.Identity())
    z = torch.full((1, 8), -20.0)
    z[0, 2] = z[0, 3 + 1] = z[0, 5 + 0] = 20.0  # mask 2 (not worn), female, young
    assert int(head(z).argmax()) == 2 * 6 + 1 * 3 + 0


@needs_weights
@pytest.mark.parametrize("name", ["mobilenetv2_100", "efficientnet_lite0"])
def test_offline_weights_from_a_folder(name, monkeypatch):
    blank = create_model(ModelConfig(name=name, pretrained=False))
    monkeypatch.setenv("HPO_WEIGHTS_DIR", str(WEIGHTS))
    loaded = create_model(ModelConfig(name=name, pretrained=True))
    sd = torch.load(next(WEIGHTS.glob(f"{name}*.pth")), weights_only=True)
    key = next(k for k in sd if k.endswith("conv_stem.weight") or k.startswith("conv_stem"))
    assert torch.equal(loaded.state_dict()[key], sd[key])
    assert not torch.equal(blank.state_dict()[key], sd[key])
    assert normalization(loaded)[0] == pytest.approx((0.485, 0.456, 0.406))


@needs_weights
def test_weights_dir_setting_and_explicit_file():
    assert find_weights("mobilenetv2_100", str(WEIGHTS)).name == "mobilenetv2_100.in1k.pth"
    assert find_weights("mobilenetv2_1", str(WEIGHTS)) is None  # no prefix matches
    model = create_model(ModelConfig(name="mobilenetv2_100", head="multitask",
                                     pretrained_file=str(WEIGHTS / "mobilenetv2_100.in1k.pth")))
    assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 18)


@needs_weights
def test_weights_that_do_not_fit():
    with pytest.raises(ConfigError, match="do not fit model resnet18"):
        create_model(ModelConfig(name="resnet18",
                                 pretrained_file=str(WEIGHTS / "mobilenetv2_100.in1k.pth")))


def test_model_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.name is 'resnet_34', which is not a timm model"):
        create_model(ModelConfig(name="resnet_34", pretrained=False))
    with pytest.raises(ConfigError, match="pretrained_file .*nope.pth does not exist"):
        create_model(ModelConfig(name="test_resnet", pretrained_file=str(tmp_path / "nope.pth")))
    with pytest.raises(ConfigError, match="weights folder .*missing does not exist"):
        find_weights("resnet34", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"weights folder .*missing does not exist \(set by "
                                          r"model.weights_dir\); fix model.weights_dir"):
        create_model(ModelConfig(name="resnet34", weights_dir=str(tmp_path / "missing")))


def _online(monkeypatch, answer):
    """HF_HUB_OFFLINE unset, and the hub probe replaced: ``answer`` is what it returns."""
    calls = []

    def hub(pcfg, timeout):
        calls.append(pcfg.hf_hub_id)
        return (answer, "") if answer else (None, "ConnectError: no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(trainer.weights, "_hub_answers", hub)
    return calls


def test_pretrained_false_needs_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("HPO_WEIGHTS_DIR", str(tmp_path / "absent"))  # not even looked at
    source = resolve_weights(ModelConfig(name="resnet18", pretrained=False))
    assert source == WeightsSource(model="resnet18", kind="none")
    assert source.require() is source and source.local_file is None


def test_offline_without_local_weights_fails_fast_with_one_line():
    source = resolve_weights(ModelConfig(name="resnet18"))
    assert source.kind == "missing" and "HF_HUB_OFFLINE is set" in source.reason
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        create_model(ModelConfig(name="resnet18"))
    assert time.monotonic() - start < 5  # no hub retries
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("no pretrained weights for model resnet18: none on this machine")
    assert "put resnet18.pth (a timm state dict) in a folder and set HPO_WEIGHTS_DIR" in message
    assert message.endswith("or set model.pretrained: false")


def test_hub_is_used_only_when_it_answers(monkeypatch):
    calls = _online(monkeypatch, "timm/resnet18.a1_in1k/model.safetensors")
    source = resolve_weights(ModelConfig(name="resnet18"))
    assert (source.kind, source.location) == ("hub", "timm/resnet18.a1_in1k/model.safetensors")
    assert calls == ["timm/resnet18.a1_in1k"]
    _online(monkeypatch, None)
    source = resolve_weights(ModelConfig(name="resnet18"), hub_timeout=3)
    assert source.kind == "missing"
    assert source.reason.endswith("the hub cannot serve them (ConnectError: no route to host; "
                                  "time-out 3 s)")


def test_a_weights_folder_without_the_file_never_falls_back_to_the_hub(monkeypatch, tmp_path):
    calls = _online(monkeypatch, "timm/resnet18.a1_in1k/model.safetensors")
    (tmp_path / "resnet18d.pth").write_bytes(b"")
    monkeypatch.setenv("HPO_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as exc:
        create_model(ModelConfig(name="resnet18"))
    assert str(exc.value).startswith(
        f"no pretrained weights for model resnet18: weights folder {tmp_path} (set by "
        "HPO_WEIGHTS_DIR) has no <name>[.*]{.pth,.pt,.bin,.safetensors} file")
    assert "never falls back to the hub; put resnet18.pth there" in str(exc.value)
    source = resolve_weights(ModelConfig(name="resnet18", weights_dir=str(tmp_path)))
    assert source.kind == "missing" and "(set by model.weights_dir)" in source.reason
    assert calls == []


def _fake_hf_cache(root, repo: str, filename: str, state: dict) -> None:
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    torch.save(state, snapshot / filename)


def test_timms_local_cache_is_found_and_loaded_offline(monkeypatch, tmp_path):
    torch.manual_seed(1)
    state = create_model(ModelConfig(name="test_resnet", pretrained=False)).state_dict()
    _fake_hf_cache(tmp_path, "timm/test_resnet.r160_in1k", "pytorch_model.bin", state)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    source = resolve_weights(ModelConfig(name="test_resnet"))
    assert source.kind == "cache" and source.local_file.endswith("pytorch_model.bin")
    torch.manual_seed(2)
    model = create_model(ModelConfig(name="test_resnet"))
    key = "conv1.0.weight"
    assert torch.equal(model.state_dict()[key], state[key])
    assert "weights from cache" in source.describe()


@needs_weights
def test_folder_and_file_sources(monkeypatch):
    lite0 = WEIGHTS / "efficientnet_lite0.in1k.pth"
    source = resolve_weights(ModelConfig(name="efficientnet_lite0", weights_dir=str(WEIGHTS)))
    assert (source.kind, source.local_file) == ("folder", str(lite0))
    source = resolve_weights(ModelConfig(name="resnet18", pretrained=False,
                                         pretrained_file=str(lite0)))
    assert (source.kind, source.local_file) == ("file", str(lite0))  # a file means pretrained
    monkeypatch.setenv("HPO_WEIGHTS_DIR", str(WEIGHTS))
    source = resolve_weights(ModelConfig(name="mobilenetv2_100.ra_in1k"))  # the tag is ignored
    assert source.local_file == str(WEIGHTS / "mobilenetv2_100.in1k.pth")
