"""Models: any timm backbone with an 18-way head or a mask/gender/age multi-task head."""
from __future__ import annotations

import logging

import timm
import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.errors import ConfigError
from trainer.layout import NUM_CLASSES
from trainer.model_names import check_model_name
from trainer.weights import WeightsSource, find_weights, resolve_weights

__all__ = [
    "MultiTaskHead",
    "WeightsSource",
    "check_model_name",
    "create_model",
    "find_weights",
    "normalization",
    "resolve_weights",
]

log = logging.getLogger("trainer")


class MultiTaskHead(nn.Module):
    """Wraps a backbone with 8 outputs (mask 3, gender 2, age 3) into 18 joint log-probs.

    ``log p(mask, gender, age) = log p(mask) + log p(gender) + log p(age)``: the output is
    normalised log-probabilities in the 18-class order (``mask * 6 + gender * 3 + age``), so
    softmax, every loss and mixup treat it like any 18-way head, and cross entropy on it is the
    sum of the three tasks' cross entropies.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x).float()
        m = torch.log_softmax(z[:, 0:3], dim=1)
        g = torch.log_softmax(z[:, 3:5], dim=1)
        a = torch.log_softmax(z[:, 5:8], dim=1)
        joint = m[:, :, None, None] + g[:, None, :, None] + a[:, None, None, :]
        return joint.reshape(len(x), NUM_CLASSES)


def create_model(cfg: ModelConfig, *, num_classes: int = NUM_CLASSES) -> nn.Module:
    """Build the model described by ``cfg`` (timm's ``create_model`` underneath).

    Weights come from where :func:`~trainer.weights.resolve_weights` says: a local file
    (``cfg.pretrained_file``, a match in the weights folder, or timm's cached download) is
    loaded directly, with no network call; the hub is used only when nothing local exists,
    no weights folder is set and the hub answers. The classifier head is always new.

    Args:
        cfg: the model settings.
        num_classes: outputs of a single head (a multitask head always has 8 inside).

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown model name; weights that cannot be found (a missing
            ``pretrained_file``, a weights folder with no file for the model, or no local
            weights while the hub is unreachable or ``HF_HUB_OFFLINE`` is set); or weights
            that do not fit the model.
    """
    source = resolve_weights(cfg).require()
    overlay = None
    file = source.local_file
    if file is not None:
        overlay = {"file": file}
        if source.custom_load:
            overlay["custom_load"] = True
        log.info("loading %s weights from %s", cfg.name, file)
    outputs = 8 if cfg.head == "multitask" else num_classes
    try:
        model = timm.create_model(cfg.name, pretrained=source.kind != "none",
                                  num_classes=outputs, drop_rate=cfg.drop_rate,
                                  pretrained_cfg_overlay=overlay)
    except RuntimeError as exc:
        if file is None:
            raise
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"weights {file} do not fit model {cfg.name} ({first}); "
                          "use the file made for this model") from None
    return MultiTaskHead(model) if cfg.head == "multitask" else model


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the backbone's pretrained weights expect (timm's data config)."""
    inner = model.backbone if isinstance(model, MultiTaskHead) else model
    data_cfg = timm.data.resolve_model_data_config(inner)
    return tuple(data_cfg["mean"]), tuple(data_cfg["std"])
