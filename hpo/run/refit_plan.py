"""The refit plan: which configurations ``hpo refit`` trains on which folds, as trials.

``hpo refit --study S`` (:mod:`hpo.ensemble.refit`) trains the top N configurations of study S
(or the members of a promoted ensemble) on every fold of the training people, as trials of the
companion study ``S-refit``. This module is the plan below the launcher: choosing the
configurations, the companion study's spec, enqueueing (configuration, fold) trials and the full
models, reading the finished folds back (:func:`fold_groups`, :func:`full_trials`), and a full
model's settings (:func:`refit_overrides`, which the objective applies). The trial-record keys
it writes are in :mod:`hpo.store.records`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import RefitError
from hpo.store.manifest import find_manifest, load_manifest
from hpo.store.records import (
    EPOCHS_ATTR,
    FOLD_ATTR,
    FULL,
    REFIT_ATTR,
    SOURCE_ATTR,
    VALUE_ATTR,
    best_first,
)
from hpo.store.storage import with_retries
from hpo.studyfile.files import parse_study_text
from trainer import replace_path, scan_train

__all__ = [
    "RefitPlan",
    "best_epoch_count",
    "check_folds",
    "choose_configs",
    "enqueue_folds",
    "enqueue_full",
    "fold_groups",
    "full_trials",
    "is_refit",
    "plan_key",
    "plan_of",
    "refit_name",
    "refit_overrides",
    "refit_spec",
    "trials_named",
]


def refit_name(source: str) -> str:
    """The companion study of ``source``: ``<source>-refit``."""
    return f"{source}-refit"


def is_refit(study: optuna.Study) -> bool:
    """Whether ``study`` is a companion study that ``hpo refit`` made."""
    attrs = with_retries(lambda: study.user_attrs, what="reading the study")
    return isinstance(attrs.get(REFIT_ATTR), dict)


@dataclass(frozen=True)
class RefitPlan:
    """The configurations to train on every fold, and the companion study's name."""

    source: str
    folds: int
    configs: tuple[dict[str, Any], ...]  # {"source_trial": n, "params": {...}, "value": v}

    @property
    def name(self) -> str:
        return refit_name(self.source)

    def record(self) -> dict[str, Any]:
        """The companion study's ``hpo_refit`` attribute."""
        return {"of": self.source, "folds": self.folds, "configs": list(self.configs)}


def _completed(study: optuna.Study) -> list[FrozenTrial]:
    done = with_retries(lambda: study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                        what="reading trials")
    return best_first(done, study.direction)


def _from_ensemble(study: optuna.Study, ensemble: str,
                   artifacts: str | os.PathLike | None) -> list[FrozenTrial]:
    manifest = load_manifest(find_manifest(ensemble, artifacts=artifacts))
    if manifest.get("study") != study.study_name:
        raise RefitError(f"ensemble {ensemble} was promoted from study {manifest.get('study')}, "
                         f"not {study.study_name}; refit --study {manifest.get('study')}")
    if manifest.get("refit"):
        raise RefitError(f"ensemble {ensemble} is already a refit ensemble; refit the search "
                         "study's own ensemble or its --top N")
    wanted = [int(m["trial"]) for m in manifest["members"]]
    done = {t.number: t for t in _completed(study)}
    missing = [n for n in wanted if n not in done]
    if missing:
        raise RefitError(f"ensemble {ensemble} names trial(s) {', '.join(map(str, missing))} that "
                         f"study {study.study_name} no longer has as COMPLETE (deleted or "
                         "retried); promote again, or refit with --top N")
    return [done[n] for n in wanted]


def choose_configs(study: optuna.Study, *, top: int | None = None, ensemble: str | None = None,
                   artifacts: str | os.PathLike | None = None) -> list[FrozenTrial]:
    """The source trials whose configurations a refit trains: the ``top`` best completed ones
    with distinct parameters, or the members of a promoted ``ensemble``.

    Raises:
        RefitError: no completed trial, a bad ``top``, or an ensemble from another study or
            naming trials the study no longer has.
    """
    if ensemble is not None:
        return _from_ensemble(study, ensemble, artifacts)
    if top is None or top < 1:
        raise RefitError(f"--top is {top}, but must be >= 1")
    ranked = _completed(study)
    if not ranked:
        raise RefitError(f"study {study.study_name} has no completed trial to refit; run hpo "
                         f"launch --study {study.study_name} first")
    chosen: list[FrozenTrial] = []
    for t in ranked:
        if all(t.params != c.params for c in chosen):
            chosen.append(t)
        if len(chosen) == top:
            break
    return chosen


def check_folds(folds: int, train_dir: str | None) -> None:
    """A fold count the data can fill: >= 2 and no more than the people of every
    gender x age group (else some fold would validate on none of that group).

    Raises:
        RefitError: ``folds`` < 2, or above the people of the smallest group.
    """
    if folds < 2:
        raise RefitError(f"--folds is {folds}, but must be >= 2 (each person validates in one "
                         "fold and trains in the others)")
    if train_dir is None:
        return
    people = scan_train(train_dir).groupby("person")[["gender", "competition_age_class"]].first()
    sizes = people.value_counts()
    (gender, age), smallest = sizes.idxmin(), int(sizes.min())
    if folds > smallest:
        group = f"{('male', 'female')[int(gender)]} {('<30', '30-59', '60+')[int(age)]}"
        raise RefitError(f"--folds {folds} is more than the {smallest} people of the smallest "
                         f"gender x age group ({group}) in {train_dir}; use --folds "
                         f"{max(2, smallest)} or fewer")


def refit_spec(source_text: str, plan: RefitPlan):
    """The companion study's spec: the source's text with a ``refit`` section, the fold as its
    only searched key, the source's search space kept (the enqueued settings must be in it).

    Raises:
        RefitError: the source study recorded no study text (it was not made by hpo).
    """
    raw = yaml.safe_load(source_text) if source_text else None
    if not isinstance(raw, dict):
        raise RefitError(f"study {plan.source} recorded no study file text (it was not made by "
                         "hpo launch); refit needs the settings its trials were trained with")
    raw.pop("enqueue", None)
    raw.update({
        "description": f"k-fold refit of {plan.source}: {len(plan.configs)} configuration(s) "
                       f"x {plan.folds} folds (hpo refit)",
        "n_trials": len(plan.configs) * plan.folds, "timeout": None,
        "sampler": {"name": "random", "seed": 0},  # never asked: every trial is enqueued
        "pruner": {"name": "none"},  # a fold model runs to the end, like its siblings
        "refit": {"of": plan.source, "folds": plan.folds},
    })
    raw["data"] = {**(raw.get("data") or {}), "fold": None, "n_folds": plan.folds}
    text = (f"# Written by hpo refit from study {plan.source}; hpo promote --study "
            f"{plan.name} selects on its out-of-fold probabilities.\n"
            + yaml.safe_dump(raw, sort_keys=False))
    return parse_study_text(text, name=plan.name, path=f"refit of {plan.source}")


def plan_of(source: str, trials: Sequence[FrozenTrial], folds: int) -> RefitPlan:
    configs = tuple({"source_trial": t.number, "params": dict(t.params),
                     "value": float(t.value) if t.value is not None else None}
                    for t in trials)
    return RefitPlan(source=source, folds=folds, configs=configs)


def enqueue_folds(study: optuna.Study, plan: RefitPlan) -> int:
    """Record the plan on the companion study and enqueue every (configuration, fold) once.

    Idempotent: a rerun (after a crash half-way) enqueues only what is missing.

    Returns:
        How many trials this call enqueued.

    Raises:
        RefitError: the companion study exists with another plan.
    """
    recorded = with_retries(lambda: study.user_attrs.get(REFIT_ATTR), what="reading the study")
    if recorded is None:
        with_retries(lambda: study.set_user_attr(REFIT_ATTR, plan.record()),
                     what="recording the refit")
    elif plan_key(recorded) != plan_key(plan.record()):
        raise RefitError(f"study {plan.name} was made for another refit plan; hpo delete "
                         f"--study {plan.name} first")
    have = {(t.user_attrs.get(SOURCE_ATTR), t.user_attrs.get(FOLD_ATTR))
            for t in with_retries(lambda: study.get_trials(deepcopy=False), what="reading trials")}
    added = 0
    for config in plan.configs:
        for fold in range(plan.folds):
            if (config["source_trial"], fold) in have:
                continue
            params = {**config["params"], "data.fold": fold}
            attrs = {SOURCE_ATTR: config["source_trial"], FOLD_ATTR: fold}
            with_retries(lambda p=params, a=attrs: study.enqueue_trial(p, user_attrs=a),
                         what="enqueueing a fold")
            added += 1
    return added


def plan_key(record: dict[str, Any]) -> tuple:
    return (record.get("folds"), tuple(c.get("source_trial") for c in record.get("configs", [])))


def trials_named(record: dict[str, Any]) -> str:
    return ", ".join(str(c.get("source_trial")) for c in record.get("configs", [])) or "none"


def fold_groups(study: optuna.Study) -> tuple[int, dict[int, dict[int, FrozenTrial]]]:
    """The companion study's completed fold trials: {source trial: {fold: trial}}.

    Returns:
        (folds, groups); a configuration is complete when its group has every fold.
    """
    record = with_retries(lambda: study.user_attrs.get(REFIT_ATTR), what="reading the study")
    folds = int(record["folds"])
    groups: dict[int, dict[int, FrozenTrial]] = {}
    for t in with_retries(lambda: study.get_trials(deepcopy=False,
                                                   states=(TrialState.COMPLETE,)),
                          what="reading trials"):
        source, fold = t.user_attrs.get(SOURCE_ATTR), t.user_attrs.get(FOLD_ATTR)
        if isinstance(source, int) and isinstance(fold, int):
            groups.setdefault(source, {}).setdefault(fold, t)
    return folds, groups


def full_trials(study: optuna.Study) -> dict[int, FrozenTrial]:
    """The companion study's completed full models (``--full``): {source trial: trial}."""
    out: dict[int, FrozenTrial] = {}
    for t in with_retries(lambda: study.get_trials(deepcopy=False,
                                                   states=(TrialState.COMPLETE,)),
                          what="reading trials"):
        source = t.user_attrs.get(SOURCE_ATTR)
        if t.user_attrs.get(FOLD_ATTR) == FULL and isinstance(source, int):
            out.setdefault(source, t)
    return out


def best_epoch_count(group: dict[int, FrozenTrial]) -> int:
    """A configuration's epoch count for its full model: its folds' median best epoch."""
    bests = [int(t.user_attrs.get("best_epoch") or 1) for t in group.values()]
    return max(1, int(np.floor(np.median(bests) + 0.5)))


def enqueue_full(study: optuna.Study, plan: RefitPlan) -> tuple[int, list[str]]:
    """Enqueue the full model of every configuration whose folds are all COMPLETE, once.

    A configuration with a full trial that has not failed is skipped (a rerun resumes); one
    whose folds are not all COMPLETE is left out and named.

    Returns:
        (how many trials this call enqueued, one line per configuration left out).
    """
    folds, groups = fold_groups(study)
    trials = with_retries(lambda: study.get_trials(deepcopy=False), what="reading trials")
    have = {t.user_attrs.get(SOURCE_ATTR) for t in trials
            if t.user_attrs.get(FOLD_ATTR) == FULL and t.state != TrialState.FAIL}
    added, left = 0, []
    for config in plan.configs:
        source = config["source_trial"]
        group = groups.get(source, {})
        if len(group) < folds:
            left.append(f"trial {source}: folds {sorted(group)} of {folds} COMPLETE, so no "
                        "full model yet (run hpo refit --full again once they are)")
            continue
        if source in have:
            continue
        params = {**config["params"], "data.fold": 0}  # any fold: nobody is held out
        attrs = {SOURCE_ATTR: source, FOLD_ATTR: FULL, EPOCHS_ATTR: best_epoch_count(group),
                 VALUE_ATTR: float(np.mean([float(t.value) for t in group.values()]))}
        with_retries(lambda p=params, a=attrs: study.enqueue_trial(p, user_attrs=a),
                     what="enqueueing a full model")
        added += 1
    return added, left


def refit_overrides(attrs: dict[str, Any], cfg):
    """A full-model trial's configuration (every person, its epoch count) and its value.

    Args:
        attrs: the trial's user attributes (``enqueue_full`` set them).
        cfg: the configuration its parameters give.

    Returns:
        (cfg, None) for any other trial; for a full model (cfg with ``data.holdout`` false and
        its epochs, the value to record: its configuration's mean fold F1).
    """
    if attrs.get(FOLD_ATTR) != FULL:
        return cfg, None
    cfg = replace_path(cfg, "data.holdout", False)
    cfg = replace_path(cfg, "epochs", int(attrs[EPOCHS_ATTR]))
    return cfg, float(attrs[VALUE_ATTR])
