"""Small checkers shared by the study-file parsers and the sampler/pruner registry.

Each takes a :class:`Ctx` (the file, or the thing being checked) and the place (``where``) it
reports, and raises :class:`~hpo.errors.SpecError` in one line: the value, the rule, the fix.
"""
from __future__ import annotations

__all__ = [
    "INT_LIMIT",
    "MISSING",
    "Ctx",
    "boolean",
    "check_plain",
    "choose",
    "hint",
    "integer",
    "is_number",
    "mapping",
    "match_choice",
    "number",
    "one_line",
    "show",
    "show_choice",
    "show_choices",
    "string",
    "unknown_keys",
]

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hpo.errors import SpecError

INT_LIMIT = 2**63
_MAX_DEPTH = 32
_SHOW_CHARS = 60


class Ctx:
    """Where errors come from: a file path (or a label such as ``sampler``), put first."""

    def __init__(self, path: str) -> None:
        self.path = path

    def error(self, where: str, message: str) -> SpecError:
        """The one-line error ``<path>: <where>: <message>``.

        Args:
            where: the key path inside the file (may be empty).
            message: the value, the rule and the fix.

        Returns:
            The error, to raise.
        """
        prefix = f"{self.path}: {where}" if where else self.path
        return SpecError(one_line(f"{prefix}: {message}"))


def one_line(text: str) -> str:
    """``text`` with newlines and other unprintable characters escaped.

    Keys and values come from the file; escaping them keeps the CLI's one-line error one line.

    Args:
        text: any text.

    Returns:
        The text, printable and on one line.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def show(value: Any) -> str:
    """``repr(value)``, cut to a readable length for messages."""
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def hint(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (``True`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(ctx: Ctx, where: str, value: Any, rule: str = "a number",
           example: str = "1.0e-3") -> float:
    """A finite float; a numeric string (PyYAML reads ``1e-3`` as one) is accepted.

    Raises:
        SpecError: not a number, or not finite.
    """
    original = value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ctx.error(where, f"{show(original)} is not {rule}; write e.g. {example}"
                            ) from None
    if not is_number(value):
        raise ctx.error(where, f"{show(original)} is not {rule}; write e.g. {example}")
    value = float(value)
    if not math.isfinite(value):
        raise ctx.error(where, f"{show(original)} is not {rule}; use a finite number")
    return value


def integer(ctx: Ctx, where: str, value: Any, *, minimum: int | None = None,
            maximum: int | None = None, rule: str = "") -> int:
    """A whole number (``3.0`` is accepted) within ``[minimum, maximum]``.

    Raises:
        SpecError: not a whole number, or out of range.
    """
    rule = rule or (f"an integer >= {minimum}" if minimum is not None else "an integer")
    ok = is_number(value) and (isinstance(value, int) or (
        math.isfinite(value) and float(value).is_integer() and abs(value) < INT_LIMIT))
    if not ok:
        raise ctx.error(where, f"{show(value)} is not {rule}; write a whole number")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ctx.error(where, f"{value} is too small; it must be {rule}")
    if maximum is not None and value > maximum:
        raise ctx.error(where, f"{value} is too large; it must be {rule}")
    return value


def boolean(ctx: Ctx, where: str, value: Any) -> bool:
    """``value`` if it is true or false.

    Raises:
        SpecError: anything else.
    """
    if not isinstance(value, bool):
        raise ctx.error(where, f"{show(value)} is not true or false; write true or false")
    return value


def string(ctx: Ctx, where: str, value: Any, example: str) -> str:
    """``value`` if it is a string.

    Raises:
        SpecError: anything else.
    """
    if not isinstance(value, str):
        raise ctx.error(where, f"{show(value)} is not a string; write e.g. {example}")
    return value


def mapping(ctx: Ctx, where: str, value: Any, example: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping.

    Raises:
        SpecError: anything else.
    """
    if not isinstance(value, Mapping):
        kind = "a list" if isinstance(value, (list, tuple)) else show(value)
        raise ctx.error(where, f"must be a mapping of keys to values, got {kind}; "
                               f"write e.g. {example}")
    return value


def unknown_keys(ctx: Ctx, where: str, raw: Mapping[str, Any], valid: Sequence[str],
                 what: str = "key") -> None:
    """Reject the first key of ``raw`` that is not in ``valid``.

    Raises:
        SpecError: naming the key, the closest valid one and all valid ones.
    """
    for key in raw:
        if key not in valid:
            listing = ", ".join(valid) if valid else "none"
            raise ctx.error(where, f"unknown {what} '{key}'{hint(key, valid)}; "
                                   f"valid {what}s: {listing}")


def choose(ctx: Ctx, where: str, value: Any, valid: Sequence[str], what: str) -> str:
    """``value`` if it is one of the names in ``valid``.

    Raises:
        SpecError: naming the closest valid name and all of them.
    """
    if not isinstance(value, str) or value not in valid:
        close = hint(value, valid) if isinstance(value, str) else ""
        raise ctx.error(where, f"{show(value)} is not a known {what}{close}; "
                               f"use one of: {', '.join(valid)}")
    return value


def _same(a: Any, b: Any) -> bool:
    a_seq, b_seq = isinstance(a, (list, tuple)), isinstance(b, (list, tuple))
    if a_seq or b_seq:
        return a_seq and b_seq and len(a) == len(b) and all(map(_same, a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def match_choice(value: Any, choices: Sequence[Any]) -> Any:
    """The choice equal to ``value``, or :data:`MISSING`.

    ``True`` never matches ``1``; a list matches the tuple of the same items (a list choice such
    as ``data.age_bins: [30, 58]`` is kept as a tuple).

    Args:
        value: the value to look up.
        choices: the choices.

    Returns:
        The matching choice itself, or :data:`MISSING`.
    """
    for choice in choices:
        if _same(choice, value):
            return choice
    return MISSING


def show_choice(choice: Any) -> str:
    """A choice as a study file writes it: ``[30, 58]`` for a list choice, else ``str``."""
    if isinstance(choice, (list, tuple)):
        return "[" + ", ".join(map(show_choice, choice)) + "]"
    return str(choice)


def show_choices(choices: Sequence[Any]) -> str:
    """The choices as a study file writes them, comma-separated."""
    return ", ".join(map(show_choice, choices))


def check_plain(ctx: Ctx, raw: Any) -> None:
    """Reject anything but plain YAML data, before any other check can trip over it.

    Raises:
        SpecError: a non-string key, a set or date, a huge integer, a non-finite float, or
            nesting deeper than a study file needs.
    """
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
                        raise ctx.error(where, f"key {show(key)} is not a string (it is a "
                                               f"{type(key).__name__}); quote it")
                    stack.append((item, f"{where}: {key}" if where else key, depth + 1))
            else:
                stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        elif value is None or isinstance(value, (bool, str)):
            continue
        elif isinstance(value, int):
            if abs(value) >= INT_LIMIT:
                raise ctx.error(where, f"{show(value)} is too large; integers must be "
                                       "between -2**63 and 2**63 - 1")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ctx.error(where, f"{value} is not a finite number; use a finite number")
        else:
            raise ctx.error(where, f"{show(value)} is a {type(value).__name__}, not a plain "
                                   "string, number, true/false, list or mapping; quote it")
