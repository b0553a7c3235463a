"""The artifact folder, checked before anything is written: writable, with room for a trial.

``hpo launch`` checks the folder before the study is created (a read-only or missing mount is
one line, and no study, trial or file appears); each worker checks the free space before each
trial, so a full disk stops the worker with one line instead of failing a trial half-way.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hpo.errors import HpoError
from hpo.store.artifacts import default_artifacts_dir

__all__ = ["check_artifacts_writable", "check_room", "room_needed"]

# Room for the first trial of a study, before any checkpoint shows how large they are.
FIRST_TRIAL_BYTES = 64 * 2**20


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_artifacts_writable(artifacts: str | os.PathLike | None) -> Path:
    """Check that the artifact folder (or the folder it will be made in) takes files.

    Nothing is left behind: a probe file is made and removed in the folder that exists.

    Returns:
        The artifact folder.

    Raises:
        HpoError: not a folder, or not writable.
    """
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    if root.exists() and not root.is_dir():
        raise HpoError(f"artifact folder {root} is a file, not a folder; point --artifacts / "
                       "HPO_ARTIFACTS at a folder")
    here = _existing_parent(root)
    try:
        with tempfile.NamedTemporaryFile(dir=here, prefix=".hpo-write-check-"):
            pass
    except OSError as exc:
        raise HpoError(f"cannot write to the artifact folder {root} ({here}: "
                       f"{exc.strerror or exc}); make it writable or point --artifacts / "
                       "HPO_ARTIFACTS elsewhere") from None
    return root


def room_needed(root: Path) -> int:
    """Bytes a trial may write: twice the largest checkpoint stored so far (a best.pt and a
    last.pt live side by side while a trial runs), at least :data:`FIRST_TRIAL_BYTES`."""
    largest = 0
    store = root / "store"
    if store.is_dir():
        with os.scandir(store) as entries:
            for entry in entries:
                if entry.is_file():
                    largest = max(largest, entry.stat().st_size)
    return max(2 * largest, FIRST_TRIAL_BYTES)


def check_room(artifacts: str | os.PathLike | None) -> None:
    """Check that the artifact folder's disk has room for one more trial.

    Raises:
        HpoError: less free space than :func:`room_needed`.
    """
    root = Path(artifacts) if artifacts else default_artifacts_dir()
    need = room_needed(root)
    free = shutil.disk_usage(_existing_parent(root)).free
    if free < need:
        raise HpoError(f"the artifact folder {root} has {free / 2**20:.0f} MiB free, but a "
                       f"trial needs about {need / 2**20:.0f} MiB (two checkpoints); free some "
                       "space (hpo gc --study NAME removes checkpoints no one needs) or point "
                       "--artifacts elsewhere")
