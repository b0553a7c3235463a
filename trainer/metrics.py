"""Validation metrics: macro-F1 over the 18 classes (the competition's score) and per task."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from trainer.layout import NUM_CLASSES, decode_label

__all__ = ["METRIC_NAMES", "classification_metrics", "confusion"]

METRIC_NAMES = ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1")


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Scores of class probabilities ``probs`` (N, 18) against true ``labels`` (N,).

    Returns:
        ``f1`` (macro-F1 over the classes present in labels or predictions, as the
        competition's scorer, scikit-learn's ``f1_score(average="macro")``, computes it),
        ``accuracy``, and macro-F1 of each task: ``mask_f1``, ``gender_f1`` and ``age_f1``.
    """
    pred = np.asarray(probs).argmax(axis=1)
    labels = np.asarray(labels)
    out = {
        "f1": f1_score(labels, pred, average="macro", zero_division=0),
        "accuracy": accuracy_score(labels, pred),
    }
    for name, true, guess in zip(("mask", "gender", "age"), decode_label(labels),
                                 decode_label(pred)):
        out[f"{name}_f1"] = f1_score(true, guess, average="macro", zero_division=0)
    return {k: float(v) for k, v in out.items()}


def confusion(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The 18x18 confusion matrix (rows true class, columns predicted)."""
    return confusion_matrix(labels, np.asarray(probs).argmax(axis=1), labels=range(NUM_CLASSES))
