"""Study storage: SQLite by default (WAL + busy timeout), PostgreSQL for many machines.

The URL comes from ``--storage``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``. Passwords
are never printed: every message and log line shows :func:`mask_url`'s form (hpo.secrets).

Every Optuna storage call is a transaction of its own; the storage adds
:meth:`_ResilientStorage.set_trial_attrs`, which writes a trial's user and system attributes in
one (the objective records a trial's results and artifact records in one commit, not 20), and
:func:`storage_of`, which finds that storage behind a study.

A lost database is ridden out (hpo.storage_retry): idempotent calls are retried for
``$HPO_STORAGE_RETRY_SECONDS``, the heartbeat never raises, and a trial counts as stale (its
worker dead) only after a grace period of silence while the database was up.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

# Optuna's table classes: it exports no public name for them, and the batch write below must
# write exactly the rows Optuna's own calls write.
from optuna.storages._rdb.models import (
    TrialHeartbeatModel,
    TrialModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
)
from optuna.trial import TrialState
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url

from hpo.errors import StorageError
from hpo.secrets import mask_url
from hpo.storage_lock import creation_lock
from hpo.storage_retry import (
    LOST,
    RETRY_ENV,
    caused_by,
    database_lost,
    lost_error,
    lost_within,
    note_lost,
    reason_of,
    retry_call,
    retry_seconds,
    with_retries,
)

__all__ = [
    "DEFAULT_STORAGE",
    "MAX_RETRY",
    "RETRY_ENV",
    "database_lost",
    "retry_seconds",
    "mask_url",
    "resolve_storage_url",
    "open_storage",
    "storage_of",
    "with_retries",
    "lost_error",
    "quiet_optuna",
]

log = logging.getLogger("hpo")
DEFAULT_STORAGE = "sqlite:///hpo.db"
MAX_RETRY = 3  # retries of a trial whose worker died or was stopped
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def resolve_storage_url(url: str | None = None) -> str:
    """``url``, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db`` (postgresql:// = psycopg 3)."""
    url = url or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE
    scheme, sep, rest = url.partition("://")
    if sep and scheme in _DRIVERS:
        url = f"{_DRIVERS[scheme]}://{rest}"
    return url


def _prepare_sqlite(url: str, *, read_only: bool = False) -> dict:
    path = make_url(url).database
    if path and path != ":memory:" and not read_only:
        db = Path(path).expanduser()
        if not db.parent.exists():
            raise StorageError(f"cannot create the SQLite study database {db}: folder "
                               f"{db.parent} does not exist; create it or fix --storage")
        # WAL lets readers (dashboard, status) and the writer work at once; it is a property
        # of the file, so setting it once here covers every later connection.
        with sqlite3.connect(db, timeout=60) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    return {"connect_args": {"timeout": 60}}


# Calls that are safe to repeat after a lost connection (reads, and writes that set a value).
# create_new_trial is not: a repeat after a commit whose answer was lost would leave a RUNNING
# trial nobody owns; its caller (the worker loop) retries the whole trial instead, and the stale
# check below fails such an orphan. The private ones are those Optuna's trial cache calls.
_IDEMPOTENT = (
    "get_all_studies", "get_all_trials", "get_best_trial", "get_n_trials",
    "get_study_directions", "get_study_id_from_name", "get_study_name_from_id",
    "get_study_system_attrs", "get_study_user_attrs", "get_trial", "get_trial_id_from_study_id_"
    "trial_number", "get_trial_number_from_id", "get_trial_param", "get_trial_params",
    "get_trial_system_attrs", "get_trial_user_attrs", "set_study_system_attr",
    "set_study_user_attr", "set_trial_intermediate_value", "set_trial_param",
    "set_trial_system_attr", "set_trial_user_attr", "check_trial_is_updatable",
    "_get_trials", "_set_trial_param", "_get_best_trial_id",
)


class _ResilientStorage(RDBStorage):
    """RDBStorage that rides out a database outage (a restart, a failover, a stopped server).

    Idempotent calls are retried with exponential backoff for :func:`retry_seconds` (default
    300 s), so a trial that reports an epoch or records its results during an outage is not
    lost. The heartbeat never raises: one failed write would end the heartbeat thread and make
    a live trial look dead. And a trial is judged dead (stale) only by silence while the
    database was up: see :meth:`_get_stale_trial_ids`.
    """

    _heartbeat_failing = False
    _never_beat: dict[int, float] = {}  # trial id -> when this process first saw it beatless

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:  # the thread must live: any error, the next beat tries again
            if database_lost(exc):
                note_lost()
            if not self._heartbeat_failing:
                log.warning("heartbeat of trial %d not recorded (%s); will try again",
                            trial_id, reason_of(exc))
            self._heartbeat_failing = True
            return
        if self._heartbeat_failing:
            log.info("heartbeat of trial %d recorded again", trial_id)
            self._heartbeat_failing = False

    def set_trial_state_values(self, trial_id, state, values=None) -> bool:
        tries = [0]

        def attempt() -> bool:
            tries[0] += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A repeat after a lost connection: the first try committed but its answer was
                # lost when the state is ours. On a first try it is someone else's (told twice
                # is an error, never a success).
                if tries[0] > 1 and self.get_trial(trial_id).state == state:
                    return True
                raise
        return retry_call(attempt, what=f"recording trial state {state.name}")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials of the study silent for longer than the grace period.

        Silence is counted only while the database was up: on PostgreSQL from the server's
        start at the latest (after a restart every worker gets a whole grace period to beat
        again), and not at all by a process that lost the database within the grace period
        and a heartbeat (its view of the others' silence is the outage's). A trial that never
        beat (created by a call whose answer was lost) is stale once this process has seen it
        silent for the grace period and a minute more.
        """
        interval = self.heartbeat_interval or 0
        grace = self.grace_period or 2 * interval
        if lost_within(grace + interval):
            return []
        now, since, rows = retry_call(lambda: self._running_beats(study_id),
                                      what="checking for dead workers")
        stale, silent = [], {}
        for trial_id, beat in rows:
            if beat is None:  # never beat: judged by this process's own clock
                first = self._never_beat.get(trial_id, time.monotonic())
                silent[trial_id] = first
                # a minute more than a beating trial gets: a first beat may wait for a lock
                if time.monotonic() - first > grace + interval + 60:
                    stale.append(trial_id)
                continue
            last = max(beat, since) if since is not None else beat
            if now - last > timedelta(seconds=grace):
                stale.append(trial_id)
        self._never_beat = silent
        return stale

    def _running_beats(self, study_id: int) -> tuple[datetime, datetime | None, list]:
        with _transaction(self.scoped_session) as session:
            now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            since = None
            if self.engine.name == "postgresql":
                since = session.execute(sqlalchemy.text(
                    "SELECT pg_postmaster_start_time()")).scalar()
            rows = session.execute(
                sqlalchemy.select(TrialModel.trial_id, TrialHeartbeatModel.heartbeat)
                .outerjoin(TrialHeartbeatModel,
                           TrialHeartbeatModel.trial_id == TrialModel.trial_id)
                .where(TrialModel.study_id == study_id,
                       TrialModel.state == TrialState.RUNNING)).all()
        # naive times in the session's zone, as Optuna stores heartbeats
        if since is not None:
            since = since.astimezone(now.tzinfo).replace(tzinfo=None)
        now = now.replace(tzinfo=None)
        return now, since, [(r[0], r[1]) for r in rows]

    def set_trial_attrs(self, trial_id: int, *, user: Mapping[str, Any] | None = None,
                        system: Mapping[str, Any] | None = None) -> None:
        """Write many attributes of a running trial in one transaction (one commit).

        Each ``trial.set_user_attr`` is a transaction of its own, and a transaction costs a
        commit (a WAL sync on SQLite, a log flush and a round trip on PostgreSQL): a trial that
        records 20 attributes one by one pays 20 of them. The rows are the ones Optuna's own
        calls write (its upsert, JSON values), so every reader sees the same attributes. An
        upsert may be repeated, so a lost connection is retried like the other idempotent calls.

        Args:
            trial_id: the trial's storage id (``trial._trial_id``).
            user: user attributes, key -> JSON-serialisable value.
            system: system attributes, key -> JSON-serialisable value (e.g. the artifact
                records ``artifacts:<id>`` that the dashboard lists).

        Raises:
            UpdateFinishedTrialError: the trial is already finished (nothing is written).
            KeyError: no trial has this id.
            sqlalchemy.exc.OperationalError: the database stayed away through every retry
                (``InterfaceError`` likewise).
        """
        tables = [(TrialUserAttributeModel, dict(user or {})),
                  (TrialSystemAttributeModel, dict(system or {}))]
        count = sum(len(values) for _, values in tables)
        if not count:
            return

        def attempt() -> None:
            with _transaction(self.scoped_session) as session:
                # One look at the trial instead of one per attribute (Optuna's per-key helper
                # loads the trial row for each key: most of a batch's CPU time).
                state = session.execute(sqlalchemy.select(TrialModel.state).where(
                    TrialModel.trial_id == trial_id)).scalar_one_or_none()
                if state is None:
                    raise KeyError(f"no trial with id {trial_id} in the study storage")
                self.check_trial_is_updatable(trial_id, state)
                for model, values in tables:
                    if values:
                        self._upsert_attrs(session, model, trial_id, values)

        retry_call(attempt, what=f"recording {count} attributes of trial {trial_id}")

    def set_fail_reason(self, trial_id: int, reason: str) -> None:
        """Record why a trial failed (user attribute ``fail_reason``), after it was failed.

        Optuna's attribute calls refuse a finished trial; a trial failed for a dead worker
        gets its reason right after its state (a write that sets a value: repeatable).
        """
        def attempt() -> None:
            with _transaction(self.scoped_session) as session:
                self._upsert_attrs(session, TrialUserAttributeModel, trial_id,
                                   {"fail_reason": reason})

        retry_call(attempt, what=f"recording why trial id {trial_id} failed")

    def _upsert_attrs(self, session: sqlalchemy.orm.Session, model, trial_id: int,
                      values: dict[str, Any]) -> None:
        # The statement Optuna's _set_trial_attr_without_commit runs, for all keys at once.
        insert = {"postgresql": pg_dialect.insert, "sqlite": sqlite_dialect.insert}.get(
            self.engine.name)
        if insert is None or (self.engine.name == "sqlite"
                              and sqlite3.sqlite_version_info < (3, 24, 0)):
            for key, value in values.items():  # no multi-row upsert here: Optuna's per-key way
                self._set_trial_attr_without_commit(session, model, trial_id, key, value)
            return
        stmt = insert(model).values([{"trial_id": trial_id, "key": key,
                                      "value_json": json.dumps(value)}
                                     for key, value in values.items()])
        session.execute(stmt.on_conflict_do_update(
            index_elements=[model.trial_id, model.key],
            set_={"value_json": stmt.excluded.value_json}))


@contextmanager
def _transaction(scoped: sqlalchemy.orm.scoped_session) -> Iterator[sqlalchemy.orm.Session]:
    # Optuna's own session helper turns a lost connection into StorageInternalError; this one
    # lets SQLAlchemy's error through so _retry can recognise it (and commits exactly once).
    session = scoped()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def storage_of(study: optuna.Study) -> RDBStorage | None:
    """The study's own RDBStorage (for :meth:`_ResilientStorage.set_trial_attrs`), or None.

    ``optuna.create_study`` wraps an RDBStorage in a private write-through cache; batched
    writes must go to the storage underneath. The cache re-reads running trials from the
    database, so writes that bypass it are seen by every reader.

    Args:
        study: a study opened on a storage from :func:`open_storage`.

    Returns:
        The storage, or None when it cannot write batches (another storage class).
    """
    storage = getattr(study, "_storage", None)
    storage = getattr(storage, "_backend", storage)  # optuna's _CachedStorage wrapper
    return storage if hasattr(storage, "set_trial_attrs") else None


def _retrying(name: str):
    def call(self, *args, **kwargs):
        method = getattr(RDBStorage, name)
        return retry_call(lambda: method(self, *args, **kwargs), what=name.replace("_", " "))

    call.__name__ = name
    call.__doc__ = getattr(RDBStorage, name).__doc__
    return call


for _name in _IDEMPOTENT:
    setattr(_ResilientStorage, _name, _retrying(_name))


def open_storage(
    url: str | None = None,
    *,
    heartbeat_interval: int | None = 30,
    grace_period: int | None = None,
    max_retry: int = MAX_RETRY,
    read_only: bool = False,
) -> RDBStorage:
    """Open (and create if needed) the study storage.

    Any number of processes may open a new storage at the same instant: creating the schema is
    serialised (a file lock beside a SQLite file, an advisory lock on PostgreSQL).

    Args:
        url: storage URL; None means ``$HPO_STORAGE`` or ``sqlite:///hpo.db``.
        read_only: for readers: neither create tables nor switch a SQLite file to WAL (a
            read changes no byte of the database).
        heartbeat_interval: seconds between a running trial's heartbeats; a trial silent for
            ``grace_period`` (default twice the interval) is failed and retried. None disables.
        grace_period: see above.
        max_retry: how often a trial of a dead worker is retried.

    Raises:
        StorageError: unreachable server, bad credentials, unknown database or driver; the
            message names the host with the password masked, and the fix.
    """
    retry_seconds()  # a bad $HPO_STORAGE_RETRY_SECONDS is one line now, not in mid-trial
    url = resolve_storage_url(url)
    masked = mask_url(url)
    parsed = _parse(url, masked)
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = _prepare_sqlite(url, read_only=read_only)
    else:
        # pre_ping replaces connections that died with a database restart before they're used
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300,
                         "connect_args": {"connect_timeout": 10}}
    callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval \
        else None
    try:
        with creation_lock(url, enabled=not read_only):
            return _ResilientStorage(url, engine_kwargs=engine_kwargs,
                                     heartbeat_interval=heartbeat_interval,
                                     grace_period=grace_period,
                                     heartbeat_stale_trial_callback=callback,
                                     skip_table_creation=read_only)
    except Exception as exc:
        error = _storage_error(exc, parsed, masked)
        if error is None:
            raise
        raise error from None


def _parse(url: str, masked: str) -> URL:
    """SQLAlchemy's reading of ``url``; a StorageError (naming only ``masked``) when it has none.

    SQLAlchemy ends a password at its first ``@`` and takes the rest for the host: such a
    URL would connect to a host named after part of the password, so it is refused here.
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise StorageError(f"storage URL {masked!r} is not a database URL; use e.g. "
                           f"{DEFAULT_STORAGE} or postgresql://user:pass@host:5432/db") from None
    if "@" in (parsed.host or ""):
        raise StorageError(f"storage URL {masked}: the user name or password holds an "
                           "unencoded '@'; write it as %40 (percent-encode the password)")
    return parsed


def _storage_error(exc: Exception, parsed: URL, masked: str) -> StorageError | None:
    """The one-line error for a storage that did not open, or None to let ``exc`` through."""
    if caused_by(exc, LOST):  # also behind Optuna's StorageInternalError (read-only open)
        host = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        reason = reason_of(exc)
        if any(w in reason.lower() for w in ("password", "authentication", "role ")):
            return StorageError(f"the study database at {masked} refused the login "
                                f"({reason}); check the user and password in --storage or "
                                "HPO_STORAGE")
        return StorageError(f"cannot reach the study database at {host} ({masked}): {reason}; "
                            "start the database or fix --storage / HPO_STORAGE")
    if isinstance(exc, (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
                        ImportError)):
        return StorageError(f"storage URL {masked} cannot be used ({reason_of(exc)}); for "
                            "PostgreSQL install psycopg: pip install 'psycopg[binary]'")
    if isinstance(exc, RuntimeError):  # optuna: schema from another version
        return StorageError(f"study database {masked}: {reason_of(exc)}")
    return None


def quiet_optuna() -> None:
    # Optuna logs every failed trial with a full traceback; ours logs one line with the reason
    # and records it on the trial (``fail_reason``). ``hpo -v`` turns Optuna's logs back on.
    optuna.logging.set_verbosity(optuna.logging.ERROR)

