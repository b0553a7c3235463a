from __future__ import annotations

import pytest

from trainer.errors import ConfigError, DataError
from trainer.layout import scan_train
from trainer.split import split_frame, split_people


@pytest.fixture(scope="module")
def frame(tiny_data):
    return scan_train(tiny_data / "train")


def test_no_person_in_both_sides(frame):
    for seed in range(5):
        train, val = split_frame(frame, val_fraction=0.3, seed=seed)
        assert set(train["person"]).isdisjoint(set(val["person"]))
        assert len(train) + len(val) == len(frame)
        assert train.groupby("person").size().eq(7).all()
        assert val.groupby("person").size().eq(7).all()


def test_split_is_deterministic_and_seeded(frame):
    a = split_people(frame, val_fraction=0.3, seed=1)
    assert a == split_people(frame, val_fraction=0.3, seed=1)
    assert any(split_people(frame, val_fraction=0.3, seed=s) != a for s in range(2, 6))


def test_split_is_stratified_and_sized(frame):
    people = frame.groupby("person")[["gender", "age_class"]].first()
    _, val = split_people(frame, val_fraction=0.34, seed=0)
    assert len(val) == round(0.34 * len(people))
    # 18 people = 3 per gender x age stratum: each stratum gives exactly one
    strata = people.loc[val].apply(lambda r: (r["gender"], r["age_class"]), axis=1)
    assert sorted(strata.value_counts().tolist()) == [1] * 6


def test_kfold_covers_every_person_once(frame):
    seen = []
    for fold in range(3):
        train, val = split_people(frame, fold=fold, n_folds=3, seed=7)
        assert set(train).isdisjoint(val)
        seen += val
    assert sorted(seen) == sorted(frame["person"].unique())


def test_split_errors(frame):
    one = frame[frame["person"] == frame["person"].iloc[0]]
    with pytest.raises(DataError, match="needs at least 2"):
        split_people(one)
    with pytest.raises(ConfigError, match="fold is 5, but must be in 0..4"):
        split_people(frame, fold=5, n_folds=5)
