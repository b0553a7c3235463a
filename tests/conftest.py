"""Shared fixtures: one tiny synthetic dataset in the competition layout, and a tiny config."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import config_from_dict
from trainer.synth import make_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """18 people x 7 images at 64x48 in train/ and 4 eval people, made once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return make_dataset(root, people=18, eval_people=4, size=(64, 48), seed=0)


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def tiny_raw(train_dir, out_dir, cache, **over) -> dict:
    """A config dict that trains timm's test_resnet for 1 epoch on the CPU in seconds."""
    raw = {
        "data": {"train_dir": str(train_dir), "img_size": [32, 24], "cache_dir": str(cache),
                 "val_fraction": 0.34, "num_workers": 0},
        "model": {"name": "test_resnet", "pretrained": False},
        "optim": {"name": "adamw", "lr": 3e-3},
        "epochs": 1, "batch_size": 16, "device": "cpu", "output_dir": str(out_dir),
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[key] = value
    return raw


@pytest.fixture()
def tiny_cfg(tiny_data, tmp_path):
    def make(**over):
        return config_from_dict(tiny_raw(tiny_data / "train", tmp_path / "run", tmp_path / "cache",
                                         **over))
    return make


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, _session_cache):
    # Tests never reach a model hub (fail fast instead of hanging on the network) and never
    # write to the user's cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HPO_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_CACHE_DIR", str(_session_cache))
