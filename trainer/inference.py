"""Scoring images with a trained model: ``predict``."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainer.cache import build_cache, default_cache_dir
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig, config_from_dict, config_to_dict
from trainer.data import Preprocess
from trainer.device import amp_dtype, autocast, resolve_device
from trainer.errors import DataError
from trainer.models import create_model

__all__ = ["predict"]


def _load_model(ckpt: dict, device: torch.device) -> tuple[nn.Module, TrainConfig]:
    cfg = config_from_dict(ckpt["config"])
    # The checkpoint holds every weight: never look for (or download) pretrained ones. Its
    # config is data, not instructions: no path in it is read or written.
    model_cfg = type(cfg.model)(**{**config_to_dict(cfg)["model"], "pretrained": False,
                                   "pretrained_file": None, "weights_dir": None})
    model = create_model(model_cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict(
    checkpoint: str | Path | dict,
    paths: Sequence[str],
    *,
    tta_flip: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Class probabilities (N, 18) of a trained model for a list of images.

    Each image is decoded, cropped and resized exactly as the model's training images were
    (``img_size`` and ``crop`` from the checkpoint's config), and normalised with its mean/std.
    Only those preprocessing values and the model's name and head come from the checkpoint: a
    checkpoint may come from elsewhere, so the paths in its config (``cache_dir``,
    ``train_dir``, ``output_dir``, weights) are ignored, and the decoded images are cached
    where the caller says.

    Args:
        checkpoint: a ``best.pt``/``last.pt`` path, or an already loaded checkpoint dict.
        paths: image files.
        tta_flip: average with the prediction of the horizontally flipped image.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        cache_dir: where the decoded images are cached (default: the user's cache,
            ``$HPO_CACHE_DIR`` or ``~/.cache/hpo/images``); never the checkpoint's.

    Returns:
        One row of class probabilities per path, in the order of ``paths``.

    Raises:
        DataError: a missing or unreadable image, or an unusable checkpoint.
    """
    dev = resolve_device(device)
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model, cfg = _load_model(ckpt, dev)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"image {missing[0]} does not exist ({len(missing)} missing)")
    info = build_cache(list(paths), size=cfg.data.img_size, crop=cfg.data.crop,
                       cache_dir=cache_dir if cache_dir else default_cache_dir())
    if info.bad:
        raise DataError(f"image {paths[info.bad[0]]} cannot be read ({len(info.bad)} "
                        "unreadable); every image needs a prediction, so replace it")
    prep = Preprocess(ckpt["mean"], ckpt["std"], dev, cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg.precision, dev)
    out = []
    for start in range(0, len(paths), batch_size):
        xb = torch.from_numpy(np.array(info.images[start:start + batch_size]))
        if dev.type == "cuda":
            xb = xb.pin_memory()
        x = prep(xb)
        with autocast(dev, dtype):
            p = torch.softmax(model(x).float(), dim=1)
            if tta_flip:
                p = (p + torch.softmax(model(x.flip(3)).float(), dim=1)) / 2
        out.append(p)
    return torch.cat(out).cpu().numpy()
