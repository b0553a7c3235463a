"""Where trials keep their files: a working folder per trial and Optuna's artifact store.

::

    ARTIFACTS/store/<artifact id>                 optuna.artifacts (the dashboard shows these)
    ARTIFACTS/trials/<study>/<trial number>/      the running trial's output_dir (last.pt ...)

A completed trial stores its config, best checkpoint, validation probabilities and labels and a
confusion-matrix PNG and records their ids in the trial system attribute ``hpo:artifacts`` (see
:mod:`hpo.store.records`; older studies: the user attribute ``artifacts``), the checkpoint's
sha256 in ``hpo:sha256`` and, for the dashboard, one trial system attribute ``artifacts:<id>``
per file (the record ``optuna.artifacts.upload_artifact`` writes); its working folder then keeps
only small files. Every reader of a stored checkpoint (:meth:`ArtifactPaths.stored_path`,
:meth:`ArtifactPaths.fetch`) checks it against that sha256.

Before a file goes into the store its artifact id is written to the trial folder's pending
list ``stored.json``: a worker killed between storing and recording leaves ids that no record
names, and the trial's retry removes those files (:func:`sweep_pending`).

Disk is bounded (docs/architecture.md): a checkpoint is kept only while something may need it. A
completed trial keeps one ``best.pt`` (in the store) and no ``last.pt``; a pruned trial, or one
that failed on its own, none. A trial stopped by Ctrl-C/SIGTERM or whose worker died keeps its
``best.pt`` and ``last.pt`` in the working folder, where its retry resumes from them; they go
when that retry ends. ``hpo gc`` removes stored checkpoints no ensemble and no top trial needs.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import mimetypes
import os
import shutil
import uuid
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import optuna
from optuna.artifacts import (
    ArtifactMeta,
    FileSystemArtifactStore,
    download_artifact,
    upload_artifact,
)
from PIL import Image, ImageDraw

from hpo.errors import EnsembleError
from hpo.store.records import ARTIFACT_ATTR_PREFIX, artifact_ids, recorded_sha256

__all__ = [
    "file_sha256",
    "CHECKPOINTS",
    "PENDING",
    "ArtifactPaths",
    "StoredFiles",
    "TRIAL_FILES",
    "checkpoint_files",
    "confusion_png",
    "default_artifacts_dir",
    "drop_checkpoints",
    "drop_partial_saves",
    "pending_ids",
    "sweep_pending",
    "trial_folder",
]

log = logging.getLogger("hpo")

# What a completed trial stores. Not last.pt: a completed trial is never resumed.
TRIAL_FILES = ("config.yaml", "best.pt", "val_probs.npy", "val_labels.npy", "confusion.png")
CHECKPOINTS = ("best.pt", "last.pt")
# Checkpoints moved into the store rather than copied (a hard link: no second copy on disk).
_MOVED = frozenset({"best.pt"})
# Files whose sha256 is recorded when the trial ends and checked by every reader.
_HASHED = frozenset({"best.pt"})
# The trial folder's list of artifact ids on their way into the store (see sweep_pending).
PENDING = "stored.json"
_MIME = {".yaml": "application/yaml", ".png": "image/png", ".npy": "application/octet-stream",
         ".pt": "application/octet-stream"}


def default_artifacts_dir() -> Path:
    """``$HPO_ARTIFACTS``, else ``./artifacts``."""
    return Path(os.environ.get("HPO_ARTIFACTS") or "artifacts")


def trial_folder(root: str | os.PathLike, study_name: str, number: int) -> Path:
    """The working folder of one trial under the artifact folder ``root``.

    Args:
        root: the artifact folder.
        study_name: the study's name.
        number: the trial's number.

    Returns:
        ``<root>/trials/<study>/<number>`` (it may not exist).
    """
    return Path(root) / "trials" / study_name / str(number)


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints in a trial's folder: ``best.pt``, ``last.pt`` and half-written saves.

    Args:
        folder: a trial's working folder.

    Returns:
        The paths that exist (``*.tmp``: a save cut short, by a kill or a full disk).
    """
    if not folder.is_dir():
        return []
    found = [folder / name for name in CHECKPOINTS if (folder / name).is_file()]
    return found + sorted(p for p in folder.glob("*.tmp") if p.is_file())


def drop_checkpoints(folder: Path) -> int:
    """Remove the checkpoints of a trial's folder (see :func:`checkpoint_files`).

    Args:
        folder: a trial's working folder.

    Returns:
        The bytes freed.
    """
    freed = 0
    for path in checkpoint_files(folder):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:  # someone else removed it first
            continue
        freed += size
    return freed


def drop_partial_saves(folder: Path) -> int:
    """Remove the half-written saves (``*.tmp``) a kill left in a trial's folder.

    ``best.pt`` and ``last.pt`` stay: a retry resumes from them.

    Returns:
        How many files went.
    """
    gone = 0
    for path in checkpoint_files(folder):
        if path.name.endswith(".tmp"):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # the retry goes on; hpo gc can remove it later
                log.warning("could not remove %s: %s", path, exc)
                continue
            gone += 1
    return gone


class StoredFiles(NamedTuple):
    """What :meth:`ArtifactPaths.store_files` put into the store, for the trial's records."""

    ids: dict[str, str]  # file name -> artifact id
    records: dict[str, str]  # system attribute "artifacts:<id>" -> upload_artifact's JSON
    sha256: dict[str, str]  # file name -> hex sha256 (the checkpoint)


class ArtifactPaths:
    """The artifact folder of a deployment (shared by workers, promote and the dashboard)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else default_artifacts_dir()
        (self.root / "store").mkdir(parents=True, exist_ok=True)
        self.store = FileSystemArtifactStore(str(self.root / "store"))

    def trial_dir(self, study_name: str, number: int) -> Path:
        """The working folder of one trial (its trainer ``output_dir``)."""
        return trial_folder(self.root, study_name, number)

    def upload(self, trial: optuna.Trial, folder: Path) -> dict[str, str]:
        """Upload the trial's files from ``folder``; returns {file name: artifact id}.

        Each file's record is its own database transaction; :meth:`store_files` leaves the
        records to the caller, to write in one.
        """
        ids = {}
        for name in TRIAL_FILES:
            path = folder / name
            if path.is_file():
                ids[name] = upload_artifact(artifact_store=self.store, file_path=str(path),
                                            study_or_trial=trial,
                                            mimetype=_MIME.get(path.suffix))
        return ids

    def store_files(self, folder: Path) -> StoredFiles:
        """Put the trial's files from ``folder`` into the store, without touching the database.

        :meth:`upload` costs one database transaction per file; this returns the records
        instead, for the caller to write together with the trial's other attributes. The files
        are in the store before any record names them, so no reader finds a record without
        its file; and their ids are in the folder's pending list (:data:`PENDING`) before the
        first file goes in, so files that no record ever names (the worker was killed before
        the records) can be found and removed (:func:`sweep_pending`). ``best.pt`` is
        hard-linked where the file system allows (one copy on disk once :meth:`tidy` drops the
        working name); the other files are copied.

        Args:
            folder: the trial's working folder (its trainer ``output_dir``).

        Returns:
            The artifact ids, one ``artifacts:<id>`` record per file in the JSON form
            ``upload_artifact`` writes, and the sha256 of the stored checkpoint.

        Raises:
            OSError: the store takes no file (read-only, full, not a folder); what this call
                had put in the store is removed again, the working folder is left as it was.
        """
        names = [name for name in TRIAL_FILES if (folder / name).is_file()]
        ids = {name: str(uuid.uuid4()) for name in names}
        _write_pending(folder, list(ids.values()))
        records: dict[str, str] = {}
        sha256: dict[str, str] = {}
        try:
            for name, artifact_id in ids.items():
                path = folder / name
                self._put(path, artifact_id)
                records[ARTIFACT_ATTR_PREFIX + artifact_id] = _record(name, path, artifact_id)
                if name in _HASHED:
                    sha256[name] = file_sha256(self.root / "store" / artifact_id)
        except OSError:
            sweep_pending(folder, self.root, named=())  # what this call stored, and the list
            raise
        return StoredFiles(ids, records, sha256)

    def _put(self, path: Path, artifact_id: str) -> None:
        if path.name in _MOVED:
            try:
                os.link(path, self.root / "store" / artifact_id)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
        with open(path, "rb") as stream:
            self.store.write(artifact_id, stream)

    def fetch(self, trial: optuna.trial.FrozenTrial, name: str, dest: Path) -> Path:
        """Copy one stored file of a finished trial to ``dest``.

        Raises:
            EnsembleError: the trial recorded no such file, the store lost it, or its bytes
                differ from the sha256 recorded when the trial ended (``dest`` is removed).
        """
        artifact_id = self._artifact_id(trial, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_artifact(artifact_store=self.store, file_path=str(dest),
                              artifact_id=artifact_id)
        except Exception as exc:  # the store raises its own not-found type
            raise EnsembleError(f"trial {trial.number}'s {name} is missing from the artifact "
                                f"store {self.root / 'store'} ({type(exc).__name__}); point "
                                "--artifacts at the folder the study used") from None
        try:
            _verify(trial, name, dest, shown=self.root / "store" / artifact_id)
        except EnsembleError:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def stored_path(self, trial: optuna.trial.FrozenTrial, name: str) -> Path:
        """Where the store keeps a file (for reading in place, without a copy).

        Raises:
            EnsembleError: the trial recorded no such file, the store lost it, or its bytes
                differ from the sha256 recorded when the trial ended.
        """
        path = self.root / "store" / self._artifact_id(trial, name)
        if not path.is_file():
            raise EnsembleError(f"trial {trial.number}'s {name} is missing from {path} (hpo gc "
                                "removed it, or this is not the study's artifact folder); "
                                "point --artifacts at the folder the study used, or use a "
                                "trial hpo gc kept (the top --keep-top and ensemble members)")
        _verify(trial, name, path, shown=path)
        return path

    def _artifact_id(self, trial: optuna.trial.FrozenTrial, name: str) -> str:
        artifact_id = artifact_ids(trial).get(name)
        if artifact_id is None:
            raise EnsembleError(f"trial {trial.number} has no stored {name}; it did not finish "
                                "or ran with another artifact folder (--artifacts)")
        return artifact_id

    def tidy(self, folder: Path) -> None:
        """Drop a completed trial's working checkpoints (the store has its ``best.pt``)."""
        drop_checkpoints(folder)

    def remove_trials(self, study_name: str) -> None:
        shutil.rmtree(self.root / "trials" / study_name, ignore_errors=True)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(trial: optuna.trial.FrozenTrial, name: str, path: Path, *, shown: Path) -> None:
    """The file's bytes are the ones the trial recorded (when it recorded a sha256)."""
    recorded = recorded_sha256(trial, name)
    if recorded is None:
        return  # a file not hashed, or a trial written before checkpoints were hashed
    actual = file_sha256(path)
    if actual != recorded:
        raise EnsembleError(
            f"trial {trial.number}'s {name} in {shown} changed after the trial ended (sha256 "
            f"{recorded[:16]} recorded, {actual[:16]} now); put the original file back, or "
            "use another trial (hpo promote leaves a changed trial out unless it is the best)")


def _write_pending(folder: Path, ids: list[str]) -> None:
    """Write the pending list all at once: a kill leaves the old list or the new one."""
    path = folder / PENDING
    tmp = folder / f".{PENDING}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"artifact_ids": ids}) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def pending_ids(folder: Path) -> list[str] | None:
    """The artifact ids on a trial folder's pending list (None: no list; []: unreadable)."""
    try:
        data = json.loads((folder / PENDING).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return []  # unreadable: written by no complete write (the list is replaced whole)
    ids = data.get("artifact_ids") if isinstance(data, dict) else None
    return [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []


def sweep_pending(folder: Path, root: Path, *, named: Collection[str]) -> int | None:
    """Remove the stored files a trial put into the store that no record names.

    The trial wrote their ids to its pending list (:data:`PENDING`) before storing them; a
    worker killed before the records leaves them orphaned. The pending list goes too.

    Args:
        folder: the trial's working folder.
        root: the artifact folder (its ``store/`` holds the files).
        named: the artifact ids the trial's records name (they stay).

    Returns:
        How many files were removed; None when a file could not be removed (the list then
        stays, for the next sweep); 0 when there was no list.
    """
    ids = pending_ids(folder)
    if ids is None:
        return 0
    gone = 0
    for artifact_id in set(ids) - set(named):
        if "/" in artifact_id or artifact_id in ("", ".", ".."):
            continue
        path = root / "store" / artifact_id
        try:
            if path.is_file():
                path.unlink()
                gone += 1
        except OSError as exc:
            log.warning("could not remove the orphaned upload %s: %s", path, exc)
            return None
    try:
        (folder / PENDING).unlink(missing_ok=True)
    except OSError as exc:  # harmless: the next sweep finds the files gone
        log.warning("could not remove %s: %s", folder / PENDING, exc)
        return None
    return gone


def _record(name: str, path: Path, artifact_id: str) -> str:
    guess_type, guess_encoding = mimetypes.guess_type(name)
    meta = ArtifactMeta(artifact_id=artifact_id, filename=name,
                        mimetype=_MIME.get(path.suffix) or guess_type
                        or "application/octet-stream",
                        encoding=guess_encoding)
    return json.dumps(asdict(meta))


def confusion_png(matrix: np.ndarray, path: Path, *, title: str = "") -> None:
    """Draw an 18x18 confusion matrix (rows true, columns predicted) as a PNG heat map."""
    n = len(matrix)
    cell, margin, top = 28, 36, 30
    size = (margin + n * cell + 4, top + margin + n * cell + 4)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 6), title or "confusion (rows true, columns predicted)", fill="black")
    row_sums = matrix.sum(axis=1, keepdims=True).clip(min=1)
    share = matrix / row_sums
    for i in range(n):
        y = top + margin + i * cell
        draw.text((4, y + 8), str(i), fill="black")
        draw.text((margin + i * cell + 6, top + 12), str(i), fill="black")
        for j in range(n):
            x = margin + j * cell
            v = float(share[i, j])
            shade = int(255 * (1 - v))
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255),
                           outline=(220, 220, 220))
            if matrix[i, j]:
                draw.text((x + 3, y + 8), str(int(matrix[i, j])),
                          fill="white" if v > 0.5 else "black")
    # Flat colours compress well at level 1 (16 KB, not 12), and it saves each trial ~3 ms.
    img.save(path, compress_level=1)
