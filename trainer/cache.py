"""Decode once: every image is decoded, cropped and resized once into a uint8 array on disk.

The array is a ``.npy`` file opened as a read-only memory map, so every trial and every worker
on the machine shares one copy through the page cache. Its name is a hash of the file list
(path, size, mtime) and the settings, so a changed image or setting builds a new one. Two
processes that want the same cache at once take a file lock: one builds, the other waits and
reuses it. Files appear under their final name only when complete (write, then rename).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.errors import DataError

__all__ = ["CacheInfo", "decode_image", "build_cache", "default_cache_dir", "MAX_BAD_FRACTION"]

log = logging.getLogger("trainer")

_VERSION = 1  # bump when decode_image changes what it produces
MAX_BAD_FRACTION = 0.05  # beyond this many unreadable images the data set is broken, not noisy


@dataclass(frozen=True)
class CacheInfo:
    """A decoded image cache: ``images`` is (N, H, W, 3) uint8, rows in the given path order.

    ``bad`` lists the row indices whose image could not be read (left black; callers skip
    them); ``decoded`` counts the images decoded by this call (0 when the cache was reused).
    """

    path: Path
    images: np.ndarray
    bad: tuple[int, ...]
    decoded: int

    @property
    def good(self) -> np.ndarray:
        """Indices of the readable rows."""
        mask = np.ones(len(self.images), dtype=bool)
        mask[list(self.bad)] = False
        return np.flatnonzero(mask)


def default_cache_dir() -> Path:
    """``$HPO_CACHE_DIR``, else ``~/.cache/hpo/images``."""
    env = os.environ.get("HPO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hpo" / "images"


def decode_image(
    path: str | os.PathLike,
    *,
    size: tuple[int, int],
    crop: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode one image to RGB uint8 (H, W, 3): center crop ``crop`` (h, w), resize to ``size``.

    JPEGs are decoded at a reduced scale when the target is much smaller (libjpeg's DCT
    scaling), which is several times faster than decoding full size and resizing.

    Raises:
        OSError, ValueError: the file is missing, empty, truncated or not an image.
    """
    out_h, out_w = size
    with Image.open(path) as im:
        full_w, full_h = im.size
        crop_h, crop_w = (min(crop[0], full_h), min(crop[1], full_w)) if crop else (full_h, full_w)
        scale = max(out_h / crop_h, out_w / crop_w)
        if im.format == "JPEG" and scale < 0.5:
            im.draft("RGB", (math.ceil(full_w * scale), math.ceil(full_h * scale)))
        rgb = im.convert("RGB")
        fx, fy = rgb.size[0] / full_w, rgb.size[1] / full_h
        if crop:
            cw, ch = round(crop_w * fx), round(crop_h * fy)
            left, top = (rgb.size[0] - cw) // 2, (rgb.size[1] - ch) // 2
            rgb = rgb.crop((left, top, left + cw, top + ch))
        if rgb.size != (out_w, out_h):
            rgb = rgb.resize((out_w, out_h), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _decode_row(args: tuple[int, str, tuple[int, int], tuple[int, int] | None]):
    i, path, size, crop = args
    try:
        if os.path.getsize(path) == 0:
            return i, None, "empty file (0 bytes)"
        return i, decode_image(path, size=size, crop=crop), None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return i, None, str(exc) or type(exc).__name__


def _key(paths: Sequence[str], size: tuple[int, int], crop: tuple[int, int] | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_VERSION, list(size), list(crop) if crop else None]).encode())
    for p in paths:
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{os.path.abspath(p)}\0{stamp}\n".encode())
    return h.hexdigest()[:20]


def _open(npy: Path, meta: Path, decoded: int) -> CacheInfo:
    info = json.loads(meta.read_text())
    images = np.load(npy, mmap_mode="r")
    return CacheInfo(path=npy, images=images, bad=tuple(info["bad"]), decoded=decoded)


def build_cache(
    paths: Sequence[str],
    *,
    size: tuple[int, int],
    crop: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> CacheInfo:
    """Return the decoded cache for ``paths``, building it if no identical one exists.

    Args:
        paths: image files, in the row order wanted.
        size: (height, width) after resizing.
        crop: optional center crop (height, width) before resizing.
        cache_dir: where caches live (default :func:`default_cache_dir`).
        workers: decoding threads (default: all cores, at most 16).

    Returns:
        The cache, memory-mapped read-only.

    Raises:
        DataError: no paths, or more than 5% of the images are unreadable. A few unreadable
            images are logged as a warning with their count and skipped.
    """
    if len(paths) == 0:
        raise DataError("no images to decode; the dataset is empty")
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create cache folder {cache_dir}: {exc.strerror}; "
                        "set data.cache_dir or HPO_CACHE_DIR to a writable folder") from None
    key = _key(paths, size, crop)
    stem = f"images-{size[0]}x{size[1]}-{key}"
    npy, meta = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    if not (npy.exists() and meta.exists()):
        with open(cache_dir / f"{stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first; we reuse
            if not (npy.exists() and meta.exists()):
                _write(npy, meta, paths, size=size, crop=crop, workers=workers)
                info = _open(npy, meta, decoded=len(paths))
            else:
                info = _open(npy, meta, decoded=0)
    else:
        info = _open(npy, meta, decoded=0)
    _check_bad(info, paths)
    return info


def _write(npy: Path, meta: Path, paths: Sequence[str], *, size, crop, workers) -> None:
    tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(len(paths), size[0], size[1], 3))
    jobs = [(i, str(p), tuple(size), tuple(crop) if crop else None) for i, p in enumerate(paths)]
    workers = workers or min(os.cpu_count() or 1, 16)
    bad: dict[int, str] = {}
    try:
        if workers <= 1 or len(jobs) < 64:
            _collect(map(_decode_row, jobs), out, bad, paths)
        else:
            # Threads, not processes: PIL releases the GIL while decoding and resizing, and a
            # forked child would inherit locks held by other threads (optuna's heartbeat,
            # loggers) and could hang forever.
            with ThreadPoolExecutor(workers) as pool:
                _collect(pool.map(_decode_row, jobs, chunksize=16), out, bad, paths)
        out.flush()
        del out
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    tmp_meta = meta.with_name(f"{meta.stem}.{os.getpid()}.tmp.json")
    tmp_meta.write_text(json.dumps({
        "version": _VERSION, "size": list(size), "crop": list(crop) if crop else None,
        "count": len(paths), "bad": sorted(bad), "reasons": {str(k): v for k, v in bad.items()},
        "first_path": str(paths[0]),
    }))
    os.replace(tmp_meta, meta)  # the metadata is the commit marker: written last


def _collect(results, out: np.ndarray, bad: dict[int, str], paths: Sequence[str]) -> None:
    for i, arr, reason in results:
        if arr is None:
            bad[i] = reason
            log.debug("cannot read %s: %s", paths[i], reason)
        else:
            out[i] = arr


def _check_bad(info: CacheInfo, paths: Sequence[str]) -> None:
    if not info.bad:
        return
    reasons = json.loads(info.path.with_suffix(".json").read_text()).get("reasons", {})
    first = info.bad[0]
    detail = f"{paths[first]}: {reasons.get(str(first), 'unreadable')}"
    n, total = len(info.bad), len(paths)
    if n > MAX_BAD_FRACTION * total or n == total:
        raise DataError(f"{n} of {total} images cannot be read (first: {detail}); "
                        "replace or remove them")
    log.warning("skipping %d unreadable image%s of %d (first: %s)", n, "s" * (n > 1), total,
                detail)
