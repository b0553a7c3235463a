"""Promotion: turn a study's best trials into an ensemble manifest (members, weights, lineage).

Every completed trial keeps its validation probabilities, so ``hpo promote`` can choose members
on the validation set without running a model: greedy forward selection with replacement
(Caruana et al., 2004, "Ensemble selection from libraries of models") or plain top-k.

Honest figures: the validation people are split into two halves. Members and weights are chosen
on half A (``select``) and the ensemble is scored on half B (``report``), which played no part in
the choice; the gain over the best single model is quoted on B.

The manifest ``<artifacts>/ensembles/<name>.json`` records for each member the trial, its
parameters, weight, the stored ``best.pt`` (absolute path, path inside the artifact folder and
sha256) and its preprocessing, so ``hpo predict`` can check that nothing changed since; the
manifest itself is sealed (``digest`` over every field, ``digests`` per field and member key,
:func:`hpo.store.manifest.seal_manifest`), so an edit to it is refused and named on reading.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo.ensemble.selection import (
    IMAGES_PER_PERSON,
    greedy_select,
    macro_f1,
    person_halves,
    pick_weights,
    topk_select,
)
from hpo.errors import EnsembleError
from hpo.run.refit_plan import fold_groups, full_trials, is_refit
from hpo.store.artifacts import ArtifactPaths, file_sha256
from hpo.store.manifest import (
    MANIFEST_FORMAT,
    NAME_PATTERN,
    ensembles_dir,
    manifest_table,
    seal_manifest,
    write_json_atomic,
)
from hpo.store.records import EPOCHS_ATTR, REFIT_ATTR, best_first, library_versions
from hpo.store.storage import storage_shown, with_retries

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
    ranked = best_first(done, study.direction)
    if not ranked:
        raise EnsembleError(f"study {study.study_name} has no completed trial; run hpo launch "
                            f"--study {study.study_name} first")
    return ranked


@dataclass
class _Candidate:
    trial: optuna.trial.FrozenTrial
    probs: np.ndarray
    checkpoint: Path
    # A refit configuration: its source trial and one (fold, trial, best.pt) per fold, the
    # probabilities being out-of-fold (every training person once).
    source_trial: int | None = None
    folds: list[tuple[int, optuna.trial.FrozenTrial, Path]] = field(default_factory=list)
    # hpo refit --full: the configuration trained on every person (no probabilities of its own)
    full: tuple[optuna.trial.FrozenTrial, Path] | None = None


def _oof_of(source: int, group: dict[int, optuna.trial.FrozenTrial], folds: int,
            store: ArtifactPaths) -> tuple[_Candidate, np.ndarray]:
    """One refit configuration as a candidate: its folds' validation probabilities stacked."""
    probs, labels, parts = [], [], []
    for fold in range(folds):
        t = group[fold]
        probs.append(np.load(store.stored_path(t, "val_probs.npy")))
        labels.append(np.load(store.stored_path(t, "val_labels.npy")))
        parts.append((fold, t, store.stored_path(t, "best.pt")))
    cand = _Candidate(parts[0][1], np.concatenate(probs), parts[0][2], source_trial=source,
                      folds=parts)
    return cand, np.concatenate(labels)


def _oof_candidates(study: optuna.Study, store: ArtifactPaths, *,
                    top: int) -> tuple[list[_Candidate], np.ndarray]:
    """A refit study's configurations with every fold COMPLETE, best out-of-fold F1 first."""
    folds, groups = fold_groups(study)
    fulls = full_trials(study)
    out: list[tuple[_Candidate, np.ndarray]] = []
    for source, group in sorted(groups.items()):
        if len(group) < folds:
            log.warning("configuration of trial %d left out: folds %s of %d are COMPLETE (hpo "
                        "refit resumes the rest)", source, sorted(group), folds)
            continue
        try:
            cand, labels = _oof_of(source, group, folds, store)
            if source in fulls:
                cand.full = (fulls[source], store.stored_path(fulls[source], "best.pt"))
            out.append((cand, labels))
        except EnsembleError as exc:
            log.warning("configuration of trial %d left out: %s", source, exc)
    if not out:
        raise EnsembleError(f"study {study.study_name} has no configuration with all {folds} "
                            "folds COMPLETE yet; run hpo refit again (it resumes) or hpo "
                            f"worker --study {study.study_name}")
    labels = out[0][1]
    kept = [c for c, y in out if len(y) == len(labels) and np.array_equal(y, labels)
            and c.probs.shape == out[0][0].probs.shape]
    kept.sort(key=lambda c: (-macro_f1(c.probs, labels), c.source_trial))
    return kept[:top], labels


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
    from hpo.store.records import trial_metrics
    from trainer import load_checkpoint

    ckpt = load_checkpoint(c.checkpoint)
    cfg = ckpt["config"]
    data = cfg.get("data", {})
    record = {
        "trial": c.trial.number,
        "model": cfg.get("model", {}).get("name", "?"),
        "weight": weight,
        "picks": picks,
        "f1_select": f1_a,
        "f1_report": f1_b,
        "value": c.trial.value,
        "params": dict(c.trial.params),
        "metrics": trial_metrics(c.trial),
        "best_epoch": c.trial.user_attrs.get("best_epoch"),
        "checkpoint": str(c.checkpoint.resolve()),
        "artifact": _relative(c.checkpoint, root),
        "sha256": file_sha256(c.checkpoint),
        "preprocessing": {"img_size": data.get("img_size"), "crop": data.get("crop"),
                          "mean": list(ckpt["mean"]), "std": list(ckpt["std"])},
    }
    if c.folds:  # lineage: the source trial, then every fold model with its own checkpoint
        record["params"].pop("data.fold", None)
        record.update({
            "trial": c.source_trial, "value": float(np.mean([t.value for _, t, _ in c.folds])),
            "folds": [{"fold": fold, "trial": t.number, "value": t.value,
                       "checkpoint": str(path.resolve()), "artifact": _relative(path, root),
                       "sha256": file_sha256(path)} for fold, t, path in c.folds],
        })
    if c.full is not None:  # hpo refit --full: the model of every training person
        t, path = c.full
        record["full"] = {"trial": t.number, "epochs": t.user_attrs.get(EPOCHS_ATTR),
                          "checkpoint": str(path.resolve()), "artifact": _relative(path, root),
                          "sha256": file_sha256(path)}
    return record


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


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
    labels: np.ndarray


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
        labels=labels,
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
              top: int, root) -> dict[str, Any]:
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
        "study": study.study_name, "storage": storage_shown(study),
        "artifacts": str(root.resolve()), "method": method, "max_members": max_members,
        "top": top, "candidates": len(c.cands),
        "candidate_trials": [_number(x) for x in c.cands],
        "val_hash": c.cands[0].trial.user_attrs.get("val_hash"),
        "split": _split_record(c.half_a, c.half_b),
        "f1": c.f1,
        "best_single": {"trial": _number(c.cands[best]), "f1_select": c.single_a[best],
                        "f1_report": c.single_b[best]},
        "gain_report": c.f1["report"] - c.single_b[best],
        "picks": [_number(c.cands[i]) for i in c.picks],
        "members": members,
        "versions": library_versions(),
    }
    if c.cands[0].folds:
        manifest["refit"] = _oof_record(study, c, best)
    # A JSON round trip, so what the caller gets equals what load_manifest reads back, and the
    # seal covers exactly the values written.
    return seal_manifest(json.loads(json.dumps(manifest, default=str)))


def _number(c: _Candidate) -> int:
    """A candidate's trial: a refit configuration goes by its source trial."""
    return c.source_trial if c.folds and c.source_trial is not None else c.trial.number


def _oof_record(study: optuna.Study, c: _Chosen, best: int) -> dict[str, Any]:
    """A refit ensemble's out-of-fold figures: every training person, ensemble and best member."""
    from trainer import classification_metrics

    labels = c.labels
    ens = sum(w * c.cands[i].probs.astype(np.float64) for i, w in c.weights.items())
    return {
        "of": study.user_attrs.get(REFIT_ATTR, {}).get("of"),
        "folds": len(c.cands[0].folds), "oof_images": int(len(labels)),
        "ensemble": classification_metrics(ens, labels),
        "best_single": {"trial": _number(c.cands[best]),
                        **classification_metrics(c.cands[best].probs, labels)},
    }


def promote(
    study: optuna.Study,
    *,
    name: str,
    method: Literal["greedy", "topk"] = "greedy",
    max_members: int = 5,
    top: int = 20,
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
        artifacts: the artifact folder the study's workers used.

    Returns:
        The manifest and its path; ``.table()`` prints the result.

    Raises:
        EnsembleError: a bad name or method, no completed trial, the best trial's files
            missing from the artifact folder, or a validation set of fewer than 2 people.
    """
    _check_promote_args(name, method, max_members, top)
    store = ArtifactPaths(artifacts)
    if is_refit(study):
        cands, labels = _oof_candidates(study, store, top=top)
    else:
        cands, labels = _candidates(_ranked(study), store, top=top)
    chosen = _choose(cands, labels, method=method, max_members=max_members)
    manifest = _manifest(study, chosen, name=name, method=method, max_members=max_members,
                         top=top, root=store.root)
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
