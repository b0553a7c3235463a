from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from trainer.cache import build_cache, decode_image
from trainer.errors import DataError
from trainer.layout import scan_train


@pytest.fixture()
def paths(tiny_data):
    return list(scan_train(tiny_data / "train")["path"])


def test_second_build_decodes_nothing(paths, cache_dir):
    first = build_cache(paths, size=(32, 24), cache_dir=cache_dir)
    assert first.decoded == len(paths) and first.images.shape == (len(paths), 32, 24, 3)
    stamp = os.stat(first.path).st_mtime_ns
    second = build_cache(paths, size=(32, 24), cache_dir=cache_dir)
    assert second.decoded == 0 and second.path == first.path
    assert os.stat(second.path).st_mtime_ns == stamp
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert not second.images.flags.writeable  # shared read-only


def test_rows_match_direct_decoding(paths, cache_dir):
    info = build_cache(paths, size=(32, 24), crop=(48, 40), cache_dir=cache_dir)
    for i in (0, 5, len(paths) - 1):
        assert np.array_equal(info.images[i], decode_image(paths[i], size=(32, 24),
                                                           crop=(48, 40)))


def test_other_settings_or_files_build_a_new_cache(paths, cache_dir, tmp_path):
    a = build_cache(paths, size=(32, 24), cache_dir=cache_dir)
    b = build_cache(paths, size=(32, 32), cache_dir=cache_dir)
    c = build_cache(paths, size=(32, 24), crop=(40, 40), cache_dir=cache_dir)
    d = build_cache(paths[:-1], size=(32, 24), cache_dir=cache_dir)
    assert len({a.path, b.path, c.path, d.path}) == 4
    # an image edited in place changes the key too
    copy = tmp_path / "img.jpg"
    shutil.copy(paths[0], copy)
    e = build_cache([str(copy)], size=(32, 24), cache_dir=cache_dir)
    Image.new("RGB", (48, 64), "red").save(copy)
    os.utime(copy, ns=(1, 1))
    f = build_cache([str(copy)], size=(32, 24), cache_dir=cache_dir)
    assert f.decoded == 1 and e.path != f.path


def test_parallel_decoding_gives_the_same_bytes(paths, cache_dir, tmp_path):
    one = build_cache(paths, size=(32, 24), cache_dir=cache_dir, workers=1)
    two = build_cache(paths, size=(32, 24), cache_dir=tmp_path / "other", workers=2)
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images))


def _build_in_child(args):
    paths, cache_dir = args
    info = build_cache(paths, size=(40, 30), cache_dir=cache_dir, workers=1)
    return str(info.path), info.decoded


def test_two_processes_building_at_once_share_one_cache(paths, cache_dir):
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build_in_child, [(paths, str(cache_dir))] * 2)
    assert results[0][0] == results[1][0]
    assert sorted(d for _, d in results) == [0, len(paths)]  # one built, the other reused
    assert not list(cache_dir.glob("*.tmp*"))


def test_png_rgba_and_grayscale_decode_to_rgb(tmp_path):
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (30, 40), (10, 20, 30, 128)).save(rgba)
    gray = tmp_path / "g.jpg"
    Image.new("L", (30, 40), 77).save(gray)
    info = build_cache([str(rgba), str(gray)], size=(20, 16), cache_dir=tmp_path / "c")
    assert info.images.shape == (2, 20, 16, 3) and not info.bad
    assert abs(int(info.images[1].mean()) - 77) <= 1


def _corrupt(paths, tmp_path, n_bad):
    files = []
    for i, p in enumerate(paths[:40]):
        dst = tmp_path / f"{i}.jpg"
        shutil.copy(p, dst)
        files.append(str(dst))
    for i in range(n_bad):
        data = open(files[i], "rb").read()
        if i % 2:
            open(files[i], "wb").close()  # zero bytes
        else:
            open(files[i], "wb").write(data[: len(data) // 3])  # truncated JPEG
    return files


def test_a_few_bad_images_are_skipped_with_a_warning(paths, tmp_path, caplog):
    files = _corrupt(paths, tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        info = build_cache(files, size=(32, 24), cache_dir=tmp_path / "c")
    assert info.bad == (0, 1) and list(info.good) == list(range(2, 40))
    assert "skipping 2 unreadable images of 40" in caplog.text


def test_many_bad_images_are_an_error(paths, tmp_path):
    files = _corrupt(paths, tmp_path, 6)
    with pytest.raises(DataError, match=r"6 of 40 images cannot be read \(first: .*0\.jpg"):
        build_cache(files, size=(32, 24), cache_dir=tmp_path / "c")


def test_zero_byte_image_message(tmp_path):
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"1 of 1 images cannot be read .*empty file \(0 bytes\)"):
        build_cache([str(empty)], size=(8, 8), cache_dir=tmp_path / "c")


def test_empty_list_is_an_error(tmp_path):
    with pytest.raises(DataError, match="the dataset is empty"):
        build_cache([], size=(8, 8), cache_dir=tmp_path)
