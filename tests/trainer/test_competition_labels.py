"""Training may move the age thresholds; validation always scores the competition's labels.

A trial trained with ``data.age_bins: [30, 58]`` must validate on the same people and the same
labels as one trained with ``[30, 60]`` (the competition's), so a study can compare them: the
split, ``PreparedData``'s validation labels and ``FitResult.val_labels`` / ``val_paths`` (what
``hpo`` hashes into ``val_hash`` and ensembles on) do not depend on ``age_bins``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_raw
from trainer import (
    COMPETITION_AGE_BINS,
    NUM_CLASSES,
    age_bin,
    classification_metrics,
    config_from_dict,
    data_key,
    encode_label,
    fit,
    prepare_data,
    scan_train,
    split_frame,
    split_people,
)

MOVED = (30, 58)  # the teams' best single trick: "old" from 58
VAL_FRACTION = 0.34  # as in tests.conftest.tiny_raw


def _rename_age(images: Path, person: str, age: int) -> str:
    head = person.rsplit("_", 1)[0]
    new = f"{head}_{age}"
    (images / person).rename(images / new)
    return new


@pytest.fixture(scope="module")
def aged(tiny_data, tmp_path_factory) -> dict:
    """The tiny dataset with one validation person aged 59 and one training person aged 58.

    Both are 30-59 for the competition, "old" when training with [30, 58].
    """
    root = tmp_path_factory.mktemp("aged")
    shutil.copytree(tiny_data / "train", root / "train")
    images = root / "train" / "images"
    frame = scan_train(root / "train")
    train, val = split_people(frame, val_fraction=VAL_FRACTION, seed=0)
    middle = set(frame.loc[frame["age"].between(30, 57), "person"])
    val_person = _rename_age(images, sorted(middle & set(val))[0], 59)
    train_person = _rename_age(images, sorted(middle & set(train))[0], 58)
    return {"train_dir": root / "train", "val_person": val_person,
            "train_person": train_person}


def _cfg(aged: dict, tmp_path: Path, age_bins, name: str = "run", **over):
    raw = tiny_raw(aged["train_dir"], tmp_path / name, tmp_path / "cache", **over)
    raw["data"]["age_bins"] = list(age_bins)
    return config_from_dict(raw)


def _competition_labels(frame: pd.DataFrame) -> pd.Series:
    """The competition's label of every image, by path, computed here from the real age."""
    classes = age_bin(frame["age"].to_numpy(), (30, 60))
    labels = [encode_label(m, g, a) for m, g, a in zip(frame["mask"], frame["gender"], classes)]
    return pd.Series(labels, index=frame["path"])


def _person_of(path: str) -> str:
    return Path(path).parent.name


# ---------------------------------------------------------------------------------------------
# layout: both labels from the real age


def test_scan_train_keeps_the_competition_label_beside_the_training_one(aged):
    moved = scan_train(aged["train_dir"], age_bins=MOVED)
    plain = scan_train(aged["train_dir"])
    assert COMPETITION_AGE_BINS == (30, 60)
    for person, age in ((aged["val_person"], 59), (aged["train_person"], 58)):
        rows = moved[moved["person"] == person]
        assert len(rows) == 7 and (rows["age"] == age).all()
        assert (rows["age_class"] == 2).all()  # old when training with [30, 58]
        assert (rows["competition_age_class"] == 1).all()  # 30-59 for the competition
        for _, r in rows.iterrows():
            assert r["label"] == encode_label(r["mask"], r["gender"], 2)
            assert r["competition_label"] == encode_label(r["mask"], r["gender"], 1)
    expected = _competition_labels(moved)
    assert moved["competition_label"].tolist() == expected.tolist()
    # the thresholds move the training labels only
    for column in ("path", "age", "competition_age_class", "competition_label"):
        assert moved[column].tolist() == plain[column].tolist()
    assert plain["label"].tolist() == plain["competition_label"].tolist()
    assert (moved["label"] != plain["label"]).sum() == 2 * 7


def test_relabel_csv_corrects_both_labels(aged, tmp_path):
    frame = scan_train(aged["train_dir"])
    young = frame[frame["age"] < 30].iloc[0]
    old = frame[frame["age"] >= 60].iloc[0]
    fix = tmp_path / "relabel.csv"
    new_gender = "male" if young["gender"] == 1 else "female"
    fix.write_text(f"id,gender,age,drop\n{young['id']},{new_gender},59,0\n{old['id']},,45,\n")
    fixed = scan_train(aged["train_dir"], age_bins=MOVED, relabel_csv=fix)
    rows = fixed[fixed["id"] == young["id"]]
    gender = 1 - int(young["gender"])
    assert (rows["age"] == 59).all() and (rows["gender"] == gender).all()
    assert rows["label"].tolist() == [encode_label(m, gender, 2) for m in rows["mask"]]
    assert rows["competition_label"].tolist() == [encode_label(m, gender, 1)
                                                  for m in rows["mask"]]
    rows = fixed[fixed["id"] == old["id"]]
    assert (rows["age_class"] == 1).all() and (rows["competition_age_class"] == 1).all()
    assert _competition_labels(fixed).tolist() == fixed["competition_label"].tolist()
    # a run trains on the corrected training label and validates on the corrected
    # competition label: over the folds the person is validated once and trained on twice
    mask = fixed.set_index("path")["mask"]
    sides = []
    for fold in range(3):
        data = prepare_data(_cfg(aged, tmp_path, MOVED, data__relabel_csv=str(fix),
                                 data__fold=fold, data__n_folds=3))
        for side, rows, age_class in (("val", data.val_rows, 1), ("train", data.train_rows, 2)):
            mine = [i for i in rows if _person_of(data.paths[i]) == young["person"]]
            if mine:
                sides.append(side)
                assert data.labels[mine].tolist() == [
                    encode_label(mask[data.paths[i]], gender, age_class) for i in mine]
    assert sorted(sides) == ["train", "train", "val"]


# ---------------------------------------------------------------------------------------------
# split: the same people whatever the thresholds


@pytest.mark.parametrize("fold", [None, 0, 1, 2])
def test_split_does_not_depend_on_the_training_thresholds(aged, fold):
    kw = {"val_fraction": VAL_FRACTION, "seed": 0, "fold": fold, "n_folds": 3}
    frames = {bins: scan_train(aged["train_dir"], age_bins=bins)
              for bins in ((30, 60), (30, 59), MOVED, (25, 40))}
    people = {bins: split_people(f, **kw) for bins, f in frames.items()}
    assert len(set(map(repr, people.values()))) == 1
    vals = {bins: split_frame(f, **kw)[1] for bins, f in frames.items()}
    reference = vals[(30, 60)]
    for val in vals.values():
        assert val["path"].tolist() == reference["path"].tolist()
        assert val["competition_label"].tolist() == reference["competition_label"].tolist()


def test_hand_made_frame_without_competition_classes_still_splits():
    frame = pd.DataFrame({"person": [f"p{i}" for i in range(6)], "gender": [0, 1] * 3,
                          "age_class": [0, 0, 1, 1, 2, 2]})
    train, val = split_people(frame, val_fraction=0.5, seed=0)
    assert len(train) == len(val) == 3


# ---------------------------------------------------------------------------------------------
# prepare_data: training labels for training rows, the competition's for validation rows


def test_prepared_validation_is_the_competitions(aged, tmp_path):
    plain = prepare_data(_cfg(aged, tmp_path, (30, 60)))
    moved = prepare_data(_cfg(aged, tmp_path, MOVED))
    assert data_key(_cfg(aged, tmp_path, MOVED)) != data_key(_cfg(aged, tmp_path, (30, 60)))
    # one decoded cache, one split
    assert moved.cache_path == plain.cache_path and moved.paths == plain.paths
    assert np.array_equal(moved.val_rows, plain.val_rows)
    assert np.array_equal(moved.train_rows, plain.train_rows)
    # identical validation labels, and they are the competition's
    assert np.array_equal(moved.labels[moved.val_rows], plain.labels[plain.val_rows])
    truth = _competition_labels(scan_train(aged["train_dir"]))
    val_paths = [moved.paths[i] for i in moved.val_rows]
    assert moved.labels[moved.val_rows].tolist() == truth[val_paths].tolist()
    # the 59-year-old validates as 30-59 ...
    rows = [i for i in moved.val_rows if _person_of(moved.paths[i]) == aged["val_person"]]
    assert len(rows) == 7 and all(moved.labels[i] % 3 == 1 for i in rows)
    # ... while the 58-year-old trains as old, and the class counts follow the training labels
    rows = [i for i in moved.train_rows if _person_of(moved.paths[i]) == aged["train_person"]]
    assert len(rows) == 7 and all(moved.labels[i] % 3 == 2 for i in rows)
    assert all(plain.labels[i] % 3 == 1 for i in rows)
    assert np.array_equal(moved.class_counts,
                          np.bincount(moved.labels[moved.train_rows], minlength=NUM_CLASSES))
    assert not np.array_equal(moved.class_counts, plain.class_counts)
    assert moved.class_counts.sum() == plain.class_counts.sum()


def test_every_fold_validates_the_59_year_old_as_30_to_59(aged, tmp_path):
    seen_in_val = 0
    for fold in range(3):
        data = prepare_data(_cfg(aged, tmp_path, MOVED, data__fold=fold, data__n_folds=3))
        person = np.array([_person_of(p) for p in data.paths])
        val = [i for i in data.val_rows if person[i] == aged["val_person"]]
        train = [i for i in data.train_rows if person[i] == aged["val_person"]]
        assert len(val) + len(train) == 7
        assert all(data.labels[i] % 3 == 1 for i in val)  # competition: 30-59
        assert all(data.labels[i] % 3 == 2 for i in train)  # training: old at 58
        seen_in_val += bool(val)
    assert seen_in_val == 1


# ---------------------------------------------------------------------------------------------
# fit: metrics, best epoch and the stored validation labels are the competition's


def test_fit_with_moved_thresholds_validates_on_the_competitions_labels(aged, tmp_path):
    plain = fit(_cfg(aged, tmp_path, (30, 60), name="plain"))
    moved = fit(_cfg(aged, tmp_path, MOVED, name="moved"))
    # what hpo's val_hash and ensembles consume is the same for both trials
    assert moved.val_paths == plain.val_paths
    assert np.array_equal(moved.val_labels, plain.val_labels)
    assert moved.val_labels.dtype == plain.val_labels.dtype
    truth = _competition_labels(scan_train(aged["train_dir"]))
    assert moved.val_labels.tolist() == truth[moved.val_paths].tolist()
    assert aged["val_person"] in {_person_of(p) for p in moved.val_paths}
    # every reported metric is computed on those labels
    for result in (plain, moved):
        scores = classification_metrics(result.val_probs, truth[result.val_paths].to_numpy())
        for name, value in scores.items():
            assert result.best_metrics[name] == pytest.approx(value)
        assert (result.output_dir / "val_probs.npy").is_file()
        assert np.array_equal(np.load(result.output_dir / "val_probs.npy"), result.val_probs)
