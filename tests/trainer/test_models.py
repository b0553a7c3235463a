from __future__ import annotations

import pytest
import torch

from tests.conftest import SHARED
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
