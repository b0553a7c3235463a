from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.errors import DataError
from trainer.layout import (
    IMAGE_STEMS,
    age_bin,
    decode_label,
    encode_label,
    read_eval,
    resolve_images_dir,
    scan_train,
)
from trainer.synth import make_dataset


def test_label_table_covers_all_18_combinations():
    seen = {}
    for mask in range(3):
        for gender in range(2):
            for age in range(3):
                label = encode_label(mask, gender, age)
                assert label == mask * 6 + gender * 3 + age
                assert decode_label(label) == (mask, gender, age)
                seen[label] = (mask, gender, age)
    assert sorted(seen) == list(range(18))
    # the competition's own table: 0 = wear/male/<30, 17 = not wear/female/>=60
    assert seen[0] == (0, 0, 0) and seen[17] == (2, 1, 2) and seen[8] == (1, 0, 2)


def test_age_bins_are_settings():
    assert [age_bin(a) for a in (18, 29, 30, 59, 60, 75)] == [0, 0, 1, 1, 2, 2]
    assert [age_bin(a, (30, 58)) for a in (57, 58, 59)] == [1, 2, 2]
    assert list(age_bin(np.array([20, 45, 70]))) == [0, 1, 2]


def test_scan_train_reads_every_person_and_label(tiny_data):
    frame = scan_train(tiny_data / "train")
    assert len(frame) == 18 * 7
    assert frame.groupby("person").size().eq(7).all()
    csv = pd.read_csv(tiny_data / "train" / "train.csv", dtype={"id": str})
    assert sorted(frame["person"].unique()) == sorted(csv["path"])
    for _, row in frame.iterrows():
        assert row["mask"] == IMAGE_STEMS[row["stem"]]
        assert row["label"] == encode_label(row["mask"], row["gender"], row["age_class"])
    # the root, train/ and train/images/ all resolve to the same folder
    assert resolve_images_dir(tiny_data) == resolve_images_dir(tiny_data / "train" / "images")


def test_scan_train_moves_old_threshold(tiny_data):
    frame = scan_train(tiny_data / "train", age_bins=(30, 40))
    expected = frame["age"].map(lambda a: age_bin(a, (30, 40)))
    assert (frame["age_class"] == expected).all()


def test_variants_png_jpeg_uppercase_suffix_ids(tmp_path):
    root = make_dataset(tmp_path / "v", people=9, eval_people=0, size=(40, 30), variants=True)
    frame = scan_train(root / "train")
    exts = {p.rsplit(".", 1)[1] for p in frame["path"]}
    assert {"png", "jpeg", "JPG"} <= exts | {e.lower() for e in exts}
    assert any("-" in pid for pid in frame["id"])
    assert len(frame) == 9 * 7


def _copy_train(tiny_data, tmp_path):
    dst = tmp_path / "train"
    shutil.copytree(tiny_data / "train", dst)
    return dst


def test_folder_name_that_does_not_parse(tiny_data, tmp_path):
    train = _copy_train(tiny_data, tmp_path)
    (train / "images" / "bob_the_builder").mkdir()
    with pytest.raises(DataError, match=r"folder name 'bob_the_builder' .* does not parse; "
                       r"rename it as <id>_<male\|female>_<race>_<age>"):
        scan_train(train)


def test_hidden_folders_and_files_are_ignored(tiny_data, tmp_path):
    train = _copy_train(tiny_data, tmp_path)
    (train / "images" / "._000001_female_Asian_45").mkdir()
    person = next((train / "images").iterdir())
    (person / "._mask1.jpg").write_bytes(b"\x00\x05")
    assert len(scan_train(train)) == 18 * 7


def test_person_missing_an_image(tiny_data, tmp_path):
    train = _copy_train(tiny_data, tmp_path)
    person = sorted((train / "images").iterdir())[0]
    next(person.glob("incorrect_mask.*")).unlink()
    with pytest.raises(DataError, match=f"person folder {person.name} lacks incorrect_mask"):
        scan_train(train)


def test_empty_dataset(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="no person folders in"):
        scan_train(tmp_path / "train")


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist; set data.train_dir"):
        scan_train(tmp_path / "nope")


def test_folder_without_images(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="holds no images/ folder of person folders"):
        scan_train(tmp_path)


def test_relabel_csv_fixes_and_drops(tiny_data, tmp_path):
    frame = scan_train(tiny_data / "train")
    first, second = sorted(frame["id"].unique())[:2]
    g_first = int(frame.loc[frame["id"] == first, "gender"].iloc[0])
    new_gender = "male" if g_first == 1 else "female"
    fix = tmp_path / "relabel.csv"
    fix.write_text(f"id,gender,age,drop\n{first},{new_gender},65,0\n{second},,,1\n")
    fixed = scan_train(tiny_data / "train", relabel_csv=fix)
    assert second not in set(fixed["id"])
    rows = fixed[fixed["id"] == first]
    assert (rows["gender"] == 1 - g_first).all() and (rows["age_class"] == 2).all()
    assert len(fixed) == len(frame) - 7


def test_relabel_csv_errors(tiny_data, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("person,age\nx,3\n")
    with pytest.raises(DataError, match="has no 'id' column"):
        scan_train(tiny_data / "train", relabel_csv=bad)
    bad.write_text("id,gender\n000001,robot\n")
    with pytest.raises(DataError, match="gender 'robot' is not male or female"):
        scan_train(tiny_data / "train", relabel_csv=bad)


def test_read_eval_in_info_order(tiny_data):
    frame = read_eval(tiny_data / "eval")
    info = pd.read_csv(tiny_data / "eval" / "info.csv")
    assert list(frame["ImageID"]) == list(info["ImageID"])
    assert read_eval(tiny_data)["path"].tolist() == frame["path"].tolist()


def test_read_eval_errors(tiny_data, tmp_path):
    ev = tmp_path / "eval"
    shutil.copytree(tiny_data / "eval", ev)
    info = pd.read_csv(ev / "info.csv")
    pd.concat([info, info.iloc[:1]]).to_csv(ev / "info.csv", index=False)
    with pytest.raises(DataError, match=f"lists ImageID {info['ImageID'][0]} more than once"):
        read_eval(ev)
    info.to_csv(ev / "info.csv", index=False)
    (ev / "images" / info["ImageID"][1]).unlink()
    with pytest.raises(DataError, match=f"eval image .*{info['ImageID'][1]} is missing"):
        read_eval(ev)
    (ev / "info.csv").write_text("ImageID,ans\n")
    with pytest.raises(DataError, match="lists no images"):
        read_eval(ev)
    (ev / "info.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_eval(ev)
    with pytest.raises(DataError, match="info.csv does not exist"):
        read_eval(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# info.csv is untrusted input: every malformed file is one DataError line, never a traceback.

DOC = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()


def _eval_copy(tiny_data, tmp_path) -> tuple[Path, list[str]]:
    ev = tmp_path / "eval"
    shutil.copytree(tiny_data / "eval", ev)
    return ev, list(pd.read_csv(ev / "info.csv", dtype=str)["ImageID"])


def _one_line_error(ev: Path) -> str:
    with pytest.raises(DataError) as info:
        read_eval(ev)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(ev / "info.csv"))
    return message


def test_blank_image_id_names_the_line(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    (ev / "info.csv").write_text(f"ImageID,ans\n{ids[0]},0\n,0\n{ids[1]},0\n")
    message = _one_line_error(ev)
    assert message == (f"{ev}/info.csv line 3 has a blank ImageID; write the image's file "
                       "name there or remove the row")
    assert message.replace(f"{ev}/", "") in DOC
    (ev / "info.csv").write_text(f"ImageID,ans\n{ids[0]},0\n   ,0\n")  # whitespace is blank too
    assert "line 3 has a blank ImageID" in _one_line_error(ev)


def test_extra_field_names_the_line(tiny_data, tmp_path):
    ev, ids = _eval_copy(tiny_data, tmp_path)
    (ev / "info.csv").write_text(f"ImageID,ans\n{ids[0]},0,oops\n{ids[1]},0\n")
    message = _one_line_error(ev)
    assert message == (f"{ev}/info.csv line 2 has 3 fields, but its header (ImageID,ans) has "
                       "2; remove the extra field (quote an ImageID that holds a comma)")
    assert message.replace(f"{ev}/", "") in DOC


def test_non_utf8_info_names_the_line(tiny_data, tmp_path):
    ev, _ = _eval_copy(tiny_data, tmp_path)
    (ev / "info.csv").write_bytes(b"ImageID,ans\nab\xff.jpg,0\n")
    message = _one_line_error(ev)
    assert message == f"{ev}/info.csv line 2 is not UTF-8 text (byte 14); save info.csv as UTF-8"
    assert message.replace(f"{ev}/", "") in DOC


def test_unparseable_csv_is_one_line(tiny_data, tmp_path):
    ev, _ = _eval_copy(tiny_data, tmp_path)
    (ev / "info.csv").write_text("ImageID,ans\n" + "x" * 200_000 + ",0\n")  # > csv field limit
    assert "line 2 is not valid CSV (field larger than field limit" in _one_line_error(ev)
    (ev / "info.csv").write_text("id,ans\nx,0\n")
    assert "has no ImageID column (columns: id, ans)" in _one_line_error(ev)
    (ev / "info.csv").write_text("\n\n")
    assert "is empty" in _one_line_error(ev)


def test_tolerated_info_variants(tiny_data, tmp_path):
    """A byte-order mark, CRLF line ends, blank lines, a missing ans and a quoted comma."""
    ev, ids = _eval_copy(tiny_data, tmp_path)
    shutil.copy(ev / "images" / ids[2], ev / "images" / "a,b.jpg")
    rows = [f"{ids[0]},0", "", f"{ids[1]}", '"a,b.jpg",0']
    (ev / "info.csv").write_bytes(("\ufeffImageID,ans\r\n" + "\r\n".join(rows) + "\r\n")
                                  .encode("utf-8"))
    frame = read_eval(ev)
    assert list(frame["ImageID"]) == [ids[0], ids[1], "a,b.jpg"]
    assert frame["path"].tolist() == [str(ev / "images" / n) for n in frame["ImageID"]]
