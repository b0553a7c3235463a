"""The trainer package's public surface: what ``hpo`` may import, and the small helpers in it."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import numpy as np
import pytest
import torch

import trainer
from trainer import (
    COMPETITION_AGE_BINS,
    DataConfig,
    age_bin,
    data_key,
    device_label,
    prepare_data,
    scan_train,
)
from trainer.synth import label_of

SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(trainer.__path__))


@pytest.mark.parametrize("name", trainer.__all__)
def test_every_export_resolves_to_its_module(name):
    module = importlib.import_module(trainer._EXPORTS[name])
    assert getattr(trainer, name) is getattr(module, name)
    assert name in module.__all__, f"{module.__name__}.__all__ lacks {name}"


def test_no_submodule_shadows_an_export():
    # Importing trainer.X sets the attribute X on the package, which would hide an export X.
    assert not set(SUBMODULES) & set(trainer.__all__)
    for name in SUBMODULES:
        importlib.import_module(f"trainer.{name}")
    assert all(not isinstance(getattr(trainer, n), type(trainer)) for n in trainer.__all__)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        trainer.fitt  # noqa: B018


def test_competition_age_bins_are_every_default():
    assert COMPETITION_AGE_BINS == (30, 60)
    assert DataConfig().age_bins == COMPETITION_AGE_BINS
    ages = np.array([18, 29, 30, 59, 60, 90])
    assert age_bin(ages).tolist() == [0, 0, 1, 1, 2, 2]
    assert [label_of(0, 0, int(a)) for a in ages] == [0, 0, 1, 1, 2, 2]
    assert [age_bin(int(a), (30, 58)) for a in (57, 58)] == [1, 2]


def test_scan_train_defaults_to_the_competition_bins(tiny_data):
    frame = scan_train(tiny_data / "train")
    expected = age_bin(frame["age"].to_numpy(), COMPETITION_AGE_BINS)
    assert np.array_equal(frame["age_class"].to_numpy(), expected)


@pytest.mark.parametrize(("device", "cuda", "label"), [
    ("auto", False, "cpu"),
    ("cpu", False, "cpu"),
    ("cuda", False, "cuda"),
    ("cuda:1", False, "cuda:1"),
    ("auto", True, "Fake GPU"),
    ("cuda", True, "Fake GPU"),
    ("cpu", True, "cpu"),
    ("cuda:1", True, "cuda:1"),
])
def test_device_label(monkeypatch, device, cuda, label):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    assert device_label(device) == label


def test_data_key_names_what_prepare_data_reads(tiny_cfg):
    cfg = tiny_cfg()
    key = data_key(cfg)
    hash(key)
    # settings prepare_data ignores leave the key alone ...
    same = tiny_cfg(epochs=3, optim__lr=1e-4, data__augmentation="teams", data__mixup=0.3,
                    data__num_workers=1, model__drop_rate=0.1, seed=7)
    assert data_key(same) == key
    # ... and every one it reads changes it
    for over in ({"data__img_size": [40, 32]}, {"data__val_fraction": 0.5},
                 {"data__split_seed": 1}, {"data__age_bins": [30, 58]},
                 {"data__crop": [60, 44]}, {"data__fold": 1},
                 {"data__cache_dir": "elsewhere"}):
        assert data_key(tiny_cfg(**over)) != key, over
    assert data_key(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_folds=3))) \
        != key


def test_equal_keys_prepare_equal_data(tiny_cfg):
    a = prepare_data(tiny_cfg())
    b = prepare_data(tiny_cfg(epochs=2, data__augmentation="teams"))
    assert a.cache_path == b.cache_path and a.paths == b.paths
    assert np.array_equal(a.train_rows, b.train_rows) and np.array_equal(a.val_rows, b.val_rows)
