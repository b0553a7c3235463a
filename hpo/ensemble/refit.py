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
(:func:`hpo.ensemble.promote.promote`), and ``hpo predict`` averages each member's fold models.

``hpo refit --full`` adds, once a configuration's folds are all COMPLETE, one more trial of
the companion study: the configuration trained on every training person (``data.holdout``
false) for its best epoch count, the median of its folds' best epochs (a fold validated each
epoch; the full model has nobody left to validate on). Its trial carries ``refit_fold: "all"``,
the epoch count and, as its value, the configuration's mean fold F1. Promotion still selects
on the folds' out-of-fold probabilities; ``hpo predict`` then averages each member's fold
models and its full model, each weighing the same.

The plan (configurations, folds, the companion study's spec, enqueueing) is
:mod:`hpo.run.refit_plan`; this module is the orchestration above the launcher.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from hpo.errors import RefitError
from hpo.run.launcher import Launch, prepare_launch
from hpo.run.refit_plan import (
    RefitPlan,
    check_folds,
    choose_configs,
    enqueue_folds,
    enqueue_full,
    is_refit,
    plan_key,
    plan_of,
    refit_spec,
    trials_named,
)
from hpo.run.study import data_folder, load, peek, record_of
from hpo.store.records import REFIT_ATTR
from hpo.store.url import StorageURL, as_storage

__all__ = ["prepare_full", "prepare_refit"]

log = logging.getLogger("hpo")


def prepare_full(launch: Launch, plan: RefitPlan) -> tuple[Launch, int, list[str]]:
    """After the folds: enqueue the full models (:func:`enqueue_full`) and the launch that
    trains them (its target counts them; workers take waiting trials past a study's budget).

    Returns:
        (the :class:`hpo.run.launcher.Launch`, how many were enqueued, lines for those left out).
    """
    added, left = enqueue_full(launch.study, plan)
    target = len(plan.configs) * plan.folds + len(plan.configs) - len(left)
    return replace(launch, target=target), added, left


def prepare_refit(source_name: str, *, top: int | None, ensemble: str | None, folds: int,
                  storage: StorageURL | str, train_dir: str | None, heartbeat: int,
                  artifacts: str | None, max_failures: int = 3):
    """Check everything, then create or resume ``<source>-refit`` with its folds enqueued.

    Returns:
        (the :class:`hpo.run.launcher.Launch` to run, the :class:`RefitPlan`).

    Raises:
        RefitError, EnsembleError, StorageError, SpecError, DataError: one line each; nothing
            is created or changed when any is raised before the companion study exists.
    """
    storage = as_storage(storage)
    source = load(source_name, storage=storage)
    if is_refit(source):
        raise RefitError(f"study {source.study_name} is itself a refit; refit its source study "
                         f"{source.user_attrs[REFIT_ATTR].get('of')}")
    trials = choose_configs(source, top=top, ensemble=ensemble, artifacts=artifacts)
    train_dir = data_folder(source.study_name, train_dir, storage=storage)
    check_folds(folds, train_dir)
    plan = plan_of(source.study_name, trials, folds)
    _check_existing(plan, storage)
    spec = refit_spec(record_of(source).text or "", plan)
    launch = prepare_launch(plan.name, storage=storage, train_dir=train_dir, n_trials=None,
                            timeout=None, heartbeat=heartbeat, artifacts=artifacts,
                            max_failures=max_failures, spec=spec)
    added = enqueue_folds(launch.study, plan)
    log.info("refit %s: %d fold trial(s) enqueued", plan.name, added)
    return launch, plan


def _check_existing(plan: RefitPlan, storage: StorageURL) -> None:
    """A companion study that exists must have been made for the same plan."""
    if peek(plan.name, storage=storage) is None:
        return
    recorded = load(plan.name, storage=storage).user_attrs.get(REFIT_ATTR)
    if recorded is not None and plan_key(recorded) != plan_key(plan.record()):
        raise RefitError(f"study {plan.name} already refits trials {trials_named(recorded)} on "
                         f"{recorded.get('folds')} folds, not trials "
                         f"{trials_named(plan.record())} on {plan.folds}; finish it with the "
                         f"same --top/--ensemble and --folds, or hpo delete --study {plan.name} "
                         "first")
