"""Counts a process's database work: statements, commits, and which tables each commit wrote.

Installed in a worker process before it opens its storage, :class:`DatabaseProbe` listens on
every SQLAlchemy engine of the process (Optuna's storage and anything else a trial touches,
e.g. a budget lock's connection), so the figures are what the database server sees:

- ``commits``: transactions committed (SQLAlchemy's ``commit`` event). Optuna commits its reads
  too (every storage call is a session that ends in ``commit()``); on SQLite a read-only commit
  touches no file, on PostgreSQL it is a round trip.
- ``writes``: the commits that wrote (ran an INSERT, UPDATE or DELETE), by the set of tables
  they wrote, e.g. ``trial_params`` (one per suggested parameter) or
  ``trial_user_attributes`` (user attributes). Each one is a WAL sync on SQLite and a log flush
  on PostgreSQL.
- ``seconds``: time inside SQL statements and the DBAPI commits.
"""
from __future__ import annotations

import re
import time
from collections import Counter

__all__ = ["DatabaseProbe", "written_table"]

_WRITE = re.compile(r'^\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)',
                    re.IGNORECASE)


def written_table(statement: str) -> str | None:
    """The table an INSERT / UPDATE / DELETE statement writes, or None for anything else.

    Args:
        statement: the SQL text as SQLAlchemy sends it.

    Returns:
        The table name, or None (a SELECT, a PRAGMA, ``SELECT ... FOR UPDATE``).
    """
    match = _WRITE.match(statement)
    return match.group(1).lower() if match else None


class DatabaseProbe:
    """Statements, commits and write commits (by tables written) in this process."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0
        self.commits = 0
        self.writes: Counter[str] = Counter()

    @property
    def write_commits(self) -> int:
        """Commits that wrote at least one row."""
        return sum(self.writes.values())

    def install(self) -> None:
        """Listen on every SQLAlchemy engine of this process (call once, before any query)."""
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.engine.default import DefaultDialect

        def before(conn, cursor, statement, parameters, context, executemany):
            conn.info.setdefault("_bench_t", []).append(time.perf_counter())
            table = written_table(statement)
            if table is not None:
                conn.info.setdefault("_bench_tables", set()).add(table)

        def after(conn, cursor, statement, parameters, context, executemany):
            self.seconds += time.perf_counter() - conn.info["_bench_t"].pop()
            self.statements += 1

        def on_commit(conn):
            self.commits += 1
            tables = conn.info.pop("_bench_tables", None)
            if tables:
                self.writes["+".join(sorted(tables))] += 1

        def on_rollback(conn):
            conn.info.pop("_bench_tables", None)  # nothing was written after all

        event.listen(Engine, "before_cursor_execute", before)
        event.listen(Engine, "after_cursor_execute", after)
        event.listen(Engine, "commit", on_commit)
        event.listen(Engine, "rollback", on_rollback)
        # The commit is where SQLite syncs its WAL and PostgreSQL flushes its log, and no event
        # fires after it: wrap the dialect's commit to time it (same behaviour).
        commit = DefaultDialect.do_commit

        def timed_commit(dialect, dbapi_connection):
            t = time.perf_counter()
            try:
                return commit(dialect, dbapi_connection)
            finally:
                self.seconds += time.perf_counter() - t

        DefaultDialect.do_commit = timed_commit

    def snapshot(self) -> dict:
        """The figures so far, JSON-ready."""
        return {"db_s": self.seconds, "statements": self.statements, "commits": self.commits,
                "writes": dict(self.writes)}
