"""Synthetic "mask / gender / age" face datasets in the competition's folder layout.

The generated data mirrors the competition layout exactly::

    ROOT/train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.jpg
    ROOT/train/train.csv    id,gender,race,age,path
    ROOT/eval/images/<40 hex>.jpg
    ROOT/eval/info.csv      ImageID,ans   (ans = 0, rows shuffled)
    ROOT/eval/labels.csv    ImageID,ans   (true labels, same row order as info.csv)

Each person is a drawn cartoon face whose cues a small CNN learns in a few epochs:

* mask: a mask polygon over nose, mouth and chin (worn), pulled under the nose or onto the
  chin (incorrect), or absent (normal);
* gender: long hair that hangs past the ears to the shoulders (female) or a short cap (male);
* age: dark hair (< 30), salted grey hair with forehead wrinkles (30-59), white hair with
  more wrinkles (>= 60).

Everything is drawn at the target size with PIL, and every person's pixels come from an RNG
derived from ``(seed, split, person index)``, so the files are byte-identical whatever the
number of worker processes.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "AGE_RANGES",
    "IMAGE_STEMS",
    "MASK_OF_STEM",
    "label_of",
    "main",
    "make_dataset",
]

# Order matters: it is the order of the 7 images in a person's folder listing and in the
# eval rows before shuffling.
IMAGE_STEMS: tuple[str, ...] = (
    "mask1",
    "mask2",
    "mask3",
    "mask4",
    "mask5",
    "incorrect_mask",
    "normal",
)
MASK_OF_STEM: dict[str, int] = {
    **{f"mask{k}": 0 for k in range(1, 6)},
    "incorrect_mask": 1,
    "normal": 2,
}

# Inclusive age ranges per age bin; they straddle the (30, 60) bin edges on purpose.
AGE_RANGES: tuple[tuple[int, int], ...] = ((18, 29), (30, 59), (60, 75))
GENDER_WORDS: tuple[str, str] = ("male", "female")
RACE = "Asian"

_SPLIT_TRAIN = 0
_SPLIT_EVAL = 1
_SPLIT_PLAN = 2

# Mask fabrics: light blue, white, black, grey (surgical and cloth masks).
_MASK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (160, 200, 230),
    (242, 242, 240),
    (35, 35, 38),
    (140, 142, 146),
)
_YOUNG_HAIR: tuple[tuple[int, int, int], ...] = (
    (22, 20, 20),
    (45, 32, 24),
    (70, 48, 30),
    (95, 58, 35),
)


def label_of(mask: int, gender: int, age: int, *, age_bins: tuple[int, int] = (30, 60)) -> int:
    """Return the competition's 18-class label.

    Args:
        mask: 0 worn correctly, 1 incorrect, 2 no mask.
        gender: 0 male, 1 female.
        age: age in years.
        age_bins: the two age edges; bin 0 is ``age < age_bins[0]``, bin 2 ``age >= age_bins[1]``.

    Returns:
        ``mask * 6 + gender * 3 + age_bin`` in 0..17.

    Raises:
        ValueError: if mask or gender is out of range.
    """
    if mask not in (0, 1, 2):
        raise ValueError(f"mask must be 0, 1 or 2, got {mask!r}")
    if gender not in (0, 1):
        raise ValueError(f"gender must be 0 or 1, got {gender!r}")
    age_bin = 0 if age < age_bins[0] else (1 if age < age_bins[1] else 2)
    return mask * 6 + gender * 3 + age_bin


@dataclass(frozen=True)
class _PersonTask:
    """Everything a worker needs to draw and write one person's 7 images."""

    root: str
    split: int
    index: int
    seed: int
    gender: int
    age_bin: int
    person_id: str
    height: int
    width: int
    quality: int
    ext: str = ".jpg"
    # Which stem (if any) is saved in an odd pixel mode, mimicking the real data's strays.
    rgba_stem: str | None = None
    gray_stem: str | None = None


@dataclass(frozen=True)
class _PersonResult:
    index: int
    split: int
    folder: str
    age: int
    # (file name, label) in IMAGE_STEMS order.
    files: tuple[tuple[str, int], ...]


def _rng_for(seed: int, split: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split, index]))


def _clip_rgb(c: Sequence[float]) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(v)))) for v in c)  # type: ignore[return-value]


def _shade(c: Sequence[float], f: float) -> tuple[int, int, int]:
    return _clip_rgb([v * f for v in c])


def _ellipse_points(
    cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24
) -> list[tuple[float, float]]:
    # Angles are in image coordinates: 0 = right, pi/2 = down.
    return [
        (cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in np.linspace(a0, a1, n).tolist()
    ]


@dataclass(frozen=True)
class _Face:
    """One person's appearance; per-image jitter is applied on top when drawing."""

    gender: int
    age_bin: int
    background: tuple[int, int, int]
    background2: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    clothes: tuple[int, int, int]
    cx: float  # fractions of width / height
    cy: float
    scale: float
    hairline: float  # fraction of ry above the head centre
    hair_length: float  # female: fraction of ry below the centre where the hair ends
    hair_width: float
    eye_colour: tuple[int, int, int]
    lip: tuple[int, int, int]
    incorrect_kind: int  # 0 mask under the nose, 1 mask on the chin


def _draw_face_params(rng: np.random.Generator, gender: int, age_bin: int) -> _Face:
    bg = rng.integers(40, 235, size=3).astype(float)
    bg2 = bg * rng.uniform(0.75, 1.1)
    t = rng.uniform(0.0, 1.0)
    light, dark = np.array([238, 204, 178]), np.array([120, 82, 58])
    skin = light * (1 - t) + dark * t + rng.normal(0, 6, size=3)
    if age_bin == 0:
        hair = np.array(_YOUNG_HAIR[int(rng.integers(len(_YOUNG_HAIR)))], float)
        hair = hair * rng.uniform(0.8, 1.2)
    elif age_bin == 1:
        # The salt is added as speckles when drawing; this is the pepper colour.
        hair = np.full(3, rng.uniform(95, 125)) + rng.normal(0, 5, size=3)
    else:
        hair = np.full(3, rng.uniform(215, 240)) + rng.normal(0, 4, size=3)
    return _Face(
        gender=gender,
        age_bin=age_bin,
        background=_clip_rgb(bg),
        background2=_clip_rgb(bg2),
        skin=_clip_rgb(skin),
        hair=_clip_rgb(hair),
        clothes=_clip_rgb(rng.integers(20, 235, size=3)),
        cx=0.5 + rng.uniform(-0.03, 0.03),
        cy=0.45 + rng.uniform(-0.03, 0.03),
        scale=1.0 + rng.uniform(-0.05, 0.05),
        hairline=rng.uniform(0.5, 0.62),
        hair_length=rng.uniform(1.35, 1.8),
        hair_width=rng.uniform(1.2, 1.38),
        eye_colour=_clip_rgb(rng.integers(20, 90, size=3)),
        lip=_clip_rgb((rng.uniform(150, 200), rng.uniform(60, 100), rng.uniform(60, 100))),
        incorrect_kind=int(rng.integers(2)),
    )


def _render(
    face: _Face,
    mask: int,
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
) -> Image.Image:
    """Draw one image of ``face`` with the given mask state at (height, width)."""
    h, w = height, width
    lw = max(1, round(w / 120))  # stroke width that stays visible from 96 to 384 px wide
    cx = w * (face.cx + rng.uniform(-0.012, 0.012))
    cy = h * (face.cy + rng.uniform(-0.012, 0.012))
    s = face.scale * (1.0 + rng.uniform(-0.02, 0.02))
    rx, ry = 0.26 * w * s, 0.235 * h * s

    # Background: vertical two-tone gradient so it is not a flat colour.
    grad = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    bg = (
        np.asarray(face.background, np.float32) * (1 - grad)
        + np.asarray(face.background2, np.float32) * grad
    )
    img = Image.fromarray(np.broadcast_to(bg, (h, w, 3)).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)

    skin = face.skin
    skin_dark = _shade(skin, 0.82)
    hair_mask = Image.new("L", (w, h), 0)
    hd = ImageDraw.Draw(hair_mask)

    # Shoulders and neck.
    d.polygon(
        [
            (cx - 1.9 * rx, h + 2),
            (cx - 1.5 * rx, cy + 1.55 * ry),
            (cx + 1.5 * rx, cy + 1.55 * ry),
            (cx + 1.9 * rx, h + 2),
        ],
        fill=face.clothes,
    )
    d.rectangle([cx - 0.42 * rx, cy + 0.6 * ry, cx + 0.42 * rx, cy + 1.6 * ry], fill=skin_dark)

    if face.gender == 1:
        # Long hair: a panel behind the head that falls past the ears onto the shoulders.
        hw = face.hair_width * rx
        hd.rounded_rectangle(
            [cx - hw, cy - 1.12 * ry, cx + hw, cy + face.hair_length * ry],
            radius=max(1, int(0.6 * rx)),
            fill=255,
        )
    else:
        # Ears only show on short-haired heads.
        for side in (-1, 1):
            ex = cx + side * 0.98 * rx
            d.ellipse([ex - 0.14 * rx, cy - 0.16 * ry, ex + 0.14 * rx, cy + 0.12 * ry], fill=skin)
    if face.gender == 1:
        _composite_hair(img, hair_mask, face, rng)
        hair_mask.paste(0, (0, 0, w, h))

    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)

    # Scalp hair above the hairline; for female hair it also frames the face down the cheeks.
    top = cy - face.hairline * ry
    cap = _ellipse_points(cx, cy, rx * 1.07, ry * 1.08, math.pi * 1.0, math.pi * 2.0)
    cap = [(x, min(y, top + 0.1 * ry)) for x, y in cap]
    if face.gender == 1:
        cap = (
            [(cx - 1.05 * rx, cy + 0.35 * ry), (cx - 1.12 * rx, cy - 0.2 * ry)]
            + cap
            + [(cx + 1.12 * rx, cy - 0.2 * ry), (cx + 1.05 * rx, cy + 0.35 * ry)]
            + [(cx + 0.82 * rx, cy + 0.3 * ry), (cx + 0.78 * rx, top)]
            + [(cx, top - 0.08 * ry)]
            + [(cx - 0.78 * rx, top), (cx - 0.82 * rx, cy + 0.3 * ry)]
        )
    else:
        cap = cap + [(cx + 0.85 * rx, top), (cx, top - 0.05 * ry), (cx - 0.85 * rx, top)]
    hd.polygon(cap, fill=255)

    # Eyes, brows, nose, mouth.
    ey = cy - 0.05 * ry
    for side in (-1, 1):
        ex = cx + side * 0.38 * rx
        d.ellipse(
            [ex - 0.15 * rx, ey - 0.07 * ry, ex + 0.15 * rx, ey + 0.07 * ry], fill=(245,) * 3
        )
        d.ellipse(
            [ex - 0.07 * rx, ey - 0.065 * ry, ex + 0.07 * rx, ey + 0.065 * ry],
            fill=face.eye_colour,
        )
        by = cy - 0.2 * ry
        d.line([(ex - 0.18 * rx, by + 0.02 * ry), (ex + 0.18 * rx, by)], fill=face.hair, width=lw)
    nose_bottom = cy + 0.3 * ry
    d.polygon(
        [(cx, cy - 0.02 * ry), (cx - 0.13 * rx, nose_bottom), (cx + 0.13 * rx, nose_bottom)],
        fill=_shade(skin, 0.72),
    )
    my = cy + 0.55 * ry
    d.ellipse([cx - 0.28 * rx, my - 0.07 * ry, cx + 0.28 * rx, my + 0.07 * ry], fill=face.lip)
    d.line([(cx - 0.26 * rx, my), (cx + 0.26 * rx, my)], fill=_shade(face.lip, 0.5), width=lw)

    # Age wrinkles: two forehead lines from 30, four plus crow's feet and smile lines from 60.
    wr = _shade(skin, 0.55)
    n_lines = (0, 2, 4)[face.age_bin]
    for k in range(n_lines):
        wy = cy - (0.3 + 0.07 * k) * ry
        d.line(
            [(cx - 0.45 * rx, wy), (cx, wy - 0.02 * ry), (cx + 0.45 * rx, wy)],
            fill=wr,
            width=lw,
        )
    if face.age_bin == 2:
        for side in (-1, 1):
            x0 = cx + side * 0.58 * rx
            for dy in (-0.05, 0.03):
                d.line([(x0, ey), (x0 + side * 0.16 * rx, ey + dy * ry)], fill=wr, width=lw)
            d.line(
                [(cx + side * 0.2 * rx, cy + 0.28 * ry), (cx + side * 0.36 * rx, cy + 0.6 * ry)],
                fill=wr,
                width=lw,
            )

    _composite_hair(img, hair_mask, face, rng)

    if mask != 2:
        _draw_mask(img, mask=mask, face=face, rng=rng, cx=cx, cy=cy, rx=rx, ry=ry, lw=lw)

    arr = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-6, 7, size=arr.shape, dtype=np.int16)
    gain = rng.uniform(0.94, 1.06)
    out = np.clip(arr * gain + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


def _composite_hair(
    img: Image.Image, hair_mask: Image.Image, face: _Face, rng: np.random.Generator
) -> None:
    """Fill the shape drawn in ``hair_mask`` with the person's hair texture."""
    box = hair_mask.getbbox()
    if box is None:
        return
    # Texture only the hair's bounding box; a full-frame texture doubles the drawing time.
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    tex = np.empty((h, w, 3), np.float32)
    tex[...] = np.asarray(face.hair, np.float32)
    # Strand-like streaks: column-wise brightness variation.
    tex *= (1.0 + rng.normal(0, 0.06, size=(1, w, 1))).astype(np.float32)
    if face.age_bin == 1:
        # Salt and pepper: a large share of light grey flecks on the darker base. The flecks
        # scale with the image so the texture survives a CNN's downsampling at any size.
        k = max(1, round(img.width / 64))
        small = rng.random((-(-h // k), -(-w // k))) < 0.45
        salt = np.repeat(np.repeat(small, k, axis=0), k, axis=1)[:h, :w]
        tex[salt] = rng.uniform(195, 225)
    patch = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8), "RGB")
    img.paste(patch, (x0, y0), hair_mask.crop(box))


def _draw_mask(
    img: Image.Image,
    *,
    mask: int,
    face: _Face,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    lw: int,
) -> None:
    """Draw a face mask: worn over the nose (mask 0) or pulled down (mask 1)."""
    d = ImageDraw.Draw(img)
    colour = np.asarray(_MASK_COLOURS[int(rng.integers(len(_MASK_COLOURS)))], float)
    colour = _clip_rgb(colour * rng.uniform(0.92, 1.06))
    if mask == 0:
        top = 0.04 + rng.uniform(-0.03, 0.03)  # just below the eyes, over the nose bridge
    elif face.incorrect_kind == 0:
        top = 0.36 + rng.uniform(-0.02, 0.02)  # under the nose: nostrils visible
    else:
        top = 0.7 + rng.uniform(-0.02, 0.02)  # on the chin: mouth visible
    top_y = cy + top * ry
    side_y = top_y + 0.08 * ry
    # Lower edge follows the jaw slightly outside the head ellipse.
    sin_a = max(-1.0, min(1.0, (side_y - cy) / (1.04 * ry)))
    a = math.asin(sin_a)
    jaw = _ellipse_points(cx, cy + 0.02 * ry, 1.04 * rx, 1.04 * ry, a, math.pi - a)
    poly = jaw + [(cx, top_y)]
    d.polygon(poly, fill=colour, outline=_shade(colour, 0.75) if colour[0] > 60 else (80,) * 3)
    # Pleats and straps add texture the classifier can use beyond flat colour.
    pleat = _shade(colour, 0.8) if colour[0] > 60 else (70,) * 3
    x_left, x_right = jaw[-1][0], jaw[0][0]
    for k in (1, 2, 3):
        py = top_y + k * 0.12 * ry
        if py > cy + 0.95 * ry:
            break
        d.line([(x_left + 0.15 * rx, py), (x_right - 0.15 * rx, py)], fill=pleat, width=lw)
    # Ear loops run up the cheeks; a pulled-down mask keeps them, which separates it from no mask.
    strap = (235, 235, 235) if colour[0] < 60 else _shade(colour, 0.6)
    sw = max(1, round(img.width / 64))
    for x_end, side in ((x_left, -1), (x_right, 1)):
        d.line([(x_end, side_y), (cx + side * 1.02 * rx, cy - 0.02 * ry)], fill=strap, width=sw)


def _save(img: Image.Image, path: Path, *, quality: int, mode: str | None) -> None:
    ext = path.suffix.lower()
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    if ext in (".jpg", ".jpeg"):
        # Pinning the encoder options keeps output byte-stable across runs.
        img.save(path, format="JPEG", quality=quality, optimize=False, progressive=False)
    else:
        img.save(path, format="PNG", compress_level=6)


def _make_person(task: _PersonTask) -> _PersonResult:
    rng = _rng_for(task.seed, task.split, task.index)
    lo, hi = AGE_RANGES[task.age_bin]
    age = int(rng.integers(lo, hi + 1))
    face = _draw_face_params(rng, task.gender, task.age_bin)
    root = Path(task.root)
    if task.split == _SPLIT_TRAIN:
        folder = f"{task.person_id}_{GENDER_WORDS[task.gender]}_{RACE}_{age}"
        out_dir = root / "train" / "images" / folder
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        folder = ""
        out_dir = root / "eval" / "images"
    files = []
    for stem in IMAGE_STEMS:
        mask = MASK_OF_STEM[stem]
        img = _render(face, mask, rng, height=task.height, width=task.width)
        if task.split == _SPLIT_TRAIN:
            name = stem + task.ext
        else:
            name = rng.bytes(20).hex() + ".jpg"
        mode = "RGBA" if stem == task.rgba_stem else ("L" if stem == task.gray_stem else None)
        _save(img, out_dir / name, quality=task.quality, mode=mode)
        files.append((name, label_of(mask, task.gender, age)))
    return _PersonResult(
        index=task.index, split=task.split, folder=folder, age=age, files=tuple(files)
    )


def _make_chunk(tasks: list[_PersonTask]) -> list[_PersonResult]:
    return [_make_person(t) for t in tasks]


def _groups(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Round-robin (gender, age_bin) over the 6 groups, shuffled, so n >= 6 covers all."""
    cycle = [(g, b) for g in (0, 1) for b in range(len(AGE_RANGES))]
    out = [cycle[i % len(cycle)] for i in range(n)]
    order = rng.permutation(n)
    return [out[i] for i in order]


def _variant_plan(
    people: int, rng: np.random.Generator
) -> dict[int, tuple[str, str | None, str | None]]:
    """Pick the people with odd files: index -> (extension, rgba stem, grayscale stem).

    About a third of people (at least 3 when there are 3) cycle through .png (one image RGBA),
    .jpeg (one image grayscale) and .JPG, so small datasets still hit every edge case.
    """
    n_odd = min(people, max(3, round(people / 3)))
    chosen = sorted(rng.permutation(people)[:n_odd].tolist())
    kinds = ((".png", "mask2", None), (".jpeg", None, "mask3"), (".JPG", None, "normal"))
    return {idx: kinds[k % len(kinds)] for k, idx in enumerate(chosen)}


def _check_output(root: Path, *, overwrite: bool) -> None:
    existing = [p for p in (root / "train", root / "eval") if p.exists() and any(p.iterdir())]
    if not existing:
        return
    if not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise FileExistsError(
            f"output already has files in {names}; pass overwrite=True (--overwrite) to replace"
        )
    for p in existing:
        shutil.rmtree(p)


def make_dataset(
    root: str | os.PathLike[str],
    *,
    people: int = 12,
    eval_people: int = 4,
    size: tuple[int, int] = (128, 96),
    seed: int = 0,
    workers: int = 1,
    quality: int = 90,
    variants: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic dataset in the competition layout under ``root``.

    Args:
        root: output folder; ``train/`` and ``eval/`` are created inside it.
        people: number of train people (7 images each).
        eval_people: number of separate eval people (7 images each, hex file names).
        size: image (height, width); the competition's photos are (512, 384).
        seed: dataset seed; the same seed gives byte-identical files.
        workers: processes to draw with; the output does not depend on it.
        quality: JPEG quality.
        variants: also write the real data's edge cases (.png/.jpeg/.JPG files, an RGBA PNG,
            a grayscale JPEG, an id with a ``-1`` suffix).
        overwrite: replace existing ``train/`` and ``eval/`` folders instead of failing.

    Returns:
        ``Path(root)``.

    Raises:
        ValueError: on a bad count, size, quality or worker number.
        FileExistsError: if ``train/`` or ``eval/`` already holds files and not ``overwrite``.
    """
    if people < 1:
        raise ValueError(f"people must be >= 1, got {people}")
    if eval_people < 0:
        raise ValueError(f"eval_people must be >= 0, got {eval_people}")
    height, width = (int(v) for v in size)
    if height < 32 or width < 24:
        raise ValueError(f"size must be at least (32, 24) (height, width), got {size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(root)
    _check_output(out, overwrite=overwrite)
    (out / "train" / "images").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "images").mkdir(parents=True, exist_ok=True)

    plan = _rng_for(seed, _SPLIT_PLAN, 0)
    train_groups = _groups(people, plan)
    eval_groups = _groups(eval_people, plan)
    # A separate stream, so turning variants on leaves every other draw unchanged.
    odd = _variant_plan(people, _rng_for(seed, _SPLIT_PLAN, 1)) if variants else {}
    suffixed = min(2, people - 1) if variants else -1

    tasks: list[_PersonTask] = []
    common = dict(root=str(out), seed=seed, height=height, width=width, quality=quality)
    for i, (g, b) in enumerate(train_groups):
        ext, rgba, gray = odd.get(i, (".jpg", None, None))
        pid = f"{i + 1:06d}" + ("-1" if i == suffixed else "")
        tasks.append(
            _PersonTask(
                split=_SPLIT_TRAIN,
                index=i,
                gender=g,
                age_bin=b,
                person_id=pid,
                ext=ext,
                rgba_stem=rgba,
                gray_stem=gray,
                **common,
            )
        )
    for j, (g, b) in enumerate(eval_groups):
        tasks.append(
            _PersonTask(split=_SPLIT_EVAL, index=j, gender=g, age_bin=b, person_id="", **common)
        )

    results = _run_tasks(tasks, workers=workers)

    train = sorted((r for r in results if r.split == _SPLIT_TRAIN), key=lambda r: r.index)
    with open(out / "train" / "train.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "gender", "race", "age", "path"])
        for r, t in zip(train, tasks[:people], strict=True):
            wr.writerow([t.person_id, GENDER_WORDS[t.gender], RACE, r.age, r.folder])

    evals = sorted((r for r in results if r.split == _SPLIT_EVAL), key=lambda r: r.index)
    rows = [f for r in evals for f in r.files]
    rows = [rows[k] for k in plan.permutation(len(rows))]
    with (
        open(out / "eval" / "info.csv", "w", newline="") as fi,
        open(out / "eval" / "labels.csv", "w", newline="") as fl,
    ):
        wi, wl = csv.writer(fi), csv.writer(fl)
        wi.writerow(["ImageID", "ans"])
        wl.writerow(["ImageID", "ans"])
        for name, label in rows:
            wi.writerow([name, 0])
            wl.writerow([name, label])
    return out


def _run_tasks(tasks: list[_PersonTask], *, workers: int) -> list[_PersonResult]:
    workers = min(workers, len(tasks))
    if workers <= 1:
        return [_make_person(t) for t in tasks]
    # A few chunks per worker balances load without paying per-person IPC.
    n_chunks = min(len(tasks), workers * 4)
    chunks = [tasks[k::n_chunks] for k in range(n_chunks)]
    with Pool(processes=workers) as pool:
        return [r for chunk in pool.imap_unordered(_make_chunk, chunks) for r in chunk]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trainer.synth",
        description="Write a synthetic mask/gender/age dataset in the competition layout.",
    )
    p.add_argument("--out", required=True, help="output folder (gets train/ and eval/)")
    p.add_argument("--people", type=int, default=12, help="train people, 7 images each")
    p.add_argument("--eval-people", type=int, default=4, help="eval people, 7 images each")
    p.add_argument("--height", type=int, default=128, help="image height in pixels")
    p.add_argument("--width", type=int, default=96, help="image width in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="drawing processes")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--variants", action="store_true", help="add the real data's file oddities")
    p.add_argument("--overwrite", action="store_true", help="replace existing train/ and eval/")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 1 on a ValueError or FileExistsError (message printed to stderr).
    """
    args = _parse_args(argv)
    try:
        out = make_dataset(
            args.out,
            people=args.people,
            eval_people=args.eval_people,
            size=(args.height, args.width),
            seed=args.seed,
            workers=args.workers,
            quality=args.quality,
            variants=args.variants,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = len(IMAGE_STEMS)
    print(
        f"wrote {args.people} train people ({args.people * n} images) and "
        f"{args.eval_people} eval people ({args.eval_people * n} images) "
        f"at {args.height}x{args.width} to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
