"""Synthetic "mask / gender / age" face datasets in the competition's folder layout.

The generated data mirrors the competition layout exactly::

    ROOT/train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.jpg
    ROOT/train/train.csv    id,gender,race,age,path
    ROOT/eval/images/<40 hex>.jpg
    ROOT/eval/info.csv      ImageID,ans   (ans = 0, rows shuffled)
    ROOT/eval/labels.csv    ImageID,ans   (true labels, same row order as info.csv)

Each person is a drawn cartoon face whose cues a small CNN learns in a few epochs (see
:mod:`trainer.faces`). Everything is drawn at the target size with PIL, and every person's
pixels come from an RNG derived from ``(seed, split, person index)``, so the files are
byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.faces import face_params, render
from trainer.layout import COMPETITION_AGE_BINS

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


def label_of(
    mask: int, gender: int, age: int, *, age_bins: tuple[int, int] = COMPETITION_AGE_BINS
) -> int:
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
    face = face_params(rng, task.gender, task.age_bin)
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
        img = render(face, mask, rng, height=task.height, width=task.width)
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
    height, width = _check_args(people=people, eval_people=eval_people, size=size,
                                quality=quality, workers=workers)
    out = Path(root)
    _check_output(out, overwrite=overwrite)
    (out / "train" / "images").mkdir(parents=True, exist_ok=True)
    (out / "eval" / "images").mkdir(parents=True, exist_ok=True)

    plan = _rng_for(seed, _SPLIT_PLAN, 0)
    common = dict(root=str(out), seed=seed, height=height, width=width, quality=quality)
    tasks = _train_tasks(people, plan=plan, variants=variants, common=common)
    tasks += _eval_tasks(eval_people, plan=plan, common=common)
    results = _run_tasks(tasks, workers=workers)
    _write_train_csv(out, results, tasks[:people])
    _write_eval_csvs(out, results, plan)
    return out


def _check_args(
    *, people: int, eval_people: int, size: tuple[int, int], quality: int, workers: int
) -> tuple[int, int]:
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
    return height, width


def _train_tasks(
    people: int, *, plan: np.random.Generator, variants: bool, common: dict
) -> list[_PersonTask]:
    groups = _groups(people, plan)
    # A separate stream, so turning variants on leaves every other draw unchanged.
    odd = _variant_plan(people, _rng_for(common["seed"], _SPLIT_PLAN, 1)) if variants else {}
    suffixed = min(2, people - 1) if variants else -1
    tasks = []
    for i, (g, b) in enumerate(groups):
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
    return tasks


def _eval_tasks(
    eval_people: int, *, plan: np.random.Generator, common: dict
) -> list[_PersonTask]:
    return [
        _PersonTask(split=_SPLIT_EVAL, index=j, gender=g, age_bin=b, person_id="", **common)
        for j, (g, b) in enumerate(_groups(eval_people, plan))
    ]


def _write_train_csv(out: Path, results: list[_PersonResult], tasks: list[_PersonTask]) -> None:
    train = sorted((r for r in results if r.split == _SPLIT_TRAIN), key=lambda r: r.index)
    with open(out / "train" / "train.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "gender", "race", "age", "path"])
        for r, t in zip(train, tasks, strict=True):
            wr.writerow([t.person_id, GENDER_WORDS[t.gender], RACE, r.age, r.folder])


def _write_eval_csvs(out: Path, results: list[_PersonResult], plan: np.random.Generator) -> None:
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
