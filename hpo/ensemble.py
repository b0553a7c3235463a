"""Promotion: turn a study's best trials into an ensemble manifest (members, weights, lineage).

Every completed trial keeps its validation probabilities, so ``hpo promote`` can choose members
on the validation set without running a model: greedy forward selection with replacement
(Caruana et al., 2004, "Ensemble selection from libraries of models") or plain top-k.

Honest figures: the validation people are split into two halves. Members and weights are chosen
on half A (``select``) and the ensemble is scored on half B (``report``), which played no part in
the choice; the gain over the best single model is quoted on B.

The manifest ``<artifacts>/ensembles/<name>.json`` records for each member the trial, its
parameters, weight, the stored ``best.pt`` (absolute path, path inside the artifact folder and
sha256) and its preprocessing, so ``hpo predict`` can check that nothing changed since.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sklearn.metrics import f1_score

from hpo.artifacts import ArtifactPaths
from hpo.errors import EnsembleError
from hpo.manifest import (
    MANIFEST_FORMAT,
    NAME_PATTERN,
    ensembles_dir,
    file_sha256,
    manifest_table,
    write_json_atomic,
)
from hpo.storage import mask_url, resolve_storage_url, with_retries

__all__ = [
    "IMAGES_PER_PERSON",
    "PromoteResult",
    "greedy_select",
    "topk_select",
    "pick_weights",
    "macro_f1",
    "person_halves",
    "promote",
]

log = logging.getLogger("hpo")

IMAGES_PER_PERSON = 7
# Macro-F1 moves in steps of about 1/(18 * N); anything smaller is float noise, not a gain.
_MIN_GAIN = 1e-12

Score = Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------------------------------------
# selection


def macro_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    """Macro-F1 of the argmax of ``probs`` (N, C) against ``labels`` (N,): the competition score.

    Same definition as :func:`trainer.metrics.classification_metrics`'s ``f1`` (scikit-learn,
    classes present in labels or predictions, zero_division=0).
    """
    pred = np.asarray(probs).argmax(axis=1)
    return float(f1_score(np.asarray(labels), pred, average="macro", zero_division=0))


def _stack(probs: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    if len(probs) == 0:
        raise EnsembleError("no candidate probabilities to select from; promote needs at "
                            "least one completed trial")
    shapes = {np.shape(p) for p in probs}
    if len(shapes) != 1:
        raise EnsembleError(f"candidate probabilities have different shapes {sorted(shapes)}; "
                            "every candidate must score the same validation images")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])
    if stack.ndim != 3 or stack.shape[1] != len(labels):
        raise EnsembleError(f"probabilities of shape {stack.shape[1:]} do not match "
                            f"{len(labels)} labels; pass (N, classes) arrays for N labels")
    return stack


def greedy_select(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    max_members: int,
    max_picks: int | None = None,
    score: Score | None = None,
) -> list[int]:
    """Greedy forward selection with replacement (Caruana et al., 2004).

    Start from the best single model. Each round tries adding every model, including ones
    already picked, to the running average of the picked models' probabilities and keeps the
    addition that raises ``score`` most. Selection stops when no addition raises the score
    strictly, when ``max_picks`` picks are made, and never adds a new distinct model once
    ``max_members`` distinct ones are in (it may still re-pick those). A model picked k times
    out of n has weight k/n (:func:`pick_weights`). Ties go to the lower index, so order
    candidates best first.

    Args:
        probs: one (N, C) probability matrix per candidate model, rows aligned with ``labels``.
        labels: the N true classes.
        max_members: the most distinct models in the ensemble (>= 1).
        max_picks: the most picks in all (default ``3 * max_members``).
        score: higher is better; default :func:`macro_f1`.

    Returns:
        The picked candidate indices in pick order, with repeats.

    Raises:
        EnsembleError: no candidates, mismatched shapes, or ``max_members`` < 1.
    """
    if max_members < 1:
        raise EnsembleError(f"max_members is {max_members}, but must be >= 1")
    stack = _stack(probs, labels)
    score = score or macro_f1
    limit = 3 * max_members if max_picks is None else max(1, max_picks)
    singles = [score(p, labels) for p in stack]
    first = int(np.argmax(singles))  # first maximum: the lower index wins ties
    picks, total, best = [first], stack[first].copy(), singles[first]
    while len(picks) < limit:
        chosen = set(picks)
        gain_to, gain_index = best + _MIN_GAIN, None
        for i in range(len(stack)):
            if i not in chosen and len(chosen) >= max_members:
                continue
            s = score((total + stack[i]) / (len(picks) + 1), labels)
            if s > gain_to:
                gain_to, gain_index = s, i
        if gain_index is None:
            break
        picks.append(gain_index)
        total += stack[gain_index]
        best = gain_to
    return picks


def topk_select(
    probs: Sequence[np.ndarray],
    labels: np.ndarray,
    *,
    k: int,
    score: Score | None = None,
) -> list[int]:
    """The ``k`` candidates with the best single ``score`` (ties: lower index), equal weights.

    Args:
        probs: one (N, C) probability matrix per candidate, rows aligned with ``labels``.
        labels: the N true classes.
        k: how many (>= 1; fewer when there are fewer candidates).
        score: higher is better; default :func:`macro_f1`.

    Returns:
        The chosen indices, best first, each once.

    Raises:
        EnsembleError: no candidates, mismatched shapes, or ``k`` < 1.
    """
    if k < 1:
        raise EnsembleError(f"k is {k}, but must be >= 1")
    stack = _stack(probs, labels)
    score = score or macro_f1
    singles = [score(p, labels) for p in stack]
    return sorted(range(len(stack)), key=lambda i: (-singles[i], i))[:k]


def pick_weights(picks: Sequence[int]) -> dict[int, float]:
    """Weights from picks with repeats: picks of a model / all picks, in first-pick order.

    Raises:
        EnsembleError: ``picks`` is empty.
    """
    if not picks:
        raise EnsembleError("no picks to weight; selection chose no model")
    counts = Counter(picks)
    return {i: counts[i] / len(picks) for i in dict.fromkeys(picks)}


def person_halves(n_rows: int, *, per_person: int = IMAGES_PER_PERSON) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
    """Split validation rows into two halves by person, deterministically.

    ``trainer.prepare_data`` orders validation rows person by person (people sorted by folder
    name, each person's 7 images together), and trial artifacts keep only probabilities and
    labels, not paths. So row ``r`` belongs to person group ``r // 7``; even groups form half A
    (selection), odd groups half B (report). A person never straddles the halves unless an
    unreadable image was dropped from validation, which shifts later groups by one row.

    Args:
        n_rows: validation rows.
        per_person: images per person.

    Returns:
        Row indices of half A and of half B.

    Raises:
        EnsembleError: fewer than two people's worth of rows.
    """
    groups = np.arange(n_rows) // per_person
    if n_rows == 0 or groups[-1] < 1:
        raise EnsembleError(f"the validation set has {n_rows} images, fewer than 2 people; "
                            "promotion selects on one half of the people and reports on the "
                            "other: raise data.val_fraction in the study file")
    return np.flatnonzero(groups % 2 == 0), np.flatnonzero(groups % 2 == 1)


# ---------------------------------------------------------------------------------------------
# promote


@dataclass(frozen=True)
class PromoteResult:
    """What :func:`promote` made: the manifest (as written) and where it is."""

    name: str
    manifest_path: Path
    manifest: dict[str, Any]

    def table(self) -> str:
        """Members with weights and single-model F1 on both halves, the ensemble, the gain."""
        return manifest_table(self.manifest)


def _ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = with_retries(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                        what="reading trials")
    done = [t for t in done if t.value is not None]
    if not done:
        raise EnsembleError(f"study {study.study_name} has no completed trial; run hpo launch "
                            f"--study {study.study_name} first")
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (sign * t.value, t.number))


@dataclass
class _Candidate:
    trial: optuna.trial.FrozenTrial
    probs: np.ndarray
    checkpoint: Path


def _candidates(ranked: list[optuna.trial.FrozenTrial], store: ArtifactPaths, *,
                top: int) -> tuple[list[_Candidate], np.ndarray]:
    best = ranked[0]
    ref_hash = best.user_attrs.get("val_hash")
    out: list[_Candidate] = []
    labels: np.ndarray | None = None
    for t in ranked:
        if len(out) >= top:
            break
        if t.user_attrs.get("val_hash") != ref_hash:
            log.warning("trial %d left out of the ensemble: it validated on other images "
                        "(val_hash %s, best trial %d has %s)", t.number,
                        t.user_attrs.get("val_hash"), best.number, ref_hash)
            continue
        try:
            probs = np.load(store.stored_path(t, "val_probs.npy"))
            y = np.load(store.stored_path(t, "val_labels.npy"))
            checkpoint = store.stored_path(t, "best.pt")
        except EnsembleError as exc:
            if t is best:
                raise  # the best trial must be there: most likely the wrong --artifacts
            log.warning("trial %d left out of the ensemble: %s", t.number, exc)
            continue
        if labels is None:
            labels = y
        if probs.ndim != 2 or len(probs) != len(labels) or not np.array_equal(y, labels):
            log.warning("trial %d left out of the ensemble: its validation probabilities %s "
                        "do not match trial %d's %d labels", t.number, probs.shape,
                        best.number, len(labels))
            continue
        out.append(_Candidate(t, probs, checkpoint))
    assert labels is not None  # the best trial is always a candidate or raised above
    return out, labels


def _member_record(c: _Candidate, *, weight: float, picks: int, f1_a: float, f1_b: float,
                   root: Path) -> dict[str, Any]:
    from trainer import load_checkpoint

    ckpt = load_checkpoint(c.checkpoint)
    cfg = ckpt["config"]
    data = cfg.get("data", {})
    try:
        relative = c.checkpoint.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        relative = None
    return {
        "trial": c.trial.number,
        "model": cfg.get("model", {}).get("name", "?"),
        "weight": weight,
        "picks": picks,
        "f1_select": f1_a,
        "f1_report": f1_b,
        "value": c.trial.value,
        "params": dict(c.trial.params),
        "metrics": dict(c.trial.user_attrs.get("metrics") or {}),
        "best_epoch": c.trial.user_attrs.get("best_epoch"),
        "checkpoint": str(c.checkpoint.resolve()),
        "artifact": relative,
        "sha256": file_sha256(c.checkpoint),
        "preprocessing": {"img_size": data.get("img_size"), "crop": data.get("crop"),
                          "mean": list(ckpt["mean"]), "std": list(ckpt["std"])},
    }


def _check_promote_args(name: str, method: str, max_members: int, top: int) -> None:
    if not NAME_PATTERN.match(name or ""):
        raise EnsembleError(f"ensemble name {name!r} is not allowed; use letters, digits, '.', "
                            "'_' and '-', starting with a letter or digit")
    if method not in ("greedy", "topk"):
        raise EnsembleError(f"method is {method!r}, but must be greedy or topk")
    if max_members < 1 or top < 1:
        raise EnsembleError(f"max_members is {max_members} and top is {top}; both must be >= 1")


@dataclass
class _Chosen:
    """A selection and its scores: on half A (select), half B (report) and all rows."""

    cands: list[_Candidate]
    picks: list[int]
    weights: dict[int, float]
    half_a: np.ndarray
    half_b: np.ndarray
    single_a: list[float]
    single_b: list[float]
    f1: dict[str, float]


def _choose(cands: list[_Candidate], labels: np.ndarray, *, method: str,
            max_members: int) -> _Chosen:
    half_a, half_b = person_halves(len(labels))
    probs_a = [c.probs[half_a] for c in cands]
    if method == "greedy":
        picks = greedy_select(probs_a, labels[half_a], max_members=max_members)
    else:
        picks = topk_select(probs_a, labels[half_a], k=max_members)
    weights = pick_weights(picks)

    def f1_on(probs: np.ndarray, rows: np.ndarray | None = None) -> float:
        return macro_f1(probs if rows is None else probs[rows],
                        labels if rows is None else labels[rows])

    ens = sum(w * cands[i].probs.astype(np.float64) for i, w in weights.items())
    return _Chosen(
        cands=cands, picks=picks, weights=weights, half_a=half_a, half_b=half_b,
        single_a=[f1_on(c.probs, half_a) for c in cands],
        single_b=[f1_on(c.probs, half_b) for c in cands],
        f1={"select": f1_on(ens, half_a), "report": f1_on(ens, half_b), "all": f1_on(ens)},
    )


def _split_record(half_a: np.ndarray, half_b: np.ndarray) -> dict[str, Any]:
    return {
        "rule": f"validation rows in person groups of {IMAGES_PER_PERSON} (row // "
                f"{IMAGES_PER_PERSON}); even groups = half A (select), odd = half B (report)",
        "select_images": int(len(half_a)), "report_images": int(len(half_b)),
        "select_people": int(-(-len(half_a) // IMAGES_PER_PERSON)),
        "report_people": int(-(-len(half_b) // IMAGES_PER_PERSON)),
    }


def _manifest(study: optuna.Study, c: _Chosen, *, name: str, method: str, max_members: int,
              top: int, storage: str | None, root) -> dict[str, Any]:
    from hpo.objective import library_versions

    counts = Counter(c.picks)
    best = int(np.argmax(c.single_a))
    members = [
        _member_record(c.cands[i], weight=w, picks=counts[i], f1_a=c.single_a[i],
                       f1_b=c.single_b[i], root=root)
        for i, w in c.weights.items()
    ]
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT, "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "study": study.study_name, "storage": mask_url(resolve_storage_url(storage)),
        "artifacts": str(root.resolve()), "method": method, "max_members": max_members,
        "top": top, "candidates": len(c.cands),
        "candidate_trials": [x.trial.number for x in c.cands],
        "val_hash": c.cands[0].trial.user_attrs.get("val_hash"),
        "split": _split_record(c.half_a, c.half_b),
        "f1": c.f1,
        "best_single": {"trial": c.cands[best].trial.number, "f1_select": c.single_a[best],
                        "f1_report": c.single_b[best]},
        "gain_report": c.f1["report"] - c.single_b[best],
        "picks": [c.cands[i].trial.number for i in c.picks],
        "members": members,
        "versions": library_versions(),
    }
    # A JSON round trip, so what the caller gets equals what load_manifest reads back.
    return json.loads(json.dumps(manifest, default=str))


def promote(
    study: optuna.Study,
    *,
    name: str,
    method: Literal["greedy", "topk"] = "greedy",
    max_members: int = 5,
    top: int = 20,
    storage: str | None = None,
    artifacts: str | os.PathLike | None = None,
) -> PromoteResult:
    """Choose an ensemble from a study's best trials and write its manifest.

    Candidates are the ``top`` best COMPLETE trials that validated on the same images as the
    best trial (same ``val_hash``; others are left out with a logged warning). Members and
    weights are chosen on half A of the validation people (:func:`person_halves`) with
    :func:`greedy_select` or :func:`topk_select`; the ensemble, each member and the best single
    model on A are scored on half B too. The manifest goes to
    ``<artifacts>/ensembles/<name>.json`` (replacing one of the same name, atomically) and a
    summary to the study's user attribute ``ensemble:<name>``.

    Args:
        study: the loaded study.
        name: ensemble name (letters, digits, ``.``, ``_``, ``-``).
        method: ``greedy`` or ``topk``.
        max_members: most distinct members (greedy) or k (topk).
        top: how many of the best completed trials are candidates.
        storage: the storage URL the study came from (recorded with its password masked).
        artifacts: the artifact folder the study's workers used.

    Returns:
        The manifest and its path; ``.table()`` prints the result.

    Raises:
        EnsembleError: a bad name or method, no completed trial, the best trial's files
            missing from the artifact folder, or a validation set of fewer than 2 people.
    """
    _check_promote_args(name, method, max_members, top)
    store = ArtifactPaths(artifacts)
    cands, labels = _candidates(_ranked(study), store, top=top)
    chosen = _choose(cands, labels, method=method, max_members=max_members)
    manifest = _manifest(study, chosen, name=name, method=method, max_members=max_members,
                         top=top, storage=storage, root=store.root)
    path = ensembles_dir(store.root) / f"{name}.json"
    write_json_atomic(manifest, path)
    summary = {
        "created": manifest["created"], "method": method,
        "members": [[x["trial"], round(x["weight"], 4)] for x in manifest["members"]],
        "f1_select": round(manifest["f1"]["select"], 5),
        "f1_report": round(manifest["f1"]["report"], 5),
        "gain_report": round(manifest["gain_report"], 5), "manifest": str(path.resolve()),
    }
    with_retries(lambda: study.set_user_attr(f"ensemble:{name}", summary),
                 what="recording the ensemble on the study")
    return PromoteResult(name=name, manifest_path=path.resolve(), manifest=manifest)
