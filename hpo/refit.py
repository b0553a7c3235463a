"""``hpo refit``: train a study's best configurations again on k person-level folds.

A search leaves few finished trials, near-copies of one configuration, each validated on the
same few people; an ensemble of those rarely beats its best member. The competition's top teams
got their gains from k-fold models of their best configurations instead. ``hpo refit --study S``
takes the top N configurations of study S (or the members of a promoted ensemble) and trains
each on every fold of the training people (``data.fold`` 0..k-1 of ``data.n_folds`` k; each
person validates in exactly one fold), giving out-of-fold (OOF) probabilities for every
training person.

The fold runs are trials of a companion study ``S-refit`` in the same storage: its study text
(recorded like any study's) is the source's, with a ``refit`` section, the fold as the one
searched key, no pruner (a fold model must run to the end) and every (configuration, fold)
enqueued with its source trial in the trial's user attributes. So any worker on any machine
takes them (``hpo worker --study S-refit``), a crash resumes them, and the dashboard shows
them. ```hpo promote --study S-refit`` then selects on the OOF probabilities
(:func:`hpo.ensemble.promote`), and ``hpo predict`` averages each member's fold models.

``hpo refit --full`` adds, once a configuration's folds are all COMPLETE, one more trial of
the companion study: the configuration trained on every training person (``data.holdout``
false) for its best epoch count, the median of its folds' best epochs (a fold validated each
epoch; the full model has nobody left to validate on). Its trial carries ``refit_fold: "all"``,
the epoch count and, as its value, the configuration's mean fold F1. Promotion still selects
on the folds' out-of-fold probabilities; ``hpo predict`` then averages each member's fold
models and its full model, each weighing the same.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import HpoError
from hpo.storage import with_retries
from hpo.trial_record import best_first

__all__ = [
    "EPOCHS_ATTR",
    "FOLD_ATTR",
    "FULL",
    "REFIT_ATTR",
    "VALUE_ATTR",
    "SOURCE_ATTR",
    "RefitPlan",
    "check_folds",
    "choose_configs",
    "enqueue_folds",
    "enqueue_full",
    "fold_groups",
    "full_trials",
    "is_refit",
    "plan_of",
    "prepare_full",
    "prepare_refit",
    "refit_name",
    "refit_overrides",
    "refit_spec",
]

log = logging.getLogger("hpo")

REFIT_ATTR = "hpo_refit"  # the companion study's record: source, folds, configurations
SOURCE_ATTR = "refit_source"  # a fold trial's source trial number (in the source study)
FOLD_ATTR = "refit_fold"  # a fold trial's fold, or FULL for the model of every person
FULL = "all"
EPOCHS_ATTR = "refit_epochs"  # a full trial's epoch count (its folds' median best epoch)
VALUE_ATTR = "refit_value"  # a full trial's value: its configuration's mean fold F1


class RefitError(HpoError):
    """A refit cannot start: nothing to refit, a bad fold count, a changed plan."""


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
    from hpo.manifest import find_manifest, load_manifest

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
    from trainer import scan_train

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
    from hpo.studyfiles import parse_study_text

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
    elif _plan_key(recorded) != _plan_key(plan.record()):
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


def _plan_key(record: dict[str, Any]) -> tuple:
    return (record.get("folds"), tuple(c.get("source_trial") for c in record.get("configs", [])))


def _trials(record: dict[str, Any]) -> str:
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


def prepare_full(launch, plan: RefitPlan):
    """After the folds: enqueue the full models (:func:`enqueue_full`) and the launch that
    trains them (its target counts them; workers take waiting trials past a study's budget).

    Returns:
        (the :class:`hpo.launcher.Launch`, how many were enqueued, lines for those left out).
    """
    from dataclasses import replace

    added, left = enqueue_full(launch.study, plan)
    target = len(plan.configs) * plan.folds + len(plan.configs) - len(left)
    return replace(launch, target=target), added, left


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
    from trainer import replace_path

    cfg = replace_path(cfg, "data.holdout", False)
    cfg = replace_path(cfg, "epochs", int(attrs[EPOCHS_ATTR]))
    return cfg, float(attrs[VALUE_ATTR])


def prepare_refit(source_name: str, *, top: int | None, ensemble: str | None, folds: int,
                  storage: str | None, train_dir: str | None, heartbeat: int,
                  artifacts: str | None, max_failures: int = 3):
    """Check everything, then create or resume ``<source>-refit`` with its folds enqueued.

    Returns:
        (the :class:`hpo.launcher.Launch` to run, the :class:`RefitPlan`).

    Raises:
        RefitError, EnsembleError, StorageError, SpecError, DataError: one line each; nothing
            is created or changed when any is raised before the companion study exists.
    """
    from hpo.launcher import prepare_launch
    from hpo.storage import resolve_storage_url
    from hpo.study import data_folder, load, record_of

    url = resolve_storage_url(storage)
    source = load(source_name, storage=url)
    if is_refit(source):
        raise RefitError(f"study {source.study_name} is itself a refit; refit its source study "
                         f"{source.user_attrs[REFIT_ATTR].get('of')}")
    trials = choose_configs(source, top=top, ensemble=ensemble, artifacts=artifacts)
    train_dir = data_folder(source.study_name, train_dir, storage=url)
    check_folds(folds, train_dir)
    plan = plan_of(source.study_name, trials, folds)
    _check_existing(plan, url)
    spec = refit_spec(record_of(source).text or "", plan)
    launch = prepare_launch(plan.name, storage=url, train_dir=train_dir, n_trials=None,
                            timeout=None, heartbeat=heartbeat, artifacts=artifacts,
                            max_failures=max_failures, spec=spec)
    added = enqueue_folds(launch.study, plan)
    log.info("refit %s: %d fold trial(s) enqueued", plan.name, added)
    return launch, plan


def _check_existing(plan: RefitPlan, url: str) -> None:
    """A companion study that exists must have been made for the same plan."""
    from hpo.study import load, peek

    if peek(plan.name, storage=url) is None:
        return
    recorded = load(plan.name, storage=url).user_attrs.get(REFIT_ATTR)
    if recorded is not None and _plan_key(recorded) != _plan_key(plan.record()):
        raise RefitError(f"study {plan.name} already refits trials {_trials(recorded)} on "
                         f"{recorded.get('folds')} folds, not trials {_trials(plan.record())} "
                         f"on {plan.folds}; finish it with the same --top/--ensemble and "
                         f"--folds, or hpo delete --study {plan.name} first")
