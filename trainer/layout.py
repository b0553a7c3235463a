"""The competition's dataset layout: people folders of 7 images, labels, and the eval set.

::

    train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.<jpg|jpeg|png>
    train/train.csv          (optional) id,gender,race,age,path
    eval/info.csv            ImageID,ans
    eval/images/<ImageID>

Label = mask * 6 + gender * 3 + age_bin with mask 0 worn, 1 incorrect, 2 not worn; gender
0 male, 1 female; age_bin 0 below ``age_bins[0]``, 1 below ``age_bins[1]``, else 2.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import DataError

__all__ = [
    "IMAGE_STEMS",
    "IMAGE_EXTENSIONS",
    "NUM_CLASSES",
    "encode_label",
    "decode_label",
    "age_bin",
    "resolve_images_dir",
    "scan_train",
    "read_eval",
    "read_relabel",
]

NUM_CLASSES = 18
# mask1..mask5 are worn correctly (0), incorrect_mask is 1, normal (no mask) is 2.
IMAGE_STEMS: dict[str, int] = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GENDERS = {"male": 0, "female": 1}
_FOLDER = re.compile(r"^(?P<id>[^_]+)_(?P<gender>[A-Za-z]+)_(?P<race>[^_]+)_(?P<age>\d+)$")
_FOLDER_HELP = "<id>_<male|female>_<race>_<age>, e.g. 000001_female_Asian_45"


def age_bin(age: int | np.ndarray, age_bins: tuple[int, int] = (30, 60)) -> int | np.ndarray:
    """0 below ``age_bins[0]``, 1 below ``age_bins[1]``, 2 otherwise (vectorised)."""
    lo, hi = age_bins
    if isinstance(age, np.ndarray):
        return (age >= lo).astype(np.int64) + (age >= hi).astype(np.int64)
    return int(age >= lo) + int(age >= hi)


def encode_label(mask: int, gender: int, age_class: int) -> int:
    """The 18-class label: ``mask * 6 + gender * 3 + age_class``."""
    return mask * 6 + gender * 3 + age_class


def decode_label(label: int | np.ndarray) -> tuple:
    """Inverse of :func:`encode_label`: ``(mask, gender, age_class)`` (vectorised)."""
    return label // 6, (label // 3) % 2, label % 3


def resolve_images_dir(train_dir: str | Path) -> Path:
    """Find the folder of person folders given the dataset root, ``train/`` or ``train/images/``.

    Raises:
        DataError: the folder does not exist or holds no ``images`` folder.
    """
    root = Path(train_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; set data.train_dir (or --data) to "
                        "the competition's train folder (the one holding images/)")
    for candidate in (root / "images", root / "train" / "images"):
        if candidate.is_dir():
            return candidate
    if any(_FOLDER.match(p.name) for p in root.iterdir() if p.is_dir()):
        return root
    raise DataError(f"{root} holds no images/ folder of person folders; set data.train_dir to "
                    "the competition's train folder (train/images/<id>_<gender>_<race>_<age>/)")


def _image_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in folder.iterdir():
        if f.name.startswith("."):  # macOS "._mask1.jpg" resource forks ship in the real data
            continue
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.stem in IMAGE_STEMS:
            if f.stem in found:
                raise DataError(f"{folder.name} has two images named {f.stem} "
                                f"({found[f.stem].name} and {f.name}); keep one of them")
            found[f.stem] = f
    return found


def read_relabel(path: str | Path) -> pd.DataFrame:
    """Read a relabel CSV: ``id`` plus any of ``gender`` (male/female), ``age``, ``drop`` (0/1).

    Raises:
        DataError: missing file or ``id`` column, or a bad gender/age value.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"id": str})
    except FileNotFoundError:
        raise DataError(f"relabel CSV {path} does not exist; fix data.relabel_csv") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"relabel CSV {path} is not a readable CSV ({exc}); "
                        "write it as id,gender,age,drop") from None
    if "id" not in df.columns:
        raise DataError(f"relabel CSV {path} has no 'id' column (columns: "
                        f"{', '.join(map(str, df.columns))}); write it as id,gender,age,drop")
    extra = set(df.columns) - {"id", "gender", "age", "drop"}
    if extra:
        raise DataError(f"relabel CSV {path} has unknown columns {sorted(extra)}; "
                        "valid columns: id, gender, age, drop")
    if "gender" in df.columns:
        bad = df["gender"].dropna()[~df["gender"].dropna().isin(list(GENDERS))]
        if len(bad):
            raise DataError(f"relabel CSV {path}: gender {bad.iloc[0]!r} is not male or female")
    return df


def scan_train(
    train_dir: str | Path,
    *,
    age_bins: tuple[int, int] = (30, 60),
    relabel_csv: str | Path | None = None,
) -> pd.DataFrame:
    """List every training image with its person and label.

    Args:
        train_dir: the dataset root, its ``train/`` folder or ``train/images/``.
        age_bins: the two age thresholds (teams moved "old" from 60 to 58 or 59).
        relabel_csv: optional fixes: ``id`` and new ``gender``/``age``, or ``drop`` = 1.

    Returns:
        One row per image, sorted by person then image: ``path``, ``person`` (folder name),
        ``id``, ``gender``, ``age``, ``mask``, ``age_class``, ``label``, ``stem``.

    Raises:
        DataError: a folder name that does not parse, a person missing one of the 7 images,
            two persons with one id, or no person at all.
    """
    images_dir = resolve_images_dir(train_dir)
    relabel = read_relabel(relabel_csv).set_index("id") if relabel_csv else None
    rows = []
    seen_ids: dict[str, str] = {}
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        if folder.name.startswith("."):
            continue
        match = _FOLDER.match(folder.name)
        gender_word = match["gender"].lower() if match else ""
        if not match or gender_word not in GENDERS:
            raise DataError(f"folder name {folder.name!r} in {images_dir} does not parse; "
                            f"rename it as {_FOLDER_HELP} or move it out")
        pid, age = match["id"], int(match["age"])
        if pid in seen_ids:
            raise DataError(f"person id {pid} is used by two folders ({seen_ids[pid]} and "
                            f"{folder.name}); give one a suffix such as {pid}-1")
        seen_ids[pid] = folder.name
        gender = GENDERS[gender_word]
        if relabel is not None and pid in relabel.index:
            fix = relabel.loc[pid]
            if isinstance(fix, pd.DataFrame):
                fix = fix.iloc[-1]
            if "drop" in fix and not pd.isna(fix["drop"]) and bool(int(fix["drop"])):
                continue
            if "gender" in fix and not pd.isna(fix["gender"]):
                gender = GENDERS[str(fix["gender"])]
            if "age" in fix and not pd.isna(fix["age"]):
                age = int(fix["age"])
        files = _image_files(folder)
        missing = [s for s in IMAGE_STEMS if s not in files]
        if missing:
            raise DataError(f"person folder {folder.name} lacks {', '.join(missing)} (each "
                            "person needs mask1..mask5, incorrect_mask and normal as "
                            "jpg/jpeg/png); add the images, or drop the person in "
                            "data.relabel_csv")
        a_cls = age_bin(age, age_bins)
        for stem, mask in IMAGE_STEMS.items():
            rows.append({
                "path": str(files[stem]), "person": folder.name, "id": pid, "gender": gender,
                "age": age, "mask": mask, "age_class": a_cls,
                "label": encode_label(mask, gender, a_cls), "stem": stem,
            })
    if not rows:
        raise DataError(f"no person folders in {images_dir}; expected folders named "
                        f"{_FOLDER_HELP} holding 7 images each")
    return pd.DataFrame(rows)


def read_eval(eval_dir: str | Path) -> pd.DataFrame:
    """Read ``eval/info.csv`` and resolve each ImageID under ``eval/images``.

    Returns:
        ``ImageID`` and ``path`` in the order of info.csv.

    Raises:
        DataError: no info.csv, an empty one, a duplicate ImageID, or a missing image.
    """
    root = Path(eval_dir).expanduser()
    info = root / "info.csv"
    if not info.is_file() and (root / "eval" / "info.csv").is_file():
        root, info = root / "eval", root / "eval" / "info.csv"
    if not info.is_file():
        raise DataError(f"{info} does not exist; point --data at the eval folder holding "
                        "info.csv and images/")
    try:
        df = pd.read_csv(info, dtype={"ImageID": str})
    except pd.errors.EmptyDataError:
        raise DataError(f"{info} is empty; it must list ImageID,ans with one row per image")\
            from None
    if "ImageID" not in df.columns:
        raise DataError(f"{info} has no ImageID column (columns: {', '.join(df.columns)}); "
                        "the competition's info.csv is ImageID,ans")
    if df.empty:
        raise DataError(f"{info} lists no images; it must list ImageID,ans with one row per image")
    dup = df["ImageID"][df["ImageID"].duplicated()]
    if len(dup):
        raise DataError(f"{info} lists ImageID {dup.iloc[0]} more than once "
                        f"({int(df['ImageID'].duplicated().sum())} duplicates); remove them")
    paths = [root / "images" / name for name in df["ImageID"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"eval image {missing[0]} is missing ({len(missing)} of {len(paths)} "
                        "listed in info.csv are missing); restore it or remove its row")
    return pd.DataFrame({"ImageID": df["ImageID"], "path": [str(p) for p in paths]})
