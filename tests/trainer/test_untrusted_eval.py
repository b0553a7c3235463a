"""An eval folder is untrusted: links in ``eval/images`` may not lead outside it, and an ImageID
of any length or content ends in one DataError line that names it, never a traceback."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REPO, hpo_cli
from trainer import DataError, read_eval
from trainer.layout import MAX_NAME_BYTES

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")


def _eval_copy(tiny_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    ev = tmp_path / "eval"
    shutil.copytree(tiny_data / "eval", ev)
    return ev, list(pd.read_csv(ev / "info.csv", dtype=str)["ImageID"])


def _write_info(ev: Path, ids: list[str]) -> None:
    frame = pd.DataFrame({"ImageID": ids, "ans": 0})
    frame.to_csv(ev / "info.csv", index=False)


def _refusal(ev: Path) -> str:
    with pytest.raises(DataError) as info:
        read_eval(ev)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_link_to_a_file_outside_images_is_refused(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    secret = tmp_path / "secret.jpg"
    shutil.move(ev / "images" / ids[1], secret)
    os.symlink(secret, ev / "images" / ids[1])
    message = _refusal(ev)
    assert message == (f"{ev}/info.csv line 3: eval image images/{ids[1]} is a link to "
                       f"{secret}, outside images/; copy the file into images/ instead of "
                       "linking to it")
    shown = message.replace(f"{ev}/", "").replace(str(secret), "secret.jpg")
    assert shown.replace(ids[1], "3f0....jpg") in DOC
    os.unlink(ev / "images" / ids[1])  # a relative link that climbs out is refused the same way
    os.symlink(os.path.join("..", "..", "secret.jpg"), ev / "images" / ids[1])
    assert f"is a link to {secret}, outside images/" in _refusal(ev)


def test_a_link_to_a_folder_outside_images_is_refused(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(ev / "images" / ids[0], outside / "x.jpg")
    os.symlink(outside, ev / "images" / "sub")
    _write_info(ev, [ids[0], "sub/x.jpg"])
    assert _refusal(ev) == (f"{ev}/info.csv line 3: eval image images/sub/x.jpg is a link to "
                            f"{outside}/x.jpg, outside images/; copy the file into images/ "
                            "instead of linking to it")


def test_links_that_stay_inside_images_are_followed(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    (ev / "images" / "sub").mkdir()
    shutil.move(ev / "images" / ids[0], ev / "images" / "sub" / ids[0])
    os.symlink(os.path.join("sub", ids[0]), ev / "images" / ids[0])
    os.symlink(ev / "images" / ids[1], ev / "images" / "again.jpg")
    _write_info(ev, [ids[0], "again.jpg", ids[2]])
    frame = read_eval(ev)
    assert frame["path"].tolist() == [str(ev / "images" / n) for n in frame["ImageID"]]
    # images/ itself may be a link: the check is against the folder it leads to
    moved = tmp_path / "real-images"
    shutil.move(ev / "images", moved)
    os.symlink(moved, ev / "images")
    assert len(read_eval(ev)) == 3


def test_a_5000_character_image_id_is_one_short_line(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    long_id = "a" * 4996 + ".jpg"
    _write_info(ev, [ids[0], long_id])
    message = _refusal(ev)
    shown = f"{'a' * 28}...{'a' * 24}.jpg"  # the middle cut, 60 characters in all
    assert message == (f"{ev}/info.csv line 3: ImageID '{shown}' is "
                       "too long (5000 bytes; a file name may be at most 255 bytes, a whole "
                       "ImageID at most 1024); rename the image to a shorter name and fix the "
                       "row, or remove the row")
    assert message.replace(f"{ev}/", "") in DOC
    _write_info(ev, [ids[0], "../" * 2000 + "x.jpg"])  # long and outside: the rule, shortened
    message = _refusal(ev)
    assert ("line 3: ImageID '../../../../../../../../../...../../../../../../../../x.jpg' is "
            "not a file inside") in message


def test_name_length_is_counted_in_bytes(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    longest = "b" * (MAX_NAME_BYTES - 4) + ".jpg"  # 255 bytes: the file system takes it
    shutil.copy(ev / "images" / ids[0], ev / "images" / longest)
    _write_info(ev, [ids[0], longest])
    assert read_eval(ev)["ImageID"].tolist() == [ids[0], longest]
    wide = "\u00e9" * 126 + ".jpg"  # 130 characters, 256 bytes
    _write_info(ev, [wide])
    assert "is too long (256 bytes; a file name may be at most 255 bytes" in _refusal(ev)
    _write_info(ev, ["/".join(["d" * 200] * 6)])  # every name is short, the whole is not
    assert "is too long (1205 bytes;" in _refusal(ev)


def test_control_characters_are_refused(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    _write_info(ev, [ids[0], "\x1b[31mred.jpg"])  # a terminal escape
    message = _refusal(ev)
    assert message == (f"{ev}/info.csv line 3: ImageID '\\x1b[31mred.jpg' holds the control "
                       "character '\\x1b'; rename the image without it and fix the row, or "
                       "remove the row")
    assert message.replace(f"{ev}/", "") in DOC
    _write_info(ev, [ids[0], "two\nlines.jpg"])  # a quoted field may hold a line break
    assert _refusal(ev).endswith("ImageID 'two\\nlines.jpg' holds the control character "
                                 "'\\n'; rename the image without it and fix the row, or "
                                 "remove the row")


def test_a_link_loop_is_one_line(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    os.symlink("loop.jpg", ev / "images" / "loop.jpg")
    _write_info(ev, [ids[0], "loop.jpg"])
    assert _refusal(ev) == (f"{ev}/info.csv line 3: eval image images/loop.jpg cannot be "
                            "checked (a loop of symbolic links); replace it with a regular "
                            "image file inside images/, or remove the row")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_subfolder_is_one_line(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    (ev / "images" / "locked").mkdir()
    shutil.copy(ev / "images" / ids[0], ev / "images" / "locked" / "x.jpg")
    (ev / "images" / "locked").chmod(0)
    try:
        _write_info(ev, ["locked/x.jpg"])
        assert "eval image images/locked/x.jpg cannot be checked (Permission denied)" in \
            _refusal(ev)
    finally:
        (ev / "images" / "locked").chmod(0o755)


@pytest.fixture(scope="module")
def one_trial(tiny_data, tmp_path_factory):
    """One real 1-epoch trial of a copy of the smoke study, for ``hpo predict``."""
    from hpo.run.budget import Budget
    from hpo.run.worker import run_worker
    from hpo.studyfile.files import load_study_spec

    root = tmp_path_factory.mktemp("untrusted-eval")
    raw = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    raw.update(n_trials=1, pruner={"name": "none"})
    raw["fixed"]["epochs"] = 1
    study = root / "one.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    storage = f"sqlite:///{root}/hpo.db"
    run_worker(load_study_spec(str(study)), storage=storage, artifacts=str(root / "art"),
               train_dir=str(tiny_data / "train"), budget=Budget(1, None),
               heartbeat_interval=None)
    assert optuna.load_study(study_name="one", storage=storage).trials[0].state == \
        TrialState.COMPLETE
    return ["--study", str(study), "--trial", "0", "--storage", storage,
            "--artifacts", str(root / "art")]


def test_hpo_predict_refuses_a_link_outside_images(one_trial, tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    secret = tmp_path / "secret.jpg"
    shutil.move(ev / "images" / ids[0], secret)
    os.symlink(secret, ev / "images" / ids[0])
    out_csv = tmp_path / "sub.csv"
    out = hpo_cli("predict", *one_trial, "--data", str(ev), "--out", str(out_csv), "--device",
                  "cpu")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.strip().splitlines() == [
        f"Error: {ev}/info.csv line 2: eval image images/{ids[0]} is a link to {secret}, "
        "outside images/; copy the file into images/ instead of linking to it"]
    assert not out_csv.exists()


def test_a_data_folder_that_is_a_file_says_so(tmp_path):
    from trainer import DataError, scan_train

    notes = tmp_path / "notes.txt"
    notes.write_text("not a dataset")
    with pytest.raises(DataError) as err:
        scan_train(notes)
    assert str(err.value) == (f"data folder {notes} is a file, not a folder; set "
                              "data.train_dir (or --data) to the competition's train folder "
                              "(the one holding images/)")
