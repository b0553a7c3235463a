"""Person-level train/validation splits, stratified by gender x competition age class.

All 7 images of a person land on the same side: the official baseline split images at random
and leaked people into validation, which inflates validation F1 and misleads any search.
The strata use the competition's age classes, never a run's training thresholds, so trials that
train with ``age_bins`` [30, 58] and [30, 60] validate on the same people.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.errors import ConfigError, DataError

__all__ = ["split_people", "split_frame"]


def _people(frame: pd.DataFrame) -> pd.DataFrame:
    # A hand-made frame without the competition's classes falls back on its own age_class.
    age = "competition_age_class" if "competition_age_class" in frame.columns else "age_class"
    people = frame.groupby("person", sort=True)[["gender", age]].first()
    people["stratum"] = people["gender"] * 3 + people[age]
    return people


def _fold_people(strata: dict, *, fold: int, n_folds: int) -> list[str]:
    val: list[str] = []
    offset = 0  # carried across strata so small strata do not all fill fold 0
    for s in sorted(strata):
        names = strata[s]
        val += [p for i, p in enumerate(names) if (i + offset) % n_folds == fold]
        offset += len(names)
    return val


def _holdout_people(strata: dict, *, val_fraction: float, n: int,
                    rng: np.random.Generator) -> list[str]:
    target = min(max(1, round(val_fraction * n)), n - 1)
    exact = {s: val_fraction * len(v) for s, v in strata.items()}
    take = {s: int(np.floor(x)) for s, x in exact.items()}
    # Largest remainder; ties broken by a seeded draw, not by stratum order.
    tiebreak = dict(zip(sorted(strata), rng.random(len(strata))))
    order = sorted(strata, key=lambda s: (-(exact[s] - take[s]), tiebreak[s]))
    short = target - sum(take.values())
    for s in (order * 2)[: max(short, 0)]:
        take[s] = min(take[s] + 1, len(strata[s]))
    val: list[str] = []
    for s in sorted(strata):
        val += list(strata[s][: take[s]])
    return val


def split_people(
    frame: pd.DataFrame,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    fold: int | None = None,
    n_folds: int = 5,
) -> tuple[list[str], list[str]]:
    """Split people (not images) into train and validation, deterministically from ``seed``.

    With ``fold=None`` about ``val_fraction`` of the people of every gender x age stratum go to
    validation (rounded so the total matches, largest remainders first). With ``fold=k`` the
    people of every stratum are dealt round-robin into ``n_folds`` folds and fold k validates.
    The age of a stratum is the competition's age class (``competition_age_class``), so the
    split does not depend on the thresholds a run trains with.

    Args:
        frame: rows from :func:`trainer.layout.scan_train` (needs person, gender and
            competition_age_class; a frame without the latter is stratified on age_class).
        val_fraction: share of people in validation when ``fold`` is None.
        seed: the split seed; the same seed gives the same split.
        fold: which fold validates, or None for a single hold-out split.
        n_folds: number of folds for k-fold.

    Returns:
        Sorted person names for train and for validation.

    Raises:
        DataError: fewer than 2 people, or fewer people than folds.
        ConfigError: ``fold`` outside ``0..n_folds-1``.
    """
    people = _people(frame)
    n = len(people)
    if n < 2:
        raise DataError(f"the dataset has {n} person; a train/validation split needs at least 2")
    rng = np.random.default_rng(seed)
    strata = {s: rng.permutation(np.asarray(g.index)) for s, g in people.groupby("stratum")}
    if fold is not None:
        if not 0 <= fold < n_folds:
            raise ConfigError(f"fold is {fold}, but must be in 0..{n_folds - 1}")
        if n < n_folds:
            raise DataError(f"the dataset has {n} people, fewer than n_folds={n_folds}")
        val = _fold_people(strata, fold=fold, n_folds=n_folds)
    else:
        val = _holdout_people(strata, val_fraction=val_fraction, n=n, rng=rng)
    val_set = set(val)
    train = sorted(p for p in people.index if p not in val_set)
    if not train:
        raise DataError("the split left no person for training; lower val_fraction")
    return train, sorted(val_set)


def split_frame(
    frame: pd.DataFrame,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    fold: int | None = None,
    n_folds: int = 5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`split_people` applied to image rows: (train rows, validation rows)."""
    _, val = split_people(frame, val_fraction=val_fraction, seed=seed, fold=fold,
                          n_folds=n_folds)
    is_val = frame["person"].isin(set(val))
    return frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)
