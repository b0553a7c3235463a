"""A study's trial budget, counted exactly however many workers start at once.

A worker counts the study's trial lineages and, when the budget is not met, starts a trial.
Count and create are two storage calls; workers that count at the same moment would each start
one trial beyond the budget. So a worker holds the study's budget lock from the count until its
new trial exists: a PostgreSQL advisory lock (on the study database's server, so it works
across machines), or an exclusive file lock beside a SQLite file (one machine, by design).
"""
from __future__ import annotations

import fcntl
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

__all__ = ["Budget", "BudgetLock", "budget_state", "retried_numbers"]

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class Budget:
    """When a worker stops: after ``n_trials`` lineages in the study, or ``timeout`` seconds."""

    n_trials: int | None
    timeout: float | None


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the trials that have a retry (theirs is not the lineage's last word)."""
    out: set[int] = set()
    for t in trials:
        out.update(RetryHeartbeatStaleTrialCallback.retry_history(t))
    return out


def budget_state(study: optuna.Study) -> tuple[int, int, int]:
    """(lineages so far, trials waiting, trials running).

    A lineage is a trial and its retries: a retry (system attribute ``failed_trial``) does not
    count again.
    """
    trials = study.get_trials(deepcopy=False)
    lineages = sum(1 for t in trials if "failed_trial" not in t.system_attrs)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return lineages, waiting, running


class BudgetLock:
    """The study's budget lock; :meth:`release` may be called any number of times.

    Args:
        url: the study storage URL (resolved).
        study_name: the study whose budget it guards.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.key = zlib.crc32(f"hpo-budget:{study_name}".encode()) - 2**31  # a signed int4
        parsed = make_url(url)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._path: Path | None = None
        if self._sqlite and parsed.database not in (None, "", ":memory:"):
            db = Path(parsed.database).expanduser()
            self._path = db.with_name(f".{db.name}.{study_name}.budget-lock")
        self._fd: int | None = None
        self._engine: sqlalchemy.Engine | None = None
        self._conn: sqlalchemy.Connection | None = None
        self._held = False

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        if self._sqlite:
            if self._path is not None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            return
        # One server session for the worker's life: a new connection per trial costs ~10 ms.
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"),
                                   {"k": self.key})
                self._held = True
                return
            except sqlalchemy.exc.DBAPIError:
                self._drop()  # the server restarted: the session (and any lock) is gone
                if attempt == 2:
                    raise

    def _connect(self) -> sqlalchemy.Connection:
        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except sqlalchemy.exc.DBAPIError:
                pass

    def release(self) -> None:
        """Let the next worker count (a no-op when not held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock
        if self._conn is not None and self._held:
            self._held = False
            try:
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"),
                                   {"k": self.key})
            except sqlalchemy.exc.DBAPIError as exc:  # the server went away: so did the lock
                log.info("budget lock released with its connection (%s)", type(exc).__name__)
                self._drop()

    def close(self) -> None:
        """Release the lock and end the server session."""
        self.release()
        self._drop()

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
