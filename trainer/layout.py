"""The competition's dataset layout: people folders of 7 images, labels, and the eval set.

::

    train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.<jpg|jpeg|png>
    train/train.csv          (optional) id,gender,race,age,path
    eval/info.csv            ImageID,ans
    eval/images/<ImageID>

Label = mask * 6 + gender * 3 + age_bin with mask 0 worn, 1 incorrect, 2 not worn; gender
0 male, 1 female; age_bin 0 below ``age_bins[0]``, 1 below ``age_bins[1]``, else 2.

A run may train with other age thresholds (teams moved "old" from 60 to 58 or 59), but it is
always validated on the competition's (:data:`COMPETITION_AGE_BINS`): :func:`scan_train` gives
every image both labels, computed from the person's real age after the relabel CSV's fixes.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import DataError

__all__ = [
    "COMPETITION_AGE_BINS",
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
# The competition's age classes: under 30, 30-59, 60 and over. Every F1 a study reports is
# scored on these, whatever thresholds a trial trains with.
COMPETITION_AGE_BINS: tuple[int, int] = (30, 60)
# mask1..mask5 are worn correctly (0), incorrect_mask is 1, normal (no mask) is 2.
IMAGE_STEMS: dict[str, int] = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
GENDERS = {"male": 0, "female": 1}
_FOLDER = re.compile(r"^(?P<id>[^_]+)_(?P<gender>[A-Za-z]+)_(?P<race>[^_]+)_(?P<age>\d+)$")
_FOLDER_HELP = "<id>_<male|female>_<race>_<age>, e.g. 000001_female_Asian_45"
# info.csv is untrusted: an ImageID is a path under eval/images (usually a bare file name) whose
# every name is at most MAX_NAME_BYTES (UTF-8), the limit of ext4, APFS and NTFS, and whose whole
# is at most MAX_IMAGE_ID_BYTES; a longer one is refused before the file system sees it.
MAX_NAME_BYTES = 255
MAX_IMAGE_ID_BYTES = 1024
# An error message shows at most this many characters of an ImageID, or of a link's target.
_SHOWN_CHARS = 60
_SHOWN_TARGET_CHARS = 240


def age_bin(age: int | np.ndarray,
            age_bins: tuple[int, int] = COMPETITION_AGE_BINS) -> int | np.ndarray:
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
    if root.exists() and not root.is_dir():
        raise DataError(f"data folder {root} is a file, not a folder; set data.train_dir (or "
                        "--data) to the competition's train folder (the one holding images/)")
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


def _relabelled(relabel: pd.DataFrame | None, pid: str, gender: int,
                age: int) -> tuple[int, int] | None:
    """The person's (gender, age) after the relabel CSV's fixes; ``None`` when it drops them."""
    if relabel is None or pid not in relabel.index:
        return gender, age
    fix = relabel.loc[pid]
    if isinstance(fix, pd.DataFrame):
        fix = fix.iloc[-1]  # the last row for an id wins
    if "drop" in fix and not pd.isna(fix["drop"]) and bool(int(fix["drop"])):
        return None
    if "gender" in fix and not pd.isna(fix["gender"]):
        gender = GENDERS[str(fix["gender"])]
    if "age" in fix and not pd.isna(fix["age"]):
        age = int(fix["age"])
    return gender, age


def _person_rows(folder: Path, pid: str, *, gender: int, age: int,
                 age_bins: tuple[int, int]) -> list[dict]:
    """The 7 image rows of one person, with the training and the competition labels."""
    files = _image_files(folder)
    missing = [s for s in IMAGE_STEMS if s not in files]
    if missing:
        raise DataError(f"person folder {folder.name} lacks {', '.join(missing)} (each "
                        "person needs mask1..mask5, incorrect_mask and normal as "
                        "jpg/jpeg/png); add the images, or drop the person in "
                        "data.relabel_csv")
    a_cls, c_cls = age_bin(age, age_bins), age_bin(age, COMPETITION_AGE_BINS)
    return [{
        "path": str(files[stem]), "person": folder.name, "id": pid, "gender": gender,
        "age": age, "mask": mask, "age_class": a_cls, "label": encode_label(mask, gender, a_cls),
        "competition_age_class": c_cls, "competition_label": encode_label(mask, gender, c_cls),
        "stem": stem,
    } for stem, mask in IMAGE_STEMS.items()]


def scan_train(
    train_dir: str | Path,
    *,
    age_bins: tuple[int, int] = COMPETITION_AGE_BINS,
    relabel_csv: str | Path | None = None,
) -> pd.DataFrame:
    """List every training image with its person and label.

    Args:
        train_dir: the dataset root, its ``train/`` folder or ``train/images/``.
        age_bins: the two age thresholds to train with (teams moved "old" from 60 to 58 or
            59); they decide ``age_class`` and ``label`` only.
        relabel_csv: optional fixes: ``id`` and new ``gender``/``age``, or ``drop`` = 1. They
            apply before either label is computed, so both carry them.

    Returns:
        One row per image, sorted by person then image: ``path``, ``person`` (folder name),
        ``id``, ``gender``, ``age`` (the real age, after relabelling), ``mask``, ``age_class``
        and ``label`` (the training label, with ``age_bins``), ``competition_age_class`` and
        ``competition_label`` (with :data:`COMPETITION_AGE_BINS`: what validation scores),
        ``stem``.

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
        person = _relabelled(relabel, pid, GENDERS[gender_word], age)
        if person is None:
            continue
        gender, age = person
        rows += _person_rows(folder, pid, gender=gender, age=age, age_bins=age_bins)
    if not rows:
        raise DataError(f"no person folders in {images_dir}; expected folders named "
                        f"{_FOLDER_HELP} holding 7 images each")
    return pd.DataFrame(rows)


def read_eval(eval_dir: str | Path) -> pd.DataFrame:
    """Read ``eval/info.csv`` and resolve each ImageID under ``eval/images``.

    info.csv and the images come with the data, so they are read as untrusted input: info.csv
    must be UTF-8 CSV whose rows have no more fields than its header, and every ImageID must
    name a file inside ``eval/images`` (no ``..`` part, not absolute, no control character,
    names of at most :data:`MAX_NAME_BYTES` bytes, at most :data:`MAX_IMAGE_ID_BYTES` in all).
    A symbolic link inside ``images/`` is followed only when it leads to a file inside
    ``images/`` (``images/`` itself may be a link); one that leads outside is refused.

    Args:
        eval_dir: the eval folder (holding ``info.csv`` and ``images/``) or the dataset root
            above it.

    Returns:
        ``ImageID`` and ``path`` in the order of info.csv.

    Raises:
        DataError: no info.csv, an empty one, one that is not UTF-8 or not CSV, a row with more
            fields than the header or a blank ImageID, an ImageID outside ``images/``, too long
            or holding a control character, a duplicate ImageID, an image that links outside
            ``images/`` or cannot be checked (permissions, a link loop), or a missing image.
    """
    root = Path(eval_dir).expanduser()
    info = root / "info.csv"
    if not info.is_file() and (root / "eval" / "info.csv").is_file():
        root, info = root / "eval", root / "eval" / "info.csv"
    if not info.is_file():
        raise DataError(f"{info} does not exist; point --data at the eval folder holding "
                        "info.csv and images/")
    rows = _info_rows(info)
    if not rows:
        raise DataError(f"{info} lists no images; it must list ImageID,ans with one row per image")
    images = root / "images"
    paths = [_eval_image(images, name, info=info, line=line) for line, name in rows]
    ids = pd.Series([name for _, name in rows], dtype=object)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{info} lists ImageID {dup.iloc[0]} more than once "
                        f"({int(ids.duplicated().sum())} duplicates); remove them")
    images_real = _checked(images.resolve, what=f"eval folder {images}",
                           fix="fix its permissions or point --data at another eval folder")
    missing = [p for (line, name), p in zip(rows, paths)
               if not _eval_file(images_real, p, name, info=info, line=line)]
    if missing:
        raise DataError(f"eval image {missing[0]} is missing ({len(missing)} of {len(paths)} "
                        "listed in info.csv are missing); restore it or remove its row")
    return pd.DataFrame({"ImageID": ids, "path": [str(p) for p in paths]})


def _info_text(info: Path) -> str:
    try:
        data = info.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {info}: {exc.strerror}; check its permissions") from None
    if not data.strip():
        raise DataError(f"{info} is empty; it must list ImageID,ans with one row per image")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is fine
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{info} line {line} is not UTF-8 text (byte {exc.start}); save "
                        "info.csv as UTF-8") from None


def _info_rows(info: Path) -> list[tuple[int, str]]:
    """``(line number, ImageID)`` of every row of info.csv, blank lines skipped."""
    reader = csv.reader(io.StringIO(_info_text(info), newline=""))
    try:
        header = next((row for row in reader if row), [])
        names = [h.strip() for h in header]
        if "ImageID" not in names:
            raise DataError(f"{info} has no ImageID column (columns: {', '.join(names)}); "
                            "the competition's info.csv is ImageID,ans")
        col, rows = names.index("ImageID"), []
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) > len(names):
                raise DataError(
                    f"{info} line {line} has {len(row)} fields, but its header "
                    f"({','.join(names)}) has {len(names)}; remove the extra field (quote an "
                    "ImageID that holds a comma)")
            name = row[col] if col < len(row) else ""
            if not name.strip():
                raise DataError(f"{info} line {line} has a blank ImageID; write the image's "
                                "file name there or remove the row")
            rows.append((line, name))
    except csv.Error as exc:
        raise DataError(f"{info} line {reader.line_num} is not valid CSV ({exc}); write it "
                        "as ImageID,ans with one row per image") from None
    return rows


def _shown(text: str) -> str:
    """``text`` quoted, its middle cut to ``...`` when longer than :data:`_SHOWN_CHARS`."""
    return repr(_clip(text))


def _clip(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``text``, or its start and end around ``...`` when longer than ``limit`` characters."""
    half = (limit - 3) // 2
    return text if len(text) <= limit else f"{text[:half]}...{text[-half:]}"


def _eval_image(images: Path, name: str, *, info: Path, line: int) -> Path:
    """``images / name``, refusing a name that would leave ``images``, is too long or holds a
    control character (checked lexically, before the file system sees it)."""
    where = f"{info} line {line}: ImageID {_shown(name)}"
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or "\0" in name or not parts:
        raise DataError(f"{where} is not a file inside {images} (an ImageID is a file name "
                        "under images/, with no '..' part and no leading '/'); fix the row or "
                        "remove it")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_IMAGE_ID_BYTES or any(len(p.encode("utf-8", "surrogateescape"))
                                        > MAX_NAME_BYTES for p in parts):
        raise DataError(f"{where} is too long ({size} bytes; a file name may be at most "
                        f"{MAX_NAME_BYTES} bytes, a whole ImageID at most {MAX_IMAGE_ID_BYTES}); "
                        "rename the image to a shorter name and fix the row, or remove the row")
    control = next((c for c in name if ord(c) < 32 or ord(c) == 127), None)
    if control is not None:
        raise DataError(f"{where} holds the control character {control!r}; rename the image "
                        "without it and fix the row, or remove the row")
    return images / name


def _checked(call, *, what: str, fix: str):
    """``call()``, with an OSError (or Python 3.11's symlink-loop RuntimeError) as a DataError."""
    try:
        return call()
    except RuntimeError:  # Path.resolve before Python 3.13: a loop of symbolic links
        why = "a loop of symbolic links"
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    raise DataError(f"{what} cannot be checked ({why}); {fix}")


def _eval_file(images_real: Path, path: Path, name: str, *, info: Path, line: int) -> bool:
    """Whether the eval image ``path`` is a file; refuses one whose links lead outside
    ``images_real`` (the resolved images folder) and turns any OSError into a DataError."""
    what = f"{info} line {line}: eval image images/{_clip(name)}"
    fix = "replace it with a regular image file inside images/, or remove the row"
    real = _checked(path.resolve, what=what, fix=fix)
    if not real.is_relative_to(images_real):
        target = _clip(str(real), _SHOWN_TARGET_CHARS)
        raise DataError(f"{what} is a link to {target}, outside images/; copy the file into "
                        "images/ instead of linking to it")
    return bool(_checked(real.is_file, what=what, fix=fix))
