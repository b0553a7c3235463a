"""Augmentation presets by name, batch-level GPU augmentation and mixup / cutmix.

Per-image work that needs geometry (shift, scale, rotate, hue, noise) runs through
albumentations on small uint8 arrays in the loader workers. Flip and brightness/contrast are
cheap per-batch tensor ops and run on the device, so the ``basic`` preset costs no CPU time.
Mixup and cutmix reuse timm's ``Mixup`` (soft targets, batch mode).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from timm.data import Mixup

from trainer.errors import ConfigError

__all__ = [
    "Augmentation",
    "BatchMixer",
    "apply_cpu",
    "create_augmentation",
    "create_mixer",
    "list_augmentations",
]


@dataclass(frozen=True)
class Augmentation:
    """A preset: ``cpu`` runs per image in the workers, ``flip``/``color`` on the device batch."""

    name: str
    cpu: A.Compose | None = None
    flip: bool = False
    color: float = 0.0

    def gpu(self, x: torch.Tensor) -> torch.Tensor:
        """Random horizontal flip and brightness/contrast of a float batch in [0, 1] (B,C,H,W)."""
        if self.flip:
            flip = torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        if self.color > 0:
            b = (torch.rand(len(x), 1, 1, 1, device=x.device) * 2 - 1) * self.color
            c = 1 + (torch.rand(len(x), 1, 1, 1, device=x.device) * 2 - 1) * self.color
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * c + mean + b).clamp_(0, 1)
        return x


def _none(img_size: tuple[int, int]) -> Augmentation:
    return Augmentation("none")


def _basic(img_size: tuple[int, int]) -> Augmentation:
    return Augmentation("basic", flip=True, color=0.2)


def _teams(img_size: tuple[int, int]) -> Augmentation:
    # The competition teams' set. Their ShiftScaleRotate(shift 0.0625, scale 0.1, rotate 15) is
    # written as the Affine it is a special case of (albumentations 2 deprecates the former).
    cpu = A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15),
                 border_mode=0, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.3),
    ])
    return Augmentation("teams", cpu=cpu)


_REGISTRY: dict[str, Callable[[tuple[int, int]], Augmentation]] = {
    "none": _none,
    "basic": _basic,
    "teams": _teams,
}


def list_augmentations() -> list[str]:
    """Names accepted by :func:`create_augmentation`."""
    return sorted(_REGISTRY)


def create_augmentation(name: str, img_size: tuple[int, int] = (224, 224)) -> Augmentation:
    """Build an augmentation preset by name.

    Args:
        name: ``none``; ``basic`` (flip + brightness/contrast, on the device); ``teams``
            (HorizontalFlip, ShiftScaleRotate, HueSaturationValue, RandomBrightnessContrast,
            GaussNoise, in the loader workers).
        img_size: (height, width) of the images it will see.

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown augmentation {name!r}; valid augmentations: "
                          f"{', '.join(list_augmentations())}")
    return _REGISTRY[name](img_size)


class BatchMixer:
    """Mixup with probability ``mixup``, cutmix with ``cutmix``, else the batch stays plain.

    Targets always come back as soft ``[B, C]`` float tensors whose rows sum to 1.
    """

    def __init__(self, *, mixup: float, cutmix: float, mixup_alpha: float = 0.4,
                 cutmix_alpha: float = 1.0, num_classes: int = 18) -> None:
        self.num_classes = num_classes
        prob = mixup + cutmix
        self._mix = None
        if prob > 0:
            # timm picks cutmix with switch_prob whenever it mixes; both alphas must be > 0
            # for it to choose, and an alpha of 0 disables that kind entirely.
            self._mix = Mixup(
                mixup_alpha=mixup_alpha if mixup > 0 else 0.0,
                cutmix_alpha=cutmix_alpha if cutmix > 0 else 0.0,
                prob=prob, switch_prob=cutmix / prob, mode="batch", label_smoothing=0.0,
                num_classes=num_classes,
            )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mix is None or len(x) % 2:  # timm mixes pairs; an odd tail batch stays plain
            return x, torch.nn.functional.one_hot(y, self.num_classes).float()
        return self._mix(x, y)


def create_mixer(*, mixup: float, cutmix: float, mixup_alpha: float = 0.4,
                 cutmix_alpha: float = 1.0, num_classes: int = 18) -> BatchMixer | None:
    """A :class:`BatchMixer`, or None when both probabilities are 0 (targets stay hard)."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return BatchMixer(mixup=mixup, cutmix=cutmix, mixup_alpha=mixup_alpha,
                      cutmix_alpha=cutmix_alpha, num_classes=num_classes)


def apply_cpu(aug: Augmentation, images: np.ndarray, seed: int) -> np.ndarray:
    """Run the preset's per-image transforms on a uint8 batch (B, H, W, 3), seeded."""
    if aug.cpu is None:
        return images
    # One seed per transform: albumentations' set_random_seed gives every child the same
    # stream, so their "apply?" draws would agree and whole images would go unaugmented.
    seeds = np.random.SeedSequence(seed).generate_state(len(aug.cpu.transforms) + 1)
    aug.cpu.set_random_seed(int(seeds[0]))
    for transform, s in zip(aug.cpu.transforms, seeds[1:]):
        transform.set_random_seed(int(s))
    return np.stack([aug.cpu(image=img)["image"] for img in images])
