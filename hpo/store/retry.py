"""Riding out a lost study database: which errors mean it, and retrying through them.

Every storage call the service makes goes through :func:`with_retries` (the worker loop, the
launcher) or the storage's own retried methods (hpo.store.storage). A lost connection (the driver's
error, SQLAlchemy's wrapper of it, Optuna's StorageInternalError around either) is retried with
exponential backoff for ``$HPO_STORAGE_RETRY_SECONDS`` (default 300 s); then the caller gets one
:class:`~hpo.errors.StorageError` line, and a worker stops with it.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc
from optuna.exceptions import StorageInternalError

from hpo.errors import StorageError

__all__ = ["DEFAULT_RETRY_SECONDS", "LOST", "RETRY_ENV", "caused_by", "database_lost",
           "lost_error", "lost_within", "note_lost", "reason_of", "retry_call", "retry_seconds",
           "with_retries"]

log = logging.getLogger("hpo")
RETRY_ENV = "HPO_STORAGE_RETRY_SECONDS"  # how long a lost database is waited for
DEFAULT_RETRY_SECONDS = 300.0
_T = TypeVar("_T")
LOST = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


class _Outage:
    """What this process saw of the database: when it last lost it, whether a call gave up."""

    lost_at: float | None = None  # time.monotonic() of the last lost connection
    given_up = False  # a call waited the whole bound: the next ones try once, then give up


def note_lost() -> None:
    """Remember that this process just lost the database (see :func:`lost_within`)."""
    _Outage.lost_at = time.monotonic()


def lost_within(seconds: float) -> bool:
    """Whether this process lost the database less than ``seconds`` ago."""
    return _Outage.lost_at is not None and time.monotonic() - _Outage.lost_at < seconds


def database_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the study database was lost: the driver's error (psycopg's, or
    sqlite3's), SQLAlchemy's wrapper of it, or Optuna's StorageInternalError around either."""
    return caused_by(exc, LOST)


def retry_seconds() -> float:
    """How long storage calls retry a lost database: ``$HPO_STORAGE_RETRY_SECONDS`` or 300.

    Raises:
        StorageError: the variable is not a number of seconds > 0.
    """
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise StorageError(f"{RETRY_ENV} is {raw!r}, but must be a number of seconds > 0 (how "
                           f"long a worker waits for a lost study database); e.g. "
                           f"{RETRY_ENV}={int(DEFAULT_RETRY_SECONDS)}")
    return value


def retry_call(fn: Callable[[], _T], *, what: str, attempts: int | None = None,
           errors: tuple[type[BaseException], ...] = LOST) -> _T:
    """Call ``fn``; on ``errors`` wait (exponential backoff, at most 5 s) and try again.

    Gives up (re-raises the last error) once the waits add up to :func:`retry_seconds`, or
    after ``attempts`` tries. Once a call gave up, later calls try once until one succeeds: a
    worker whose database is gone stops in one bound, not one per call on its way out.
    """
    bound = retry_seconds()
    delay, waited, attempt = 0.5, 0.0, 0
    while True:
        attempt += 1
        try:
            result = fn()
        except Exception as exc:
            if not caused_by(exc, errors):
                raise
            note_lost()
            if _Outage.given_up or waited >= bound or (attempts and attempt >= attempts):
                _Outage.given_up = True
                raise
            level = logging.WARNING if attempt == 1 else logging.INFO
            log.log(level, "database unavailable while %s (%s); retrying in %.1f s (for up to "
                    "%.0f s)", what, reason_of(exc), delay, bound)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)
            continue
        _Outage.given_up = False
        if attempt > 1:
            log.warning("database back after %.1f s (%s)", waited, what)
        return result


def caused_by(exc: BaseException, errors: tuple[type[BaseException], ...]) -> bool:
    # Optuna's session helper re-raises every SQLAlchemy error as StorageInternalError (with
    # the original as its cause), so a lost connection hides one level down.
    if isinstance(exc, StorageInternalError):
        exc = exc.__cause__ or exc
    if isinstance(exc, errors):
        return True
    if errors is LOST and getattr(exc, "connection_invalidated", False):
        return True  # SQLAlchemy saw the connection drop (any DBAPIError)
    # the driver's own errors, when they escape without SQLAlchemy's wrapper
    return errors is LOST and any(
        c.__module__.split(".")[0] in ("psycopg", "sqlite3") and c.__name__ in _DRIVERLOST
        for c in type(exc).__mro__)


_DRIVERLOST = ("OperationalError", "InterfaceError")


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return text


def with_retries(fn: Callable[[], _T], *, what: str, attempts: int | None = None) -> _T:
    """Call ``fn``; on a lost database connection wait (exponential backoff) and try again.

    Retries for :func:`retry_seconds` (``$HPO_STORAGE_RETRY_SECONDS``, default 300 s).

    Raises:
        StorageError: the database stayed away that long (or for ``attempts`` tries).
    """
    try:
        return retry_call(fn, what=what, attempts=attempts)
    except Exception as exc:
        if not database_lost(exc):
            raise
        raise lost_error(what, exc) from None


def lost_error(what: str, exc: BaseException) -> StorageError:
    """The one line a worker stops with when the database stayed away through every retry."""
    return StorageError(f"lost the study database while {what} and it did not come back "
                        f"within {retry_seconds():.0f} s ({reason_of(exc)}); start it again and "
                        f"resume, or set {RETRY_ENV} to wait longer")
