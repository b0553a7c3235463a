"""Study files: load and validate ``studies/<name>.yaml`` into a frozen :class:`StudySpec`.

A study file is declarative: the metric and direction, the trial budget, the sampler and pruner,
the study's data split, the trainer settings every trial shares (``fixed``), the search space
(dotted :class:`~trainer.TrainConfig` keys mapped to distributions, optionally conditional on an
earlier categorical choice) and the trials to run first (``enqueue``). Everything is checked when
the file is loaded, against the trainer's own registries and by building real configs, so a bad
study fails before any worker starts. Whatever the file holds, the loader raises only
:class:`~hpo.errors.SpecError`, in one line that names the file, the key, the rule and the fix.
"""
from __future__ import annotations

__all__ = [
    "DIRECTIONS",
    "PARAM_TYPES",
    "PRUNERS",
    "SAMPLERS",
    "SPLIT_KEYS",
    "ParamSpec",
    "PrunerSpec",
    "SamplerSpec",
    "StudySpec",
    "create_pruner",
    "create_sampler",
    "find_study_file",
    "list_studies",
    "load_study_spec",
    "parse_study_spec",
]

import copy
import dataclasses
import difflib
import importlib.util
import math
import os
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml

import hpo
from hpo.errors import SpecError
from trainer.config import TrainConfig, config_from_dict, replace_path
from trainer.errors import ConfigError
from trainer.losses import list_losses
from trainer.metrics import METRIC_NAMES

DIRECTIONS = ("maximize", "minimize")
PARAM_TYPES = ("float", "int", "categorical", "loss_mix")
# The study's split: every trial must validate on the same people, so these are set once in the
# ``data`` section and can be neither fixed per trial nor searched.
SPLIT_KEYS = ("train_dir", "val_fraction", "split_seed", "fold", "n_folds")

_TOP_KEYS = (
    "description", "metric", "direction", "n_trials", "timeout", "sampler", "pruner", "data",
    "fixed", "space", "enqueue",
)
SAMPLERS: dict[str, tuple[str, ...]] = {
    "tpe": ("seed", "multivariate", "group", "constant_liar", "n_startup_trials"),
    "random": ("seed",),
    "cmaes": ("seed", "n_startup_trials"),
    "qmc": ("seed", "qmc_type", "scramble"),
}
PRUNERS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "none": (),
}
_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "loss_mix": ("type", "mixed", "low", "high", "rest", "when"),
}
_LOSS_KEY = "loss.weights"
_MAX_DEPTH = 32
_INT_LIMIT = 2**63
_SEED_LIMIT = 2**32  # numpy's RandomState, under every optuna sampler, takes seeds below 2**32
_SHOW_CHARS = 60


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
            key in chosen and _match_choice(chosen[key], values) is not _MISSING
            for key, values in self.when.items()
        )


@dataclass(frozen=True)
class StudySpec:
    """A validated study file. ``data`` holds all of :data:`SPLIT_KEYS`; ``fixed`` is nested like
    a TrainConfig; ``enqueue`` holds trials in user terms (dotted keys, ``loss.weights`` as a
    mapping of the losses with weight > 0)."""

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


# ---------------------------------------------------------------------------------------------
# Finding and loading files


def _search_dirs(studies_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if studies_dir is not None:
        dirs.append(Path(studies_dir))
    env = os.environ.get("HPO_STUDIES_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path("studies"))
    dirs.append(Path(hpo.__file__).resolve().parents[1] / "studies")
    unique: list[Path] = []
    for d in dirs:
        if not any(_same_dir(d, u) for u in unique):
            unique.append(d)
    return unique


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def list_studies(*, studies_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the study files (``<name>.yaml`` / ``<name>.yml``) in the search folders.

    Args:
        studies_dir: searched first; then ``$HPO_STUDIES_DIR``, ``./studies`` and the
            repository's ``studies/``.

    Returns:
        The sorted, de-duplicated names.
    """
    names: set[str] = set()
    for d in _search_dirs(studies_dir):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        names.update(p.stem for p in entries if p.suffix in (".yaml", ".yml") and p.is_file())
    return sorted(names)


def find_study_file(
    name_or_path: str | os.PathLike[str], *, studies_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Resolve a study name or file path to an existing study file.

    An existing ``.yaml`` / ``.yml`` file is used as is. A bare name (``effnet``, or
    ``effnet.yaml``) is looked up as ``<dir>/<name>.yaml`` (then ``.yml``) in ``studies_dir``,
    ``$HPO_STUDIES_DIR``, ``./studies`` and the repository's ``studies/``, in that order.

    Args:
        name_or_path: a study name or a path to a study file.
        studies_dir: a folder searched before the others.

    Returns:
        The path of the study file.

    Raises:
        SpecError: nothing matches; the message lists the available studies and the folders.
    """
    text = os.fspath(name_or_path)
    if not text:
        raise SpecError(f"no study given; name one of: {', '.join(list_studies())}")
    path = Path(text)
    if path.is_file():
        if path.suffix not in (".yaml", ".yml"):
            raise SpecError(f"study file {text} must end in .yaml or .yml; rename it")
        return path
    bare = os.sep not in text and "/" not in text and text not in (".", "..")
    dirs = _search_dirs(studies_dir)
    if bare:
        name = path.stem if path.suffix in (".yaml", ".yml") else text
        for d in dirs:
            for suffix in (".yaml", ".yml"):
                candidate = d / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    available = list_studies(studies_dir=studies_dir)
    close = difflib.get_close_matches(path.stem, available, n=1) if bare else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    listing = ", ".join(available) if available else "none"
    looked = ", ".join(str(d) for d in dirs)
    what = f"study '{text}'" if bare else f"study file {text}"
    raise SpecError(
        f"{what} not found{hint}; available studies: {listing} (looked in {looked}); "
        "give an existing .yaml path or one of those names"
    )


def load_study_spec(
    name_or_path: str | os.PathLike[str], *, studies_dir: str | os.PathLike[str] | None = None
) -> StudySpec:
    """Find, read (``yaml.safe_load``) and validate a study file.

    Args:
        name_or_path: a study name or a path, as for :func:`find_study_file`.
        studies_dir: a folder searched before the others.

    Returns:
        The validated study.

    Raises:
        SpecError: the file is missing, unreadable, not valid YAML, or not a valid study.
    """
    path = find_study_file(name_or_path, studies_dir=studies_dir)
    shown = _display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        message = f"{shown} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        raise SpecError(message) from None
    except OSError as exc:
        message = f"cannot read study file {shown}: {exc.strerror}; check the path"
        raise SpecError(message) from None
    raw = _parse_yaml(text, shown)
    return parse_study_spec(raw, name=path.stem, path=shown)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _parse_yaml(text: str, shown: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            # an unclosed bracket is reported at the end of the file; say where it opened
            problem += (f" ({exc.context} started at line {exc.context_mark.line + 1}, "
                        f"column {exc.context_mark.column + 1})")
        raise SpecError(_one_line(
            f"{shown} is not valid YAML{where}: {problem}; fix the syntax there "
            "(quote strings that contain ': ' or start with a special character)"
        )) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError(_one_line(
            f"{shown} is not valid YAML: {exc.reason} (character {exc.character!r} at "
            f"position {exc.position}); remove it or quote it"
        )) from None
    except RecursionError:
        raise SpecError(f"{shown} is nested too deeply to read; flatten it") from None
    except Exception as exc:  # e.g. a date like 2021-02-30 fails in the constructor
        raise SpecError(_one_line(f"{shown} is not valid YAML: {exc}; fix or quote that value")
                        ) from None


# ---------------------------------------------------------------------------------------------
# Small checkers. Each takes the place (``where``) it reports and raises SpecError.


class _Ctx:
    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, where: str, message: str) -> SpecError:
        prefix = f"{self.path}: {where}" if where else self.path
        return SpecError(_one_line(f"{prefix}: {message}"))


def _one_line(text: str) -> str:
    # Keys and values come from the file; escape their newlines and control characters so the
    # CLI's one-line error stays one line.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _hint(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(ctx: _Ctx, where: str, value: Any, rule: str = "a number",
            example: str = "1.0e-3") -> float:
    original = value
    if isinstance(value, str):
        try:  # PyYAML reads 1e-3 (no dot) as a string; accept it as users mean it
            value = float(value)
        except ValueError:
            raise ctx.error(where, f"{_show(original)} is not {rule}; write e.g. {example}"
                            ) from None
    if not _is_number(value):
        raise ctx.error(where, f"{_show(original)} is not {rule}; write e.g. {example}")
    value = float(value)
    if not math.isfinite(value):
        raise ctx.error(where, f"{_show(original)} is not {rule}; use a finite number")
    return value


def _integer(ctx: _Ctx, where: str, value: Any, *, minimum: int | None = None,
             maximum: int | None = None, rule: str = "") -> int:
    rule = rule or (f"an integer >= {minimum}" if minimum is not None else "an integer")
    ok = _is_number(value) and (isinstance(value, int) or (
        math.isfinite(value) and float(value).is_integer() and abs(value) < _INT_LIMIT))
    if not ok:
        raise ctx.error(where, f"{_show(value)} is not {rule}; write a whole number")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ctx.error(where, f"{value} is too small; it must be {rule}")
    if maximum is not None and value > maximum:
        raise ctx.error(where, f"{value} is too large; it must be {rule}")
    return value


def _bool(ctx: _Ctx, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(where, f"{_show(value)} is not true or false; write true or false")
    return value


def _string(ctx: _Ctx, where: str, value: Any, example: str) -> str:
    if not isinstance(value, str):
        raise ctx.error(where, f"{_show(value)} is not a string; write e.g. {example}")
    return value


def _mapping(ctx: _Ctx, where: str, value: Any, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        kind = "a list" if isinstance(value, (list, tuple)) else _show(value)
        raise ctx.error(where, f"must be a mapping of keys to values, got {kind}; "
                               f"write e.g. {example}")
    return value


def _unknown_keys(ctx: _Ctx, where: str, raw: Mapping[str, Any], valid: Sequence[str],
                  what: str = "key") -> None:
    for key in raw:
        if key not in valid:
            listing = ", ".join(valid) if valid else "none"
            raise ctx.error(where, f"unknown {what} '{key}'{_hint(key, valid)}; "
                                   f"valid {what}s: {listing}")


def _choose(ctx: _Ctx, where: str, value: Any, valid: Sequence[str], what: str) -> str:
    if not isinstance(value, str) or value not in valid:
        hint = _hint(value, valid) if isinstance(value, str) else ""
        raise ctx.error(where, f"{_show(value)} is not a known {what}{hint}; "
                               f"use one of: {', '.join(valid)}")
    return value


def _match_choice(value: Any, choices: Sequence[Any]) -> Any:
    """The choice equal to ``value`` (True never matches 1), or ``_MISSING``."""
    for choice in choices:
        if isinstance(choice, bool) == isinstance(value, bool) and choice == value:
            return choice
    return _MISSING


def _check_plain(ctx: _Ctx, raw: Any) -> None:
    """Reject anything but plain YAML data, before any other check can trip over it."""
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    seen: set[int] = set()
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if depth > _MAX_DEPTH:
                raise ctx.error(where, f"is nested more than {_MAX_DEPTH} levels deep; "
                                       "a study file needs only a few levels, flatten it")
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise ctx.error(where, f"key {_show(key)} is not a string (it is a "
                                               f"{type(key).__name__}); quote it")
                    stack.append((item, f"{where}: {key}" if where else key, depth + 1))
            else:
                for i, item in enumerate(value):
                    stack.append((item, f"{where}[{i}]", depth + 1))
        elif value is None or isinstance(value, (bool, str)):
            continue
        elif isinstance(value, int):
            if abs(value) >= _INT_LIMIT:
                raise ctx.error(where, f"{_show(value)} is too large; integers must be "
                                       "between -2**63 and 2**63 - 1")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ctx.error(where, f"{value} is not a finite number; use a finite number")
        else:
            raise ctx.error(where, f"{_show(value)} is a {type(value).__name__}, not a plain "
                                   "string, number, true/false, list or mapping; quote it")


# ---------------------------------------------------------------------------------------------
# The trainer's keys


@cache
def _trainer_fields() -> dict[str, Any]:
    """Dotted TrainConfig key -> type annotation (``optim.lr`` -> float)."""
    out: dict[str, Any] = {}
    top = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        tp = top[f.name]
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            for g in dataclasses.fields(tp):
                out[f"{f.name}.{g.name}"] = hints[g.name]
        else:
            out[f.name] = tp
    return out


@cache
def _sections() -> tuple[str, ...]:
    top = typing.get_type_hints(TrainConfig)
    return tuple(f.name for f in dataclasses.fields(TrainConfig)
                 if dataclasses.is_dataclass(top[f.name]))


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _kind(next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is Literal:
        return "literal"
    if origin is tuple:
        return "tuple"
    if origin is dict:
        return "dict"
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, "other")


def _config_raw(fixed: Mapping[str, Any], data: Mapping[str, Any],
                settings: Mapping[str, Any]) -> dict[str, Any]:
    """The nested trainer dict: ``fixed``, then the study's split, then dotted ``settings``."""
    raw = copy.deepcopy(dict(fixed))
    section = raw.get("data")
    merged = dict(section) if isinstance(section, Mapping) else {}
    merged.update(data)
    raw["data"] = merged
    for key, value in settings.items():
        head, dot, tail = key.partition(".")
        if dot:
            node = raw.get(head)
            node = dict(node) if isinstance(node, Mapping) else {}
            node[tail] = copy.deepcopy(value)
            raw[head] = node
        else:
            raw[key] = copy.deepcopy(value)
    return raw


def _build(ctx: _Ctx, where: str, raw: Mapping[str, Any]) -> TrainConfig:
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ctx.error(where, str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Sections


def parse_study_spec(raw: Any, *, name: str, path: str = "<string>") -> StudySpec:
    """Validate a parsed study document (the core of :func:`load_study_spec`).

    Args:
        raw: what ``yaml.safe_load`` returned for the file (any value).
        name: the study's name (the file's stem).
        path: shown at the start of every error message.

    Returns:
        The validated study.

    Raises:
        SpecError: for anything invalid; never another exception, whatever ``raw`` holds.
    """
    ctx = _Ctx(path)
    if raw is None:
        raise ctx.error("", "is empty; a study needs at least n_trials (or timeout) and space")
    if not isinstance(raw, Mapping):
        kind = "a list" if isinstance(raw, (list, tuple)) else f"the value {_show(raw)}"
        raise ctx.error("", f"must be a mapping of study keys ({', '.join(_TOP_KEYS)}), "
                            f"but holds {kind}; start with e.g. 'n_trials: 40'")
    _check_plain(ctx, raw)
    for key in raw:
        if key not in _TOP_KEYS:
            raise ctx.error("", f"unknown top-level key '{key}'{_hint(key, _TOP_KEYS)}; "
                                f"valid keys: {', '.join(_TOP_KEYS)}")

    description = raw.get("description")
    description = "" if description is None else _string(
        ctx, "description", description, "'EfficientNet family'")
    metric = raw.get("metric")
    metric = "f1" if metric is None else _choose(ctx, "metric", metric, METRIC_NAMES, "metric")
    direction = raw.get("direction")
    direction = "maximize" if direction is None else _choose(
        ctx, "direction", direction, DIRECTIONS, "direction")
    n_trials, timeout = _parse_budget(ctx, raw)
    sampler = _parse_sampler(ctx, raw.get("sampler"))
    pruner = _parse_pruner(ctx, raw.get("pruner"))
    data = _parse_data(ctx, raw.get("data"))
    fixed, base = _parse_fixed(ctx, raw.get("fixed"), data)
    space = _parse_space(ctx, raw.get("space"), fixed, base)
    enqueue = _parse_enqueue(ctx, raw.get("enqueue"), space, fixed, data)
    return StudySpec(
        name=name, path=path, description=description, metric=metric, direction=direction,
        n_trials=n_trials, timeout=timeout, sampler=sampler, pruner=pruner, data=data,
        fixed=fixed, space=space, enqueue=enqueue,
    )


def _parse_budget(ctx: _Ctx, raw: Mapping[str, Any]) -> tuple[int | None, float | None]:
    n_trials = raw.get("n_trials")
    if n_trials is not None:
        n_trials = _integer(ctx, "n_trials", n_trials, minimum=1,
                            rule="an integer >= 1 (or null with a timeout)")
    timeout = raw.get("timeout")
    if timeout is not None:
        timeout = _number(ctx, "timeout", timeout, "a number of seconds > 0 (or null)",
                          "7200")
        if timeout <= 0:
            raise ctx.error("timeout", f"{timeout:g} is not > 0; give the study's time budget "
                                       "in seconds, e.g. 7200, or null")
    if n_trials is None and timeout is None:
        raise ctx.error("", "neither n_trials nor timeout is set, but a study needs a budget; "
                            "set n_trials (e.g. n_trials: 40), timeout in seconds, or both")
    return n_trials, timeout


def _check_options(ctx: _Ctx, where: str, kind: str, name: str,
                   options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate sampler/pruner options; shared by the parser and the factories."""
    valid = (SAMPLERS if kind == "sampler" else PRUNERS)[name]
    for key in options:
        if key not in valid:
            listing = ", ".join(valid) if valid else "none"
            raise ctx.error(where, f"unknown option '{key}' for {kind} '{name}'"
                                   f"{_hint(str(key), valid)}; valid options: {listing}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        at = f"{where}: {key}"
        if key == "seed":
            out[key] = None if value is None else _integer(
                ctx, at, value, minimum=0, maximum=_SEED_LIMIT - 1,
                rule=f"an integer in 0..{_SEED_LIMIT - 1} (or null)")
        elif key in ("multivariate", "group", "constant_liar", "scramble"):
            out[key] = _bool(ctx, at, value)
        elif key in ("n_startup_trials", "n_warmup_steps", "min_early_stopping_rate"):
            out[key] = _integer(ctx, at, value, minimum=0)
        elif key == "interval_steps":
            out[key] = _integer(ctx, at, value, minimum=1)
        elif key == "reduction_factor":
            out[key] = _integer(ctx, at, value, minimum=2, rule="an integer >= 2 (e.g. 3)")
        elif key == "qmc_type":
            out[key] = _choose(ctx, at, value, ("sobol", "halton"), "qmc_type")
        elif key in ("min_resource", "max_resource"):
            auto_ok = not (name == "hyperband" and key == "min_resource")
            if auto_ok and value == "auto":
                out[key] = "auto"
            else:
                rule = "an integer >= 1 or 'auto'" if auto_ok else "an integer >= 1"
                out[key] = _integer(ctx, at, value, minimum=1, rule=rule)
    if name == "tpe" and out.get("group") and out.get("multivariate") is False:
        raise ctx.error(where, "group is true but multivariate is false; group needs the "
                               "multivariate TPE, so set multivariate: true (or group: false)")
    low, high = out.get("min_resource", 1), out.get("max_resource", "auto")
    if name == "hyperband" and isinstance(low, int) and isinstance(high, int) and high < low:
        raise ctx.error(where, f"max_resource is {high}, but must be >= min_resource ({low}); "
                               "set max_resource to the number of epochs or 'auto'")
    return out


def _parse_named(ctx: _Ctx, where: str, raw: Any, registry: Mapping[str, tuple[str, ...]],
                 default: str) -> tuple[str, dict[str, Any]]:
    if raw is None:
        return default, {}
    if isinstance(raw, str):  # shorthand: ``sampler: random``
        raw = {"name": raw}
    raw = _mapping(ctx, where, raw, f"{{name: {default}}}")
    name = raw.get("name")
    name = default if name is None else _choose(ctx, f"{where}: name", name, list(registry),
                                                where)
    options = {k: v for k, v in raw.items() if k != "name"}
    return name, _check_options(ctx, where, where, name, options)


def _parse_sampler(ctx: _Ctx, raw: Any) -> SamplerSpec:
    name, options = _parse_named(ctx, "sampler", raw, SAMPLERS, "tpe")
    return SamplerSpec(name=name, options=options)


def _parse_pruner(ctx: _Ctx, raw: Any) -> PrunerSpec:
    name, options = _parse_named(ctx, "pruner", raw, PRUNERS, "median")
    return PrunerSpec(name=name, options=options)


def _parse_data(ctx: _Ctx, raw: Any) -> dict[str, Any]:
    raw = {} if raw is None else _mapping(ctx, "data", raw, "{train_dir: data/train}")
    _unknown_keys(ctx, "data", raw, SPLIT_KEYS)
    cfg = _build(ctx, "data", {"data": dict(raw)})
    return {key: getattr(cfg.data, key) for key in SPLIT_KEYS}


def _parse_fixed(ctx: _Ctx, raw: Any,
                 data: Mapping[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    raw = {} if raw is None else _mapping(ctx, "fixed", raw, "{epochs: 10}")
    sections = _sections()
    examples = {"data": "{img_size: [224, 224]}", "model": "{name: resnet34}",
                "optim": "{lr: 1.0e-3}", "loss": "{weights: {ce: 1.0}}"}
    for key, value in raw.items():
        if key in sections and value is not None:
            _mapping(ctx, f"fixed: {key}", value, examples.get(key, "{}"))
    data_section = raw.get("data") or {}
    for key in SPLIT_KEYS:
        if key in data_section:
            raise ctx.error("fixed", f"data.{key} belongs in the study's data section (every "
                                     "trial must validate on the same people); move it there")
    if "output_dir" in raw:
        raise ctx.error("fixed", "output_dir is set per trial by hpo; remove it")
    fixed = copy.deepcopy(dict(raw))
    base = _build(ctx, "fixed", _config_raw(fixed, data, {}))
    return fixed, base


def _fixed_keys(fixed: Mapping[str, Any]) -> set[str]:
    keys: set[str] = set()
    for key, value in fixed.items():
        if key in _sections() and isinstance(value, Mapping):
            keys.update(f"{key}.{sub}" for sub in value)
        else:
            keys.add(key)
    return keys


def _parse_space(ctx: _Ctx, raw: Any, fixed: Mapping[str, Any],
                 base: TrainConfig) -> tuple[ParamSpec, ...]:
    example = "{optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}}"
    if raw is None or (isinstance(raw, Mapping) and not raw):
        raise ctx.error("space", f"is empty, but must define at least one parameter, "
                                 f"e.g. {example}")
    raw = _mapping(ctx, "space", raw, example)
    fields = _trainer_fields()
    valid = sorted(fields)
    params: list[ParamSpec] = []
    for key, dist in raw.items():
        if key not in fields:
            raise ctx.error("space", f"unknown key '{key}'{_hint(key, valid)}: not a trainer "
                                     f"setting; valid keys: {', '.join(valid)}")
        if key.startswith("data.") and key[5:] in SPLIT_KEYS:
            raise ctx.error("space", f"{key} cannot be searched: every trial must validate on "
                                     "the same people; set it once in the data section")
        if key == "output_dir":
            raise ctx.error("space", "output_dir cannot be searched; hpo sets it per trial")
        params.append(_parse_param(ctx, key, dist, fields[key], params, later=list(raw)))
    fixed_keys = _fixed_keys(fixed)
    for p in params:
        if p.key in fixed_keys and not p.when:
            raise ctx.error("space", f"{p.key} is both fixed and searched; remove it from "
                                     "fixed (or make the parameter conditional with when)")
    _check_mix_budget(ctx, params, base)
    for p in params:
        _check_values(ctx, p, base)
    return tuple(params)


def _parse_param(ctx: _Ctx, key: str, raw: Any, annotation: Any, earlier: Sequence[ParamSpec],
                 *, later: Sequence[str]) -> ParamSpec:
    where = f"space: {key}"
    raw = _mapping(ctx, where, raw, "{type: float, low: 0.0, high: 1.0}")
    if "type" not in raw:
        raise ctx.error(where, f"has no type; add type: one of {', '.join(PARAM_TYPES)}")
    kind = _choose(ctx, f"{where}: type", raw["type"], PARAM_TYPES, "distribution type")
    _unknown_keys(ctx, where, raw, _PARAM_KEYS[kind])
    _check_kind_fits(ctx, where, key, kind, annotation)
    when = _parse_when(ctx, key, raw.get("when"), earlier, space_keys=later)
    if kind in ("float", "int"):
        return _parse_range(ctx, where, key, kind, raw, when)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ctx.error(f"{where}: choices", f"{_show(choices)} is not a non-empty list; "
                                                 "write e.g. choices: [32, 64, 128]")
        out: list[Any] = []
        for i, choice in enumerate(choices):
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ctx.error(f"{where}: choices[{i}]", f"{_show(choice)} is not a single "
                                                          "value; choices must be scalars")
            if _kind(annotation) == "float" and isinstance(choice, str):
                choice = _number(ctx, f"{where}: choices[{i}]", choice)
            if _match_choice(choice, out) is not _MISSING:
                raise ctx.error(f"{where}: choices", f"{_show(choice)} is listed twice; "
                                                     "remove the duplicate")
            out.append(choice)
        return ParamSpec(key=key, type=kind, choices=tuple(out), when=when)
    return _parse_loss_mix(ctx, where, key, raw, when)


def _check_kind_fits(ctx: _Ctx, where: str, key: str, kind: str, annotation: Any) -> None:
    target = _kind(annotation)
    if kind == "loss_mix" or target == "dict":
        if kind != "loss_mix" or key != _LOSS_KEY:
            raise ctx.error(where, f"type {kind} does not fit {key}; search loss weights with "
                                   f"{_LOSS_KEY}: {{type: loss_mix, mixed: f1, rest: [focal]}}")
    elif kind == "float" and target == "int":
        raise ctx.error(where, f"{key} is an integer setting, but type is float; "
                               "use type: int or categorical")
    elif kind in ("float", "int") and target not in ("float", "int"):
        raise ctx.error(where, f"{key} is not a number setting, so type {kind} does not fit; "
                               "use type: categorical with choices")


def _parse_range(ctx: _Ctx, where: str, key: str, kind: str, raw: Mapping[str, Any],
                 when: dict[str, tuple[Any, ...]]) -> ParamSpec:
    for required in ("low", "high"):
        if required not in raw:
            raise ctx.error(where, f"has no {required}; a {kind} parameter needs low and high")
    log = _bool(ctx, f"{where}: log", raw.get("log", False))
    step_raw = raw.get("step")
    step: float | int | None
    if kind == "int":
        low: float = _integer(ctx, f"{where}: low", raw["low"])
        high: float = _integer(ctx, f"{where}: high", raw["high"])
        step = 1 if step_raw is None else _integer(ctx, f"{where}: step", step_raw, minimum=1)
        if log and step != 1:
            raise ctx.error(where, f"log is true and step is {step}; a log range cannot have a "
                                   "step, so remove one of them")
    else:
        low = _number(ctx, f"{where}: low", raw["low"])
        high = _number(ctx, f"{where}: high", raw["high"])
        step = None if step_raw is None else _number(ctx, f"{where}: step", step_raw)
        if step is not None and step <= 0:
            raise ctx.error(f"{where}: step", f"{step:g} is not > 0; use a positive step "
                                              "or null for a continuous range")
        if log and step is not None:
            raise ctx.error(where, f"log is true and step is {step:g}; a log range cannot have "
                                   "a step, so remove one of them")
        if not math.isfinite(high - low):
            raise ctx.error(where, f"the range [{low:g}, {high:g}] is too wide; narrow it")
    if low > high:
        raise ctx.error(where, f"low ({low:g}) is greater than high ({high:g}), but must be "
                               "<= high; swap them")
    if log and low <= 0:
        need = ">= 1" if kind == "int" else "> 0"
        raise ctx.error(where, f"log is true but low is {low:g}; a log range needs low {need}, "
                               "so raise low or set log: false")
    if step is not None:
        span = high - low
        n = span / step
        if n > 1e9:  # optuna's grid arithmetic (decimal, 28 digits) fails far beyond this
            raise ctx.error(where, f"step {step:g} cuts [{low:g}, {high:g}] into {n:.3g} values, "
                                   "but at most 1e9 are allowed; use a larger step or null")
        if abs(n - round(n)) > 1e-6 * max(1.0, abs(n)):
            fit = low + math.floor(n) * step
            raise ctx.error(where, f"high - low ({span:g}) is not a multiple of step "
                                   f"({step:g}); set high to {fit:g} or change step")
    return ParamSpec(key=key, type=kind, low=low, high=high, log=log, step=step, when=when)


def _parse_loss_mix(ctx: _Ctx, where: str, key: str, raw: Mapping[str, Any],
                    when: dict[str, tuple[Any, ...]]) -> ParamSpec:
    losses = list_losses()
    if "mixed" not in raw:
        raise ctx.error(where, "has no mixed loss; add e.g. mixed: f1")
    mixed = _loss_name(ctx, f"{where}: mixed", raw["mixed"], losses)
    rest_raw = raw.get("rest")
    if rest_raw is None:
        raise ctx.error(where, "has no rest; add e.g. rest: [focal, weighted_ce, ce]")
    names = [rest_raw] if isinstance(rest_raw, str) else rest_raw
    if not isinstance(names, (list, tuple)) or not names:
        raise ctx.error(f"{where}: rest", f"{_show(rest_raw)} is not a loss name or a non-empty "
                                          "list of them; write e.g. rest: [focal, ce]")
    rest: list[str] = []
    for i, item in enumerate(names):
        name = _loss_name(ctx, f"{where}: rest[{i}]", item, losses)
        if name == mixed:
            raise ctx.error(f"{where}: rest", f"'{name}' is also the mixed loss; the rest must "
                                              "be other losses, so remove it from rest")
        if name in rest:
            raise ctx.error(f"{where}: rest", f"'{name}' is listed twice; remove the duplicate")
        rest.append(name)
    low = _number(ctx, f"{where}: low", raw.get("low", 0.0))
    high = _number(ctx, f"{where}: high", raw.get("high", 1.0))
    for label, value in (("low", low), ("high", high)):
        if not 0.0 <= value <= 1.0:
            raise ctx.error(f"{where}: {label}", f"{value:g} is not a weight in [0, 1]; "
                                                 f"the weight of {mixed} must be in [0, 1]")
    if low > high:
        raise ctx.error(where, f"low ({low:g}) is greater than high ({high:g}), but must be "
                               "<= high; swap them")
    return ParamSpec(key=key, type="loss_mix", low=low, high=high, when=when, mixed=mixed,
                     rest=tuple(rest))


def _loss_name(ctx: _Ctx, where: str, value: Any, losses: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in losses:
        hint = _hint(value, losses) if isinstance(value, str) else ""
        raise ctx.error(where, f"unknown loss {_show(value)}{hint}; valid losses: "
                               f"{', '.join(losses)}")
    return value


def _parse_when(ctx: _Ctx, own: str, raw: Any, earlier: Sequence[ParamSpec], *,
                space_keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    where = f"space: {own}: when"
    raw = _mapping(ctx, where, raw, "{optim.name: sgd}")
    if not raw:
        raise ctx.error(where, "is empty; give a condition like {optim.name: sgd} or remove it")
    by_key = {p.key: p for p in earlier}
    categorical = [p.key for p in earlier if p.type == "categorical"]
    out: dict[str, tuple[Any, ...]] = {}
    for key, values in raw.items():
        parent = by_key.get(key)
        if parent is None and key in space_keys:
            raise ctx.error(where, f"{key} comes after {own} in space (or is {own} itself), "
                                   f"but a condition must refer to an earlier parameter; "
                                   f"move {own} below {key}")
        if parent is None:
            listing = ", ".join(categorical) if categorical else "none"
            raise ctx.error(where, f"'{key}' is not a parameter defined above {own} in space"
                                   f"{_hint(key, categorical)}; a condition refers to an "
                                   f"earlier categorical parameter (here: {listing}), so "
                                   "define it first")
        if parent.type != "categorical":
            raise ctx.error(where, f"'{key}' is a {parent.type} parameter, but conditions can "
                                   "only refer to categorical ones; make it categorical")
        items = list(values) if isinstance(values, (list, tuple)) else [values]
        if not items:
            raise ctx.error(f"{where}: {key}", "is an empty list; give the values that "
                                               f"activate {own}")
        matched = []
        for item in items:
            choice = _match_choice(item, parent.choices or ())
            if choice is _MISSING:
                shown = ", ".join(map(str, parent.choices or ()))
                raise ctx.error(f"{where}: {key}", f"{_show(item)} is not among the choices "
                                                   f"of {key} ({shown}); use one of them")
            matched.append(choice)
        out[key] = tuple(matched)
    return out


def _max_value(p: ParamSpec) -> float | None:
    if p.type in ("float", "int"):
        return float(p.high) if p.high is not None else None
    numbers = [float(c) for c in p.choices or () if _is_number(c)]
    return max(numbers) if numbers else None


def _check_mix_budget(ctx: _Ctx, params: Sequence[ParamSpec], base: TrainConfig) -> None:
    top = {"data.mixup": base.data.mixup, "data.cutmix": base.data.cutmix}
    searched = {}
    for p in params:
        if p.key in top:
            value = _max_value(p)
            if value is not None:
                top[p.key] = value
                searched[p.key] = p
    total = top["data.mixup"] + top["data.cutmix"]
    if total > 1.0 + 1e-9:
        what = " and ".join(f"{k}'s {'high' if k in searched else 'fixed value'}" for k in top)
        raise ctx.error("space", f"data.mixup can reach {top['data.mixup']:g} and data.cutmix "
                                 f"{top['data.cutmix']:g}, {total:g} together, but their sum "
                                 f"must be <= 1 (the rest of the batches stay plain); lower "
                                 f"{what} so they add up to at most 1")


def _check_values(ctx: _Ctx, p: ParamSpec, base: TrainConfig) -> None:
    """Each endpoint / choice must make a valid TrainConfig on top of ``fixed``."""
    where = f"space: {p.key}"
    if p.type == "loss_mix":
        values = [{rest: 0.5, p.mixed: 0.5} for rest in p.rest or ()]
    elif p.type == "categorical":
        values = list(p.choices or ())
    else:
        values = [p.low, p.high]
    for value in values:
        try:
            replace_path(base, p.key, value)
        except ConfigError as exc:
            raise ctx.error(where, str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Enqueued trials


def _parse_enqueue(ctx: _Ctx, raw: Any, space: Sequence[ParamSpec], fixed: Mapping[str, Any],
                   data: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ctx.error("enqueue", f"{_show(raw)} is not a list of trials; write e.g. "
                                   "enqueue: [{optim.lr: 1.0e-3}]")
    by_key = {p.key: p for p in space}
    trials = []
    for i, trial in enumerate(raw):
        where = f"enqueue[{i}]"
        trial = _mapping(ctx, where, trial, "{optim.lr: 1.0e-3}")
        out: dict[str, Any] = {}
        for key, value in trial.items():
            p = by_key.get(key)
            if p is None:
                if key in _trainer_fields():
                    raise ctx.error(where, f"{key} is not searched in this study; an enqueued "
                                           "trial sets only space parameters (put "
                                           "trial-independent settings in fixed)")
                raise ctx.error(where, f"unknown key '{key}'{_hint(key, list(by_key))}; an "
                                       f"enqueued trial sets space parameters: "
                                       f"{', '.join(by_key)}")
            out[key] = _enqueued_value(ctx, f"{where}: {key}", p, value)
        chosen = {k: v for k, v in out.items() if by_key[k].type == "categorical"}
        for key in out:
            p = by_key[key]
            for cond in p.when:
                if cond not in chosen:
                    raise ctx.error(where, f"{key} depends on {cond} (when), but the trial does "
                                           f"not set {cond}; set {cond} too")
            if not p.is_active(chosen):
                cond = ", ".join(f"{k} in {list(v)}" for k, v in p.when.items())
                raise ctx.error(where, f"{key} is set, but its condition ({cond}) does not hold "
                                       f"in this trial; remove {key} or change the condition")
        _build(ctx, where, _config_raw(fixed, data, out))
        trials.append(out)
    return tuple(trials)


def _enqueued_value(ctx: _Ctx, where: str, p: ParamSpec, value: Any) -> Any:
    if p.type == "categorical":
        choices = p.choices or ()
        choice = _match_choice(value, choices)
        if choice is _MISSING and isinstance(value, str):
            try:  # 1e-4 arrives from YAML as a string
                choice = _match_choice(float(value), choices)
            except ValueError:
                pass
        if choice is _MISSING:
            raise ctx.error(where, f"{_show(value)} is not among the choices "
                                   f"({', '.join(map(str, choices))}); use one of them")
        return choice
    if p.type == "loss_mix":
        return _enqueued_mix(ctx, where, p, value)
    if p.type == "int":
        number: float = _integer(ctx, where, value)
    else:
        number = _number(ctx, where, value)
    assert p.low is not None and p.high is not None
    if not p.low <= number <= p.high:
        raise ctx.error(where, f"{number:g} is outside the range [{p.low:g}, {p.high:g}]; "
                               "use a value in the range or widen it")
    if p.step is not None:
        n = (number - p.low) / p.step
        if abs(n - round(n)) > 1e-6:
            raise ctx.error(where, f"{number:g} is not on the grid low + k * step ({p.low:g} + "
                                   f"k * {p.step:g}); round it to the grid")
    return number


def _enqueued_mix(ctx: _Ctx, where: str, p: ParamSpec, value: Any) -> dict[str, float]:
    allowed = [p.mixed, *(p.rest or ())]
    value = _mapping(ctx, where, value, "{weighted_ce: 1.0}")
    weights: dict[str, float] = {}
    for name, w in value.items():
        if name not in allowed:
            raise ctx.error(where, f"'{name}' is not part of this study's loss mix"
                                   f"{_hint(name, allowed)} ({p.mixed} mixed with one of "
                                   f"{', '.join(p.rest or ())}); use those losses")
        w = _number(ctx, f"{where}: {name}", w, "a weight >= 0", "0.5")
        if w < 0:
            raise ctx.error(f"{where}: {name}", f"{w:g} is negative; weights must be >= 0")
        weights[name] = w
    rest_used = [n for n, w in weights.items() if n != p.mixed and w > 0]
    if len(rest_used) > 1:
        raise ctx.error(where, f"gives weight to {', '.join(rest_used)}, but the mix takes "
                               f"{p.mixed} plus one of the rest; keep one of them")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise ctx.error(where, f"the weights sum to {total:g}, but must sum to 1 (the mix is "
                               f"rest: 1 - w, {p.mixed}: w); rescale them")
    w = weights.get(p.mixed, 0.0)
    assert p.low is not None and p.high is not None
    if not p.low <= w <= p.high:
        raise ctx.error(where, f"the {p.mixed} weight {w:g} is outside the range [{p.low:g}, "
                               f"{p.high:g}]; use a weight in the range or widen it")
    return {n: wt for n, wt in weights.items() if wt > 0}


# ---------------------------------------------------------------------------------------------
# Optuna factories


def create_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    """Build the Optuna sampler a study file names.

    Args:
        spec: the study's sampler (``spec.sampler``).

    Returns:
        A new sampler; optuna's experimental-feature warnings are silenced.

    Raises:
        SpecError: unknown name or option, or ``cmaes`` without the ``cmaes`` package.
    """
    ctx = _Ctx("sampler")
    if spec.name not in SAMPLERS:
        raise _choose_error(spec.name, SAMPLERS, "sampler")
    options = _check_options(ctx, "", "sampler", spec.name, spec.options)
    builders: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
    }
    if spec.name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise SpecError("sampler: cmaes needs the cmaes package, which is not installed; "
                        "run `pip install cmaes` or use sampler tpe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return builders[spec.name](**options)


def create_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    """Build the Optuna pruner a study file names.

    Args:
        spec: the study's pruner (``spec.pruner``).

    Returns:
        A new pruner (``NopPruner`` for ``none``); experimental warnings are silenced.

    Raises:
        SpecError: unknown name or option.
    """
    ctx = _Ctx("pruner")
    if spec.name not in PRUNERS:
        raise _choose_error(spec.name, PRUNERS, "pruner")
    options = _check_options(ctx, "", "pruner", spec.name, spec.options)
    builders: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return builders[spec.name](**options)


def _choose_error(name: Any, registry: Mapping[str, Any], what: str) -> SpecError:
    hint = _hint(name, list(registry)) if isinstance(name, str) else ""
    return SpecError(f"{what}: {_show(name)} is not a known {what}{hint}; "
                     f"use one of: {', '.join(registry)}")
