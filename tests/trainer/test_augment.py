from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.augment import (
    Augmentation,
    apply_cpu,
    create_augmentation,
    create_mixer,
    list_augmentations,
)
from trainer.errors import ConfigError


@pytest.mark.parametrize("name", list_augmentations())
def test_every_preset_keeps_shapes_and_ranges(name):
    aug = create_augmentation(name, (32, 24))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 24, 3), dtype=np.uint8)
    out = apply_cpu(aug, images, seed=1)
    assert out.shape == images.shape and out.dtype == np.uint8
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255
    y = aug.gpu(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_cpu_augmentation_is_seeded():
    aug = create_augmentation("teams", (32, 24))
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 24, 3), dtype=np.uint8)
    a, b = apply_cpu(aug, images, seed=5), apply_cpu(aug, images, seed=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, images)


def test_basic_preset_flips_some_images_and_shifts_colour():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    flip_only = Augmentation("flip", flip=True)
    y = flip_only.gpu(x)
    same = [torch.equal(y[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(y[i], x[i].flip(2)) for i in range(64)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 16 < sum(mirrored) < 48
    basic = create_augmentation("basic")
    assert basic.flip and basic.color > 0
    z = Augmentation("colour", color=0.2).gpu(x)
    assert not torch.allclose(z.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))


def test_unknown_augmentation():
    with pytest.raises(ConfigError, match="unknown augmentation 'heavy'; valid augmentations: "
                       "basic, none, teams"):
        create_augmentation("heavy")


def test_no_mixer_when_both_probabilities_are_zero():
    assert create_mixer(mixup=0, cutmix=0) is None


@pytest.mark.parametrize(("mixup", "cutmix"), [(1.0, 0.0), (0.0, 1.0), (0.35, 0.35)])
def test_mixed_targets_are_soft_and_sum_to_one(mixup, cutmix):
    np.random.seed(0)
    mixer = create_mixer(mixup=mixup, cutmix=cutmix)
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8) % 18
    mixed, t = mixer(x.clone(), y)
    assert t.shape == (8, 18)
    assert torch.allclose(t.sum(1), torch.ones(8))
    assert mixed.shape == x.shape


def test_mixing_rates_follow_the_probabilities():
    np.random.seed(0)
    mixer = create_mixer(mixup=0.35, cutmix=0.35)
    y = torch.arange(8)
    plain = mixup_seen = cutmix_seen = 0
    for _ in range(400):
        x = torch.rand(8, 3, 16, 16)
        mixed, t = mixer(x.clone(), y)
        if torch.equal(mixed, x):
            plain += 1
        elif torch.all((mixed == x) | (mixed == x.flip(0))):
            cutmix_seen += 1  # cutmix pastes whole pixels from the flipped batch
        else:
            mixup_seen += 1
    assert 0.2 < plain / 400 < 0.4
    assert 0.25 < mixup_seen / 400 < 0.45 and 0.25 < cutmix_seen / 400 < 0.45


def test_odd_batches_stay_plain():
    mixer = create_mixer(mixup=1.0, cutmix=0.0)
    x = torch.rand(3, 3, 8, 8)
    mixed, t = mixer(x.clone(), torch.tensor([0, 1, 2]))
    assert torch.equal(mixed, x) and torch.equal(t.argmax(1), torch.tensor([0, 1, 2]))


def test_seeded_transforms_draw_independently():
    # each transform applies with p <= 0.5, so an image left untouched by all five is rare
    aug = create_augmentation("teams", (32, 24))
    img = np.random.default_rng(0).integers(0, 256, size=(1, 32, 24, 3), dtype=np.uint8)
    untouched = sum(np.array_equal(apply_cpu(aug, img, seed=s), img) for s in range(200))
    assert untouched / 200 < 0.15
