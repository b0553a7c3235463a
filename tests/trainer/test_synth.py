"""Tests for trainer.synth: layout, labels, determinism, variants, learnability, errors."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # The project is not necessarily pip-installed; make `trainer` importable from the tree.
    sys.path.insert(0, str(REPO_ROOT))

from trainer.synth import IMAGE_STEMS, MASK_OF_STEM, label_of, main, make_dataset  # noqa: E402

FOLDER_RE = re.compile(
    r"^(?P<id>\d{6}(?:-\d+)?)_(?P<gender>male|female)_(?P<race>[A-Za-z]+)_(?P<age>\d+)$"
)
HEX_NAME_RE = re.compile(r"^[0-9a-f]{40}\.jpg$")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _train_labels(root: Path) -> list[int]:
    labels = []
    for row in _read_csv(root / "train" / "train.csv"):
        gender = 0 if row["gender"] == "male" else 1
        for stem in IMAGE_STEMS:
            labels.append(label_of(MASK_OF_STEM[stem], gender, int(row["age"])))
    return labels


def test_label_of() -> None:
    assert label_of(0, 0, 18) == 0
    assert label_of(0, 0, 29) == 0
    assert label_of(0, 0, 30) == 1
    assert label_of(0, 0, 59) == 1
    assert label_of(0, 0, 60) == 2
    assert label_of(1, 1, 45) == 10
    assert label_of(2, 1, 75) == 17
    assert label_of(2, 0, 50, age_bins=(30, 50)) == 14
    with pytest.raises(ValueError):
        label_of(3, 0, 20)
    with pytest.raises(ValueError):
        label_of(0, 2, 20)


def test_layout(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", people=6, eval_people=3, seed=3)
    assert root == tmp_path / "ds"

    rows = _read_csv(root / "train" / "train.csv")
    assert list(rows[0].keys()) == ["id", "gender", "race", "age", "path"]
    folders = sorted(p.name for p in (root / "train" / "images").iterdir())
    assert sorted(r["path"] for r in rows) == folders
    assert len(folders) == 6
    for row in rows:
        m = FOLDER_RE.match(row["path"])
        assert m, row["path"]
        assert (m["id"], m["gender"], m["race"], m["age"]) == (
            row["id"],
            row["gender"],
            row["race"],
            row["age"],
        )
        assert re.fullmatch(r"\d{6}", row["id"])
        files = sorted(p.name for p in (root / "train" / "images" / row["path"]).iterdir())
        assert files == sorted(f"{stem}.jpg" for stem in IMAGE_STEMS)
        with Image.open(root / "train" / "images" / row["path"] / "normal.jpg") as im:
            assert im.size == (96, 128)  # PIL reports (width, height)
            assert im.mode == "RGB"

    info = _read_csv(root / "eval" / "info.csv")
    labels = _read_csv(root / "eval" / "labels.csv")
    assert list(info[0].keys()) == ["ImageID", "ans"]
    assert list(labels[0].keys()) == ["ImageID", "ans"]
    assert len(info) == 3 * 7
    assert [r["ImageID"] for r in info] == [r["ImageID"] for r in labels]
    assert all(r["ans"] == "0" for r in info)
    assert all(0 <= int(r["ans"]) <= 17 for r in labels)
    eval_files = {p.name for p in (root / "eval" / "images").iterdir()}
    assert eval_files == {r["ImageID"] for r in info}
    assert all(HEX_NAME_RE.match(name) for name in eval_files)
    # Eval people are separate people: no eval file may duplicate a train file.
    train_digests = {
        h for k, h in _hashes(root / "train" / "images").items() if not k.endswith(".csv")
    }
    eval_digests = set(_hashes(root / "eval" / "images").values())
    assert not train_digests & eval_digests
    # Rows are shuffled, not grouped by person in the 7-stem order.
    eval_labels = [int(r["ans"]) for r in labels]
    assert eval_labels != sorted(eval_labels)


def test_groups_and_classes_cover_everything(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", people=6, eval_people=0, seed=11)
    rows = _read_csv(root / "train" / "train.csv")
    groups = {(r["gender"], label_of(0, 0, int(r["age"]))) for r in rows}
    assert len(groups) == 6
    assert set(_train_labels(root)) == set(range(18))
    assert not any((root / "eval" / "images").iterdir())
    assert len(_read_csv(root / "eval" / "info.csv")) == 0


def test_determinism(tmp_path: Path) -> None:
    kw = dict(people=7, eval_people=2, size=(96, 72))
    a = _hashes(make_dataset(tmp_path / "a", seed=5, workers=1, **kw))
    b = _hashes(make_dataset(tmp_path / "b", seed=5, workers=2, **kw))
    c = _hashes(make_dataset(tmp_path / "c", seed=6, workers=1, **kw))
    assert a == b
    assert len(a) == 7 * 7 + 2 * 7 + 3
    assert a != c
    assert set(a.values()).isdisjoint(
        v for k, v in c.items() if not k.endswith(".csv") and "eval" not in k
    )


def test_variants(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", people=9, eval_people=1, seed=2, variants=True)
    rows = _read_csv(root / "train" / "train.csv")
    folders = {p.name for p in (root / "train" / "images").iterdir()}
    assert {r["path"] for r in rows} == folders
    assert any("-" in r["id"] for r in rows)
    for r in rows:
        m = FOLDER_RE.match(r["path"])
        assert m and m["id"] == r["id"]

    suffixes: set[str] = set()
    modes: set[str] = set()
    for folder in folders:
        files = sorted((root / "train" / "images" / folder).iterdir())
        assert sorted(p.stem for p in files) == sorted(IMAGE_STEMS)
        for p in files:
            suffixes.add(p.suffix)
            with Image.open(p) as im:
                im.load()
                modes.add(im.mode)
                if p.suffix.lower() in (".jpg", ".jpeg"):
                    assert im.format == "JPEG"
                else:
                    assert im.format == "PNG"
    assert {".jpg", ".png", ".jpeg"} <= suffixes
    assert any(s != s.lower() for s in suffixes)
    assert {"RGB", "RGBA", "L"} <= modes

    # Variants change only the train files' form; the eval split is untouched.
    plain = make_dataset(tmp_path / "plain", people=9, eval_people=1, seed=2)
    assert _hashes(plain / "eval") == _hashes(root / "eval")


def _features(im: Image.Image) -> np.ndarray:
    """Grey pixels plus pooled edge strength: sign-free cues a linear model can use.

    Raw pixels alone are a poor test: a black mask and a white mask (or dark and white hair)
    push the same pixels in opposite directions, which a CNN handles and a linear model
    cannot, so edge magnitudes stand in for a CNN's first layer.
    """
    grey = im.convert("L")

    def edges(a: np.ndarray) -> np.ndarray:
        mag = np.abs(np.diff(a, axis=0))[:, :-1] + np.abs(np.diff(a, axis=1))[:-1, :]
        h, w = mag.shape
        return mag[: h - h % 16, : w - w % 12].reshape(16, h // 16, 12, w // 12).mean((1, 3))

    full = np.asarray(grey, np.float32) / 255
    half = np.asarray(grey.resize((48, 64), Image.BILINEAR), np.float32) / 255
    small = np.asarray(grey.resize((12, 16), Image.BILINEAR), np.float32) / 255
    return np.concatenate([small.ravel(), 4 * edges(full).ravel(), 4 * edges(half).ravel()])


def test_cues_are_learnable(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    root = make_dataset(tmp_path / "ds", people=48, eval_people=24, seed=0, workers=2)
    x_train, y_train = [], []
    for row in _read_csv(root / "train" / "train.csv"):
        gender = 0 if row["gender"] == "male" else 1
        for stem in IMAGE_STEMS:
            with Image.open(root / "train" / "images" / row["path"] / f"{stem}.jpg") as im:
                x_train.append(_features(im))
            label = label_of(MASK_OF_STEM[stem], gender, int(row["age"]))
            y_train.append((label // 6, label // 3 % 2, label % 3))
    # The eval split holds different people, so this measures generalisation across faces.
    x_test, y_test = [], []
    for row in _read_csv(root / "eval" / "labels.csv"):
        with Image.open(root / "eval" / "images" / row["ImageID"]) as im:
            x_test.append(_features(im))
        label = int(row["ans"])
        y_test.append((label // 6, label // 3 % 2, label % 3))
    xa, ya, xb, yb = map(np.asarray, (x_train, y_train, x_test, y_test))

    accuracy = {}
    for k, task in enumerate(("mask", "gender", "age")):
        model = LogisticRegression(max_iter=3000).fit(xa, ya[:, k])
        accuracy[task] = model.score(xb, yb[:, k])
    assert accuracy["mask"] >= 0.9, accuracy
    assert accuracy["gender"] >= 0.8, accuracy
    assert accuracy["age"] >= 0.6, accuracy


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", people=1, eval_people=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_dataset(root, people=1, eval_people=1)
    before = _hashes(root)
    make_dataset(root, people=2, eval_people=0, seed=1, overwrite=True)
    rows = _read_csv(root / "train" / "train.csv")
    assert len(rows) == 2
    assert len(list((root / "train" / "images").iterdir())) == 2
    assert not any((root / "eval" / "images").iterdir())
    assert _hashes(root) != before


@pytest.mark.parametrize(
    "kwargs",
    [{"people": 0}, {"people": -1}, {"eval_people": -1}, {"size": (8, 8)}, {"workers": 0}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "trainer.synth", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_subprocess(tmp_path: Path) -> None:
    # Two real runs only: each pays the `trainer` package import (torch, timm) on startup.
    out = tmp_path / "cli"
    args = ["--out", str(out), "--people", "2", "--eval-people", "1", "--height", "64"]
    args += ["--width", "48", "--seed", "4", "--variants"]
    res = _run_cli(*args)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "2 train people" in lines[0] and str(out) in lines[0]
    assert len(_read_csv(out / "train" / "train.csv")) == 2
    assert len(_read_csv(out / "eval" / "info.csv")) == 7

    again = _run_cli(*args)
    assert again.returncode == 1
    assert "Traceback" not in again.stderr
    err_lines = again.stderr.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error:"), again.stderr


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--people", "1", "--eval-people", "0", "--height", "64"]
    args += ["--width", "48"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main([*args, "--overwrite", "--workers", "2"]) == 0
    capsys.readouterr()

    assert main(["--out", str(tmp_path / "x"), "--people", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: people must be >= 1") and err.count("\n") == 1

    with pytest.raises(SystemExit) as exc:  # --out missing: argparse's usage error
        main(["--people", "3"])
    assert exc.value.code == 2
