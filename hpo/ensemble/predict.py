"""Prediction: a submission (``ImageID,ans`` in info.csv order) from an ensemble or one trial.

The manifest must be as ``hpo promote`` sealed it (no field edited, added or removed:
:func:`hpo.store.manifest.load_manifest`) and every member's checkpoint is checked against it
(exists, same sha256) before any image is read, each member predicts with its own
preprocessing (``trainer.predict`` reads it from the checkpoint), and the members are combined
by weighted soft or hard voting.
The CSV appears all at once (temporary file + rename) or not at all.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from hpo.errors import EnsembleError
from hpo.run.study import load
from hpo.store.artifacts import ArtifactPaths, file_sha256
from hpo.store.manifest import find_manifest, load_manifest
from hpo.store.url import StorageURL

__all__ = ["Member", "resolve_members", "verify_members", "member_probs", "combine",
           "predict_submission"]

# Votes within this of the top count as a tie (weights are float fractions such as 1/3).
_TIE = 1e-9


@dataclass(frozen=True)
class Member:
    """One model of a prediction: its trial, checkpoint file, weight and expected sha256."""

    trial: int
    checkpoint: Path
    weight: float
    sha256: str | None = None
    model: str = ""
    # a refit member's fold model, or "all" for its full model (each weighs the member's /
    # its number of models)
    fold: int | str | None = None

    @property
    def label(self) -> str:
        return f"trial {self.trial}" + ("" if self.fold is None else f" fold {self.fold}")


def _local(root: Path, record: dict) -> Path:
    """A manifest's checkpoint: in the manifest's own artifact folder first (a copied or moved
    folder keeps working), else where promotion found it."""
    local = root / record["artifact"] if record.get("artifact") else None
    if local is not None and not local.resolve().is_relative_to(root.resolve()):
        raise EnsembleError(f"ensemble manifest in {root} names artifact "
                            f"{record['artifact']!r} outside its folder; re-run hpo promote")
    return local if local is not None and local.is_file() else Path(record["checkpoint"])


def _models_of(x: dict, root: Path) -> list[Member]:
    """One manifest member's models: its checkpoint, or a refit member's fold models."""
    common = {"trial": int(x["trial"]), "model": str(x.get("model", ""))}
    folds = x.get("folds")
    if not folds:
        return [Member(weight=float(x["weight"]), sha256=str(x["sha256"]),
                       checkpoint=_local(root, x), **common)]
    models = [(int(f["fold"]), f) for f in folds]
    if x.get("full"):  # hpo refit --full: the model of every person, weighing as one fold
        models.append(("all", x["full"]))
    return [Member(weight=float(x["weight"]) / len(models), sha256=str(f["sha256"]),
                   checkpoint=_local(root, f), fold=fold, **common) for fold, f in models]


def _manifest_members(ensemble: str, artifacts: str | os.PathLike | None) -> list[Member]:
    path = find_manifest(ensemble, artifacts=artifacts)
    manifest = load_manifest(path)
    root = path.parent.parent
    members = []
    for x in manifest["members"]:
        try:
            members += _models_of(x, root)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise EnsembleError(f"ensemble manifest {path} has a member without trial, "
                                "weight, checkpoint and sha256; re-run hpo promote") from None
    return members


def _trial_member(study: str, number: int, storage: StorageURL | str | None,
                  artifacts: str | os.PathLike | None) -> Member:
    opened = load(study, storage=storage)
    name = opened.study_name
    trials = {t.number: t for t in opened.get_trials(deepcopy=False)}
    if number not in trials:
        shown = f"0..{max(trials)}" if trials else "none yet"
        raise EnsembleError(f"study {name} has no trial {number} (trials: {shown}); see "
                            f"hpo status --study {name}")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise EnsembleError(f"trial {number} of study {name} is {trial.state.name}, not "
                            f"COMPLETE; pick a completed trial (hpo status --study {name})")
    checkpoint = ArtifactPaths(artifacts).stored_path(trial, "best.pt")
    return Member(trial=number, checkpoint=checkpoint, weight=1.0)


def resolve_members(
    *,
    ensemble: str | None = None,
    study: str | None = None,
    trial: int | None = None,
    storage: StorageURL | str | None = None,
    artifacts: str | os.PathLike | None = None,
) -> list[Member]:
    """The models to predict with: an ensemble's members, or one completed trial (weight 1).

    Args:
        ensemble: an ensemble name or manifest path; or None with ``study`` and ``trial``.
        study: a study name or study file (as for ``hpo status``).
        trial: the trial number within ``study``.
        storage: the study storage (for ``study``/``trial``; an ensemble needs none).
        artifacts: the artifact folder.

    Returns:
        The members; their checkpoints are not checked yet (:func:`verify_members`).

    Raises:
        EnsembleError: neither or both of ensemble and study/trial, an unknown ensemble or
            trial, a trial that is not COMPLETE or has no stored checkpoint.
    """
    if (ensemble is None) == (study is None and trial is None):
        raise EnsembleError("give either an ensemble, or a study and a trial number")
    if ensemble is not None:
        return _manifest_members(ensemble, artifacts)
    if study is None or trial is None:
        raise EnsembleError("a study and a trial number go together (--study NAME --trial N)")
    return [_trial_member(study, trial, storage, artifacts)]


def verify_members(members: Sequence[Member]) -> None:
    """Check that every checkpoint exists and, where the manifest recorded one, its sha256.

    Raises:
        EnsembleError: a missing checkpoint, or one whose bytes changed since promotion.
    """
    for m in members:
        if not m.checkpoint.is_file():
            raise EnsembleError(f"checkpoint {m.checkpoint} of {m.label} does not exist; "
                                "point --artifacts at the folder the study used, or re-run "
                                "hpo promote")
        if m.sha256 is not None:
            actual = file_sha256(m.checkpoint)
            if actual != m.sha256:
                raise EnsembleError(f"checkpoint {m.checkpoint} of {m.label} changed "
                                    f"since promotion (sha256 {actual[:16]}, manifest "
                                    f"{m.sha256[:16]}); re-run hpo promote")


def member_probs(
    members: Sequence[Member],
    paths: Sequence[str],
    *,
    tta: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    stream: TextIO | None = None,
) -> list[np.ndarray]:
    """Each member's class probabilities (N, 18) for ``paths``, with a line of progress each.

    Args:
        members: the models (see :func:`resolve_members`).
        paths: image files.
        tta: also predict the horizontally flipped image and average.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        stream: where progress goes (default stderr).

    Returns:
        One probability matrix per member, in member order.

    Raises:
        DataError: an unusable checkpoint, or a missing or unreadable image.
    """
    from trainer import load_checkpoint, predict

    stream = stream if stream is not None else sys.stderr
    batches = -(-len(paths) // batch_size)
    out = []
    for k, m in enumerate(members, 1):
        ckpt = load_checkpoint(m.checkpoint)
        name = m.model or ckpt["config"].get("model", {}).get("name", "?")
        print(f"[{k}/{len(members)}] {m.label} ({name}, weight {m.weight:.3f}): "
              f"{len(paths)} images in {batches} batch(es){' + flip' if tta else ''} ...",
              end="", file=stream, flush=True)
        start = time.perf_counter()
        probs = predict(ckpt, list(paths), tta_flip=tta, batch_size=batch_size, device=device)
        seconds = time.perf_counter() - start
        print(f" {seconds:.1f} s, {len(paths) / max(seconds, 1e-9):.0f} images/s", file=stream,
              flush=True)
        out.append(np.asarray(probs, dtype=np.float64))
    return out


def combine(probs: Sequence[np.ndarray], weights: Sequence[float], *,
            vote: Literal["soft", "hard"] = "soft") -> np.ndarray:
    """Combine member probabilities into one class per row.

    ``soft``: argmax of the weighted mean of the probabilities. ``hard``: each member casts its
    weight for its argmax class; the class with the most weight wins, and a tie between classes
    goes to the tied class with the highest weighted mean probability.

    Args:
        probs: one (N, C) matrix per member.
        weights: one weight per member (normalised here).
        vote: ``soft`` or ``hard``.

    Returns:
        The (N,) predicted classes.

    Raises:
        EnsembleError: an unknown vote, no members, mismatched shapes or weights.
    """
    if vote not in ("soft", "hard"):
        raise EnsembleError(f"vote is {vote!r}, but must be soft or hard")
    if not probs or len(probs) != len(weights):
        raise EnsembleError(f"{len(probs)} probability matrices for {len(weights)} weights; "
                            "give one weight per member")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise EnsembleError(f"member weights {w.tolist()} must be >= 0 with a positive sum")
    w = w / w.sum()
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    soft = np.tensordot(w, stack, axes=1)
    if vote == "soft":
        return soft.argmax(axis=1)
    rows = np.arange(stack.shape[1])
    votes = np.zeros_like(soft)
    for wi, p in zip(w, stack):
        np.add.at(votes, (rows, p.argmax(axis=1)), wi)
    tied = votes >= votes.max(axis=1, keepdims=True) - _TIE
    return np.where(tied, soft, -np.inf).argmax(axis=1)


def _write_csv_atomic(frame: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def predict_submission(
    *,
    ensemble: str | None = None,
    study: str | None = None,
    trial: int | None = None,
    eval_dir: str | os.PathLike,
    out: str | os.PathLike,
    tta: bool = False,
    vote: Literal["soft", "hard"] = "soft",
    batch_size: int = 256,
    device: str = "auto",
    storage: StorageURL | str | None = None,
    artifacts: str | os.PathLike | None = None,
    stream: TextIO | None = None,
) -> pd.DataFrame:
    """Predict the eval set with an ensemble or one trial and write the submission CSV.

    Args:
        ensemble: an ensemble name (``hpo ensembles``) or manifest path; or None with
            ``study`` and ``trial``.
        study: a study name or file, with ``trial``: predict with that trial's best.pt.
        trial: the trial number.
        eval_dir: the eval folder (``info.csv`` and ``images/``).
        out: the CSV to write (``ImageID,ans``, rows in info.csv order).
        tta: average with the horizontally flipped image.
        vote: ``soft`` (weighted mean probabilities) or ``hard`` (weighted majority).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        storage: the study storage (for ``study``/``trial``; an ensemble needs none).
        artifacts: the artifact folder.
        stream: where progress goes (default stderr).

    Returns:
        The submission: ``ImageID`` and ``ans`` (0..17) in info.csv order.

    Raises:
        EnsembleError: unknown ensemble or trial, a manifest edited since promotion (the
            message names the field), missing or altered checkpoint, bad vote.
        DataError: no or empty info.csv, duplicate ImageID, missing or unreadable image.
    """
    from trainer import read_eval

    if vote not in ("soft", "hard"):
        raise EnsembleError(f"vote is {vote!r}, but must be soft or hard")
    members = resolve_members(ensemble=ensemble, study=study, trial=trial, storage=storage,
                              artifacts=artifacts)
    verify_members(members)
    frame = read_eval(eval_dir)
    probs = member_probs(members, list(frame["path"]), tta=tta, batch_size=batch_size,
                         device=device, stream=stream)
    labels = combine(probs, [m.weight for m in members], vote=vote)
    submission = pd.DataFrame({"ImageID": frame["ImageID"].to_numpy(),
                               "ans": labels.astype(np.int64)})
    _write_csv_atomic(submission, Path(out))
    return submission
