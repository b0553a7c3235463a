"""Study files: find ``<name>.yaml``, read it safely and validate it into a :class:`StudySpec`.

A bare study name is looked up, in order, in the folder given, ``$HPO_STUDIES_DIR``,
``./studies``, the repository's top-level ``studies/`` (a checkout or editable install) and the
studies installed with the package (``hpo/studies/`` in a wheel: pyproject.toml maps the
repository's ``studies/`` to package data).
A study's name is its file's stem and becomes a folder (``trials/<name>/``), so names are kept
to :data:`~hpo.spec.STUDY_NAME_RULE` (:func:`check_study_name`, the one rule for every name a
study is given): ``..yaml`` or ``my study.yaml`` is refused with a suggested rename.
Reading refuses YAML anchors and aliases before they can expand, so a "billion laughs" document
fails at once instead of eating memory. Every failure is one :class:`~hpo.errors.SpecError` line.
"""
from __future__ import annotations

__all__ = [
    "check_study_name",
    "find_study_file",
    "list_studies",
    "load_study_spec",
    "parse_study_text",
]

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from hpo._checks import one_line
from hpo.errors import SpecError
from hpo.spec import StudySpec, check_study_name, parse_study_spec

_SUFFIXES = (".yaml", ".yml")
# A wheel holds the shipped studies as package data (pyproject.toml: "hpo.studies" = "studies");
# a checkout has them at the top level, next to pyproject.toml.
_INSTALLED = Path(__file__).resolve().parent / "studies"
_CHECKOUT = Path(__file__).resolve().parents[1]


def _search_dirs(studies_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if studies_dir is not None:
        dirs.append(Path(studies_dir))
    env = os.environ.get("HPO_STUDIES_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path("studies"))
    if (_CHECKOUT / "pyproject.toml").is_file():  # not site-packages/studies in an install
        dirs.append(_CHECKOUT / "studies")
    dirs.append(_INSTALLED)
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
        studies_dir: searched first; then ``$HPO_STUDIES_DIR``, ``./studies``, the
            repository's ``studies/`` and the studies installed with the package.

    Returns:
        The sorted, de-duplicated names.
    """
    names: set[str] = set()
    for d in _search_dirs(studies_dir):
        try:
            entries = list(d.iterdir())
        except OSError:
            continue
        names.update(p.stem for p in entries if p.suffix in _SUFFIXES and p.is_file())
    return sorted(names)


def find_study_file(
    name_or_path: str | os.PathLike[str], *, studies_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Resolve a study name or file path to an existing study file.

    An existing ``.yaml`` / ``.yml`` file is used as is. A bare name (``effnet``, or
    ``effnet.yaml``) is looked up as ``<dir>/<name>.yaml`` (then ``.yml``) in ``studies_dir``,
    ``$HPO_STUDIES_DIR``, ``./studies``, the repository's ``studies/`` and the studies installed
    with the package, in that order.

    Args:
        name_or_path: a study name or a path to a study file.
        studies_dir: a folder searched before the others.

    Returns:
        The path of the study file.

    Raises:
        SpecError: nothing matches (the message lists the available studies and the folders),
            or the study's name (the file's stem) breaks :func:`check_study_name`'s rule.
    """
    text = os.fspath(name_or_path)
    if not text:
        raise SpecError(f"no study given; name one of: {', '.join(list_studies())}")
    path = Path(text)
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise SpecError(f"study file {text} must end in .yaml or .yml; rename it")
        check_study_name(path.stem, source=text)
        return path
    bare = os.sep not in text and "/" not in text and text not in (".", "..")
    dirs = _search_dirs(studies_dir)
    if bare:
        name = check_study_name(path.stem if path.suffix in _SUFFIXES else text)
        for d in dirs:
            for suffix in _SUFFIXES:
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
    """Find, read and validate a study file; the spec keeps the file's text.

    Args:
        name_or_path: a study name or a path, as for :func:`find_study_file`.
        studies_dir: a folder searched before the others.

    Returns:
        The validated study, ``text`` holding the file's text.

    Raises:
        SpecError: the file is missing, unreadable, not valid YAML, or not a valid study, or
            its name breaks :func:`check_study_name`'s rule.
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
    return parse_study_text(text, name=path.stem, path=shown)


def parse_study_text(text: str, *, name: str, path: str) -> StudySpec:
    """Validate a study file's text, e.g. the text a study recorded in its storage.

    Args:
        text: the YAML text of a study file.
        name: the study's name (the file's stem); it must pass :func:`check_study_name`.
        path: shown at the start of every error message (the file, or where the text came
            from).

    Returns:
        The validated study, ``text`` holding ``text``; for a file's own text it equals
        :func:`load_study_spec` of that file.

    Raises:
        SpecError: a name that breaks :func:`check_study_name`'s rule, or text that is not
            valid YAML, uses anchors or aliases, or is not a valid study.
    """
    check_study_name(name, source=path)
    if not isinstance(text, str):
        raise SpecError(f"{path}: the study text is a {type(text).__name__}, but must be a "
                        "str; decode it as UTF-8 first")
    raw = _parse_yaml(text, path)
    return dataclasses.replace(parse_study_spec(raw, name=name, path=path), text=text)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


class _AnchorRefused(Exception):
    def __init__(self, event: yaml.Event) -> None:
        super().__init__()
        self.event = event


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing anchors (``&a``) and aliases (``*a``, ``<<: *a``).

    Composing sees each anchor and alias before anything is built from it, so an
    exponentially expanding document fails at its first anchor.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise _AnchorRefused(event)
        return super().compose_node(parent, index)


def _parse_yaml(text: str, shown: str) -> Any:
    try:
        return yaml.load(text, Loader=_StudyLoader)
    except _AnchorRefused as refused:
        event, mark = refused.event, refused.event.start_mark
        what = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
        raise SpecError(one_line(
            f"{shown} uses the YAML {what}{event.anchor} at line {mark.line + 1}, column "
            f"{mark.column + 1}, but study files may not use anchors or aliases (they can "
            "expand without bound); write the values out in full"
        )) from None
    except yaml.MarkedYAMLError as exc:
        raise SpecError(_syntax_message(exc, shown)) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError(one_line(
            f"{shown} is not valid YAML: {exc.reason} (character {exc.character!r} at "
            f"position {exc.position}); remove it or quote it"
        )) from None
    except RecursionError:
        raise SpecError(f"{shown} is nested too deeply to read; flatten it") from None
    except Exception as exc:  # e.g. a date like 2021-02-30 fails in the constructor
        raise SpecError(one_line(f"{shown} is not valid YAML: {exc}; fix or quote that value")
                        ) from None


def _syntax_message(exc: yaml.MarkedYAMLError, shown: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context and exc.context_mark:
        # an unclosed bracket is reported at the end of the file; say where it opened
        problem += (f" ({exc.context} started at line {exc.context_mark.line + 1}, "
                    f"column {exc.context_mark.column + 1})")
    return one_line(
        f"{shown} is not valid YAML{where}: {problem}; fix the syntax there "
        "(quote strings that contain ': ' or start with a special character)"
    )
