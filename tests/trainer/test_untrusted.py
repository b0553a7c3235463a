"""Untrusted input stays inside its bounds: a checkpoint's config never decides where files are
written, and no ImageID in info.csv reaches outside ``eval/images``."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO, tiny_raw
from trainer import DataError, config_from_dict, fit, load_checkpoint, predict, read_eval

DOC = (REPO / "docs" / "errors.md").read_text()


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """best.pt of a 1-epoch fit on the tiny data (CPU, seconds)."""
    root = tmp_path_factory.mktemp("trained")
    result = fit(config_from_dict(tiny_raw(tiny_data / "train", root / "run", root / "cache")))
    return Path(result.best_checkpoint)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


def test_checkpoint_paths_never_choose_where_predict_writes(trained, tiny_data, tmp_path,
                                                            monkeypatch):
    """cache_dir, output_dir, train_dir and weight paths in a checkpoint's config are ignored."""
    evil = tmp_path / "evil"
    ckpt = load_checkpoint(trained)
    cfg = ckpt["config"]
    cfg["data"].update(cache_dir=str(evil / "cache"), train_dir=str(evil / "train"),
                       relabel_csv=str(evil / "relabel.csv"))
    cfg["model"].update(pretrained=True, pretrained_file=str(evil / "w.pth"),
                        weights_dir=str(evil / "weights"))
    cfg["output_dir"] = str(evil / "out")
    planted = tmp_path / "planted.pt"
    torch.save(ckpt, planted)
    paths = sorted(str(p) for p in (tiny_data / "eval" / "images").iterdir())

    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("HPO_CACHE_DIR", str(user_cache))
    mine = tmp_path / "mine"
    by_caller = predict(planted, paths, device="cpu", cache_dir=str(mine))
    by_default = predict(planted, paths, device="cpu")
    original = predict(trained, paths, device="cpu", cache_dir=mine)

    assert not evil.exists()
    assert list(mine.glob("images-*.npy")) and list(user_cache.glob("images-*.npy"))
    # the preprocessing (img_size, crop, mean/std) and the model still come from the checkpoint
    assert np.allclose(by_caller, original) and np.allclose(by_default, original)
    assert by_caller.shape == (len(paths), 18)


def _eval_copy(tiny_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    ev = tmp_path / "data" / "eval"
    shutil.copytree(tiny_data / "eval", ev)
    return ev, list(pd.read_csv(ev / "info.csv", dtype=str)["ImageID"])


@pytest.mark.parametrize("image_id", [
    "../../etc/passwd", "/etc/passwd", "../info.csv", "sub/../../info.csv", "..", ".",
    "./../images/x.jpg",
])
def test_image_ids_stay_inside_images(image_id, tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    (ev / "info.csv").write_text(f"ImageID,ans\n{image_id},0\n{ids[0]},0\n")
    before = _files(tmp_path)
    with pytest.raises(DataError) as info:
        read_eval(ev)
    message = str(info.value)
    assert message == (
        f"{ev}/info.csv line 2: ImageID {image_id!r} is not a file inside {ev}/images (an "
        "ImageID is a file name under images/, with no '..' part and no leading '/'); fix the "
        "row or remove it")
    assert _files(tmp_path) == before  # reading writes nothing
    if image_id == "../../etc/passwd":
        assert message.replace(f"{ev}/", "") in DOC


def test_the_rule_comes_before_the_missing_check(tiny_data, tmp_path):
    """An ImageID pointing at a real file outside images/ is refused, not read."""
    ev, ids = _eval_copy(tiny_data, tmp_path)
    outside = ev / "secret.jpg"
    shutil.copy(ev / "images" / ids[0], outside)
    (ev / "info.csv").write_text(f"ImageID,ans\n{ids[0]},0\n{ids[1]},0\n../secret.jpg,0\n")
    with pytest.raises(DataError, match=r"line 4: ImageID '\.\./secret\.jpg' is not a file "
                                        r"inside"):
        read_eval(ev)
    (ev / "info.csv").write_text(f"ImageID,ans\n{ids[0]},0\n{outside},0\n")
    with pytest.raises(DataError, match="line 3: ImageID '/.*secret.jpg' is not a file inside"):
        read_eval(ev)


def test_subfolders_inside_images_are_fine(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    (ev / "images" / "sub").mkdir()
    shutil.copy(ev / "images" / ids[0], ev / "images" / "sub" / "x.jpg")
    (ev / "info.csv").write_text(f"ImageID,ans\n{ids[0]},0\nsub/x.jpg,0\n")
    frame = read_eval(ev)
    assert frame["path"].tolist() == [str(ev / "images" / ids[0]), str(ev / "images/sub/x.jpg")]
