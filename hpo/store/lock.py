"""Creating a study storage from several processes at the same instant.

Optuna creates the schema (tables, the alembic version row) when a storage is first opened.
Two processes doing that on a new SQLite file or PostgreSQL database race: one of them fails on
``UNIQUE constraint failed: alembic_version``. :func:`creation_lock` serialises the opening: an
exclusive file lock beside the SQLite file, or a PostgreSQL advisory lock held on its own
connection. Opening an existing storage takes it too; it costs a millisecond or two.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

__all__ = ["creation_lock"]

_PG_KEY = zlib.crc32(b"hpo-create-storage") - 2**31  # a signed int4, like every advisory key


@contextlib.contextmanager
def creation_lock(url: str, *, enabled: bool = True) -> Iterator[None]:
    """Hold the storage's creation lock for the ``with`` block (a no-op when not enabled).

    A lock that cannot be taken (no server yet, a read-only folder) is skipped: opening the
    storage then reports the real problem in its own words.
    """
    if not enabled:
        yield
        return
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with _file_lock(parsed.database):
            yield
    elif parsed.get_backend_name() == "postgresql":
        with _advisory_lock(url):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(database: str | None) -> Iterator[None]:
    if not database or database == ":memory:":
        yield
        return
    db = Path(database).expanduser()
    try:
        fd = os.open(db.with_name(f".{db.name}.create-lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"connect_timeout": 10})
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sqlalchemy.exc.DBAPIError:
        engine.dispose()
        yield
        return
    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_KEY})
        yield
    finally:
        with contextlib.suppress(sqlalchemy.exc.DBAPIError):
            conn.close()  # ending the session releases the lock
        engine.dispose()
