"""Study files: find ``<name>.yaml``, read it safely and validate it into a :class:`StudySpec`.

A bare study name is looked up, in order, in the folder given, ``$HPO_STUDIES_DIR``,
``./studies``, the repository's top-level ``studies/`` (a checkout or editable install) and the
studies installed with the package (``hpo/studies/`` in a wheel: pyproject.toml maps the
repository's ``studies/`` to package data).
A study's name is its file's stem and becomes a folder (``trials/<name>/``), so names are kept
to :data:`~hpo.studyfile.spec.STUDY_NAME_RULE` (:func:`check_study_name`, the one rule for every
name a study is given): ``..yaml`` or ``my study.yaml`` is refused with a suggested rename.
Reading refuses YAML anchors and aliases before they can expand, so a "billion laughs" document
fails at once instead of eating memory; a file over :data:`MAX_STUDY_BYTES` is refused before it
is parsed, a string longer than :data:`MAX_DESCRIPTION_CHARS` (``description``) or
:data:`MAX_STRING_CHARS` (any other) and a key given twice in one mapping are refused before
anything is built from them. Every failure is one :class:`~hpo.errors.SpecError` line.
"""
from __future__ import annotations

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "MAX_STRING_CHARS",
    "MAX_STUDY_BYTES",
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

from hpo.errors import SpecError
from hpo.studyfile._checks import one_line
from hpo.studyfile.parse import parse_study_spec
from hpo.studyfile.spec import StudySpec, check_study_name

_SUFFIXES = (".yaml", ".yml")
# A study file, or a study text from a storage, may hold at most this many bytes (UTF-8). The
# shipped studies are under 4 KiB; PyYAML's pure-Python parser takes seconds per 100 KiB of dense
# YAML, so the bound keeps a refusal quick (a 50 MB description once took minutes and 1.2 GB).
MAX_STUDY_BYTES = 256 * 1024
# The top-level description may hold at most this many characters; any other string or scalar,
# keys included (a model name, a path, a choice), at most MAX_STRING_CHARS.
MAX_DESCRIPTION_CHARS = 10_000
MAX_STRING_CHARS = 1_000
# A key or value shown in a message is cut to this many characters.
_SHOWN_CHARS = 60
# A wheel holds the shipped studies as package data (pyproject.toml: "hpo.studies" = "studies");
# a checkout has them at the top level, next to pyproject.toml.
_INSTALLED = Path(__file__).resolve().parents[1] / "studies"
_CHECKOUT = Path(__file__).resolve().parents[2]


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
        with open(path, "rb") as f:  # never more than the bound, whatever the file's size
            size = os.fstat(f.fileno()).st_size
            data = b"" if size > MAX_STUDY_BYTES else f.read(MAX_STUDY_BYTES + 1)
    except OSError as exc:
        message = f"cannot read study file {shown}: {exc.strerror}; check the path"
        raise SpecError(message) from None
    _check_size(shown, max(size, len(data)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"{shown} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        raise SpecError(message) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as read_text's universal newlines
    return parse_study_text(text, name=path.stem, path=shown)


def _check_size(shown: str, size: int) -> None:
    if size > MAX_STUDY_BYTES:
        raise SpecError(f"{shown} is {size:,} bytes, but a study file may be at most "
                        f"{MAX_STUDY_BYTES:,} bytes ({MAX_STUDY_BYTES // 1024} KiB); shorten it "
                        "(a study needs a few KiB: keep long notes out of the file)")


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
        SpecError: a name that breaks :func:`check_study_name`'s rule, or text that is over
            :data:`MAX_STUDY_BYTES`, not valid YAML, uses anchors or aliases, gives a key twice
            in one mapping, holds a string over its bound, or is not a valid study.
    """
    check_study_name(name, source=path)
    if not isinstance(text, str):
        raise SpecError(f"{path}: the study text is a {type(text).__name__}, but must be a "
                        "str; decode it as UTF-8 first")
    _check_size(path, len(text.encode("utf-8", "surrogatepass")))
    raw = _parse_yaml(text, path)
    return dataclasses.replace(parse_study_spec(raw, name=name, path=path), text=text)


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


class _StudyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing anchors (``&a``) and aliases (``*a``, ``<<: *a``), keys
    given twice in one mapping and over-long strings.

    Composing sees each anchor and alias before anything is built from it, so an
    exponentially expanding document fails at its first anchor, as a :class:`SpecError`
    naming the file (``shown``). The composed document is checked (:func:`_check_nodes`)
    before it is constructed, where a repeated key would silently keep its last value.
    """

    def __init__(self, text: str, shown: str) -> None:
        super().__init__(text)
        self.shown = shown

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            what = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise SpecError(one_line(
                f"{self.shown} uses the YAML {what}{event.anchor} at line {mark.line + 1}, "
                f"column {mark.column + 1}, but study files may not use anchors or aliases "
                "(they can expand without bound); write the values out in full"))
        return super().compose_node(parent, index)

    def construct_document(self, node: Any) -> Any:
        _check_nodes(node, self.shown)
        return super().construct_document(node)


def _check_nodes(root: yaml.Node, shown: str) -> None:
    """Refuse a key given twice in one mapping, and a scalar (key or value) over its bound.

    Walks the composed document in file order, so the first problem in the file is reported.
    """
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            _check_scalar(node, where, shown)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in reversed(
                list(enumerate(node.value))))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            children: list[tuple[yaml.Node, str]] = []
            for key, value in node.value:
                name = _clip(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                if isinstance(key, yaml.ScalarNode):
                    _check_scalar(key, where, shown, is_key=True)
                    line, ident = key.start_mark.line + 1, (key.tag, key.value)
                    if ident in seen:
                        _duplicate(shown, where, name, seen[ident], line)
                    seen[ident] = line
                children.append((value, f"{where}: {name}" if where else name))
            stack.extend(reversed(children))


def _duplicate(shown: str, where: str, name: str, first: int, line: int) -> None:
    prefix = f"{shown}: {where}" if where else shown
    where_at = f"lines {first} and {line}" if first != line else f"both on line {line}"
    raise SpecError(one_line(
        f"{prefix}: key '{name}' is given twice ({where_at}); YAML would keep "
        "only the last silently, so keep one of them"))


def _check_scalar(node: yaml.ScalarNode, where: str, shown: str, *, is_key: bool = False) -> None:
    description = where == "description" and not is_key
    limit = MAX_DESCRIPTION_CHARS if description else MAX_STRING_CHARS
    if len(node.value) <= limit:
        return
    what = f"the key {_clip(node.value)!r}" if is_key else "the value"
    rule = ("the description" if description else
            "a key" if is_key else "a value other than the description")
    prefix = f"{shown}: {where}" if where else shown
    raise SpecError(one_line(
        f"{prefix}: {what} at line {node.start_mark.line + 1} is {len(node.value):,} characters "
        f"long, but {rule} may be at most {limit:,} characters; shorten it"))


def _clip(text: str) -> str:
    half = (_SHOWN_CHARS - 3) // 2
    return text if len(text) <= _SHOWN_CHARS else f"{text[:half]}...{text[-half:]}"


def _parse_yaml(text: str, shown: str) -> Any:
    try:
        loader = _StudyLoader(text, shown)  # yaml.load's steps, with the file's name
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except SpecError:
        raise
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
