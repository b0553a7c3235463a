"""Choosing ensemble members from validation probabilities: greedy forward selection with
replacement (Caruana et al., 2004, "Ensemble selection from libraries of models"), plain top-k,
pick weights, and the person-level halves that keep the reported gain honest.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import f1_score

from hpo.errors import EnsembleError

__all__ = [
    "IMAGES_PER_PERSON",
    "greedy_select",
    "macro_f1",
    "pick_weights",
    "person_halves",
    "topk_select",
]

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
