"""Where trials keep their files: a working folder per trial and Optuna's artifact store.

::

    ARTIFACTS/store/<artifact id>                 optuna.artifacts (the dashboard shows these)
    ARTIFACTS/trials/<study>/<trial number>/      the running trial's output_dir (last.pt ...)

A finished trial uploads its config, best and last checkpoints, validation probabilities and
labels and a confusion-matrix PNG to the store and records their ids in the user attribute
``artifacts`` and, for the dashboard, one trial system attribute ``artifacts:<id>`` per file (the
record ``optuna.artifacts.upload_artifact`` writes); its working folder then keeps only small
files. A trial whose worker died keeps its ``last.pt`` in the working folder, where the retry
finds it.
"""
from __future__ import annotations

import json
import mimetypes
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

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

__all__ = [
    "ArtifactPaths",
    "TRIAL_FILES",
    "confusion_png",
    "default_artifacts_dir",
]

TRIAL_FILES = ("config.yaml", "best.pt", "last.pt", "val_probs.npy", "val_labels.npy",
               "confusion.png")
_MIME = {".yaml": "application/yaml", ".png": "image/png", ".npy": "application/octet-stream",
         ".pt": "application/octet-stream"}
# The system attribute key prefix of an artifact record: optuna.artifacts writes and reads it
# (upload_artifact, get_all_artifact_meta, the dashboard) but does not export the constant.
_ARTIFACT_ATTR_PREFIX = "artifacts:"


def default_artifacts_dir() -> Path:
    """``$HPO_ARTIFACTS``, else ``./artifacts``."""
    return Path(os.environ.get("HPO_ARTIFACTS") or "artifacts")


class ArtifactPaths:
    """The artifact folder of a deployment (shared by workers, promote and the dashboard)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root else default_artifacts_dir()
        (self.root / "store").mkdir(parents=True, exist_ok=True)
        self.store = FileSystemArtifactStore(str(self.root / "store"))

    def trial_dir(self, study_name: str, number: int) -> Path:
        """The working folder of one trial (its trainer ``output_dir``)."""
        return self.root / "trials" / study_name / str(number)

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

    def store_files(self, folder: Path) -> tuple[dict[str, str], dict[str, str]]:
        """Copy the trial's files from ``folder`` into the store, without touching the database.

        :meth:`upload` costs one database transaction per file; this returns the records
        instead, for the caller to write together with the trial's other attributes. The files
        are in the store before any record names them, so no reader finds a record without
        its file.

        Args:
            folder: the trial's working folder (its trainer ``output_dir``).

        Returns:
            ({file name: artifact id}, {system attribute key: value}): the second holds one
            ``artifacts:<id>`` record per file, in the JSON form ``upload_artifact`` writes.
        """
        ids: dict[str, str] = {}
        records: dict[str, str] = {}
        for name in TRIAL_FILES:
            path = folder / name
            if not path.is_file():
                continue
            artifact_id = str(uuid.uuid4())
            with open(path, "rb") as stream:
                self.store.write(artifact_id, stream)
            guess_type, guess_encoding = mimetypes.guess_type(name)
            meta = ArtifactMeta(artifact_id=artifact_id, filename=name,
                                mimetype=_MIME.get(path.suffix) or guess_type
                                or "application/octet-stream",
                                encoding=guess_encoding)
            ids[name] = artifact_id
            records[_ARTIFACT_ATTR_PREFIX + artifact_id] = json.dumps(asdict(meta))
        return ids, records

    def fetch(self, trial: optuna.trial.FrozenTrial, name: str, dest: Path) -> Path:
        """Copy one stored file of a finished trial to ``dest``.

        Raises:
            EnsembleError: the trial recorded no such file, or the store lost it.
        """
        ids = trial.user_attrs.get("artifacts") or {}
        if name not in ids:
            raise EnsembleError(f"trial {trial.number} has no stored {name}; it did not finish "
                                "or ran with another artifact folder (--artifacts)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_artifact(artifact_store=self.store, file_path=str(dest),
                              artifact_id=ids[name])
        except Exception as exc:  # the store raises its own not-found type
            raise EnsembleError(f"trial {trial.number}'s {name} is missing from the artifact "
                                f"store {self.root / 'store'} ({type(exc).__name__}); point "
                                "--artifacts at the folder the study used") from None
        return dest

    def stored_path(self, trial: optuna.trial.FrozenTrial, name: str) -> Path:
        """Where the store keeps a file (for reading in place, without a copy)."""
        ids = trial.user_attrs.get("artifacts") or {}
        if name not in ids:
            raise EnsembleError(f"trial {trial.number} has no stored {name}; it did not finish "
                                "or ran with another artifact folder (--artifacts)")
        path = self.root / "store" / ids[name]
        if not path.is_file():
            raise EnsembleError(f"trial {trial.number}'s {name} is missing from {path}; point "
                                "--artifacts at the folder the study used")
        return path

    def tidy(self, folder: Path) -> None:
        """Drop the working copies of uploaded checkpoints (the store has them)."""
        for name in ("best.pt", "last.pt"):
            (folder / name).unlink(missing_ok=True)

    def remove_trials(self, study_name: str) -> None:
        shutil.rmtree(self.root / "trials" / study_name, ignore_errors=True)


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
