"""Study specs: the validated, frozen form of a study file.

A study file is declarative: the metric and direction, the trial budget, the sampler and pruner,
the study's data split, the trainer settings every trial shares (``fixed``), the search space
(dotted :class:`~trainer.TrainConfig` keys mapped to distributions, optionally conditional on an
earlier categorical choice) and the trials to run first (``enqueue``). The parser that makes a
spec is :mod:`hpo.studyfile.parse`; finding and reading files is :mod:`hpo.studyfile.files`;
samplers and pruners are :mod:`hpo.studyfile.samplers`.
"""
from __future__ import annotations

__all__ = [
    "DIRECTIONS",
    "PARAM_TYPES",
    "NO_HOLDOUT",
    "SPLIT_KEYS",
    "ParamSpec",
    "PrunerSpec",
    "SamplerSpec",
    "STUDY_NAME_RULE",
    "StudySpec",
    "TOP_KEYS",
    "check_study_name",
]

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hpo.errors import SpecError
from hpo.studyfile._checks import (
    MISSING,
    match_choice,
    one_line,
    show,
)

DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical", "loss_mix")
# The study's split: every trial must validate on the same people, so these are set once in the
# ``data`` section and can be neither fixed per trial nor searched.
SPLIT_KEYS = ("train_dir", "val_fraction", "split_seed", "fold", "n_folds")
# data.holdout false (train every person, validate none) leaves a trial nothing to report.
NO_HOLDOUT = ("data.holdout cannot be set in a study: a trial needs validation people to "
              "report its metric; hpo refit --full trains the models of every person")

# A study's name becomes a folder (trials/<name>/) and a storage key, so it is kept to
# characters that are safe in both: no separators, no leading dot, never "." or "..".
STUDY_NAME_RULE = "[A-Za-z0-9][A-Za-z0-9._-]*, at most 100 characters"
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_study_name(name: Any, *, source: str | None = None) -> str:
    """Return ``name`` if it is a safe study name (:data:`STUDY_NAME_RULE`).

    Args:
        name: a study name (a study file's stem, or a name given by the user).
        source: the study file it came from, shown first in the message and named in the fix.

    Returns:
        ``name``, unchanged.

    Raises:
        SpecError: ``name`` is not a str or breaks the rule; the message suggests a safe name.
    """
    if isinstance(name, str) and _STUDY_NAME.fullmatch(name):
        return name
    text = name if isinstance(name, str) else ""
    safe = re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._-]+", "-", text))[:100]
    safe = safe.rstrip("-") or "study"
    if source and source.endswith((".yaml", ".yml")):
        prefix, fix = f"{source}: ", f"rename the file, e.g. to {safe}.yaml"
    else:
        prefix, fix = (f"{source}: " if source else ""), f"rename it, e.g. to '{safe}'"
    raise SpecError(one_line(
        f"{prefix}study name {show(name)} is not allowed: a study name must match "
        f"{STUDY_NAME_RULE} (not '.' or '..'); {fix}"))


TOP_KEYS = (
    "description", "metric", "direction", "n_trials", "timeout", "sampler", "pruner", "data",
    "fixed", "space", "enqueue", "refit",
)


@dataclass(frozen=True)
class SamplerSpec:
    """An Optuna sampler by name (``tpe``, ``random``, ``cmaes``, ``qmc``) and its options."""

    name: str = "tpe"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSpec:
    """An Optuna pruner by name (``median``, ``successive_halving``, ``hyperband``, ``none``)."""

    name: str = "median"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamSpec:
    """One searched setting: a dotted trainer key and its distribution.

    ``type`` is ``float`` / ``int`` (``low``, ``high``, ``log``, ``step``), ``categorical``
    (``choices``) or ``loss_mix`` (key ``loss.weights``: ``mixed`` loss weighted in
    ``[low, high]``, the rest of the weight going to one of ``rest``). ``when`` maps earlier
    categorical keys to the values that make this parameter active.
    """

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    mixed: str | None = None
    rest: tuple[str, ...] | None = None

    def is_active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether this parameter is searched, given the categorical values chosen so far.

        Args:
            chosen: categorical values by key; a condition key that is absent (its parameter
                was itself inactive) makes this parameter inactive.

        Returns:
            True when every ``when`` condition holds (always, for an unconditional parameter).
        """
        return all(
            key in chosen and match_choice(chosen[key], values) is not MISSING
            for key, values in self.when.items()
        )


@dataclass(frozen=True)
class StudySpec:
    """A validated study file. ``data`` holds all of :data:`SPLIT_KEYS`; ``fixed`` is nested like
    a TrainConfig; ``enqueue`` holds trials in user terms (dotted keys, ``loss.weights`` as a
    mapping of the losses with weight > 0); ``text`` is the file's text when the spec was read
    from one (:func:`hpo.studyfile.files.load_study_spec`,
    :func:`hpo.studyfile.files.parse_study_text`), so a study can record it and be rebuilt
    from its storage alone."""

    name: str
    path: str
    description: str
    metric: str
    direction: Literal["maximize", "minimize"]
    n_trials: int | None
    timeout: float | None
    sampler: SamplerSpec
    pruner: PrunerSpec
    data: dict[str, Any]
    fixed: dict[str, Any]
    space: tuple[ParamSpec, ...]
    enqueue: tuple[dict[str, Any], ...]
    text: str = ""
    # A refit study (``hpo refit``): {"of": source study, "folds": k}. Its space ends with
    # ``data.fold`` (0..k-1), the one split key a trial may set: each trial trains one fold.
    refit: dict[str, Any] | None = None
