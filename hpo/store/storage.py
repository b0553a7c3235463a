"""Study storage: SQLite by default (WAL + busy timeout), PostgreSQL for many machines.

The URL is resolved once at the command's edge (:mod:`hpo.store.url`). Passwords are never
printed: every message and log line shows :func:`mask_url`'s form (hpo.store.secrets).

Every Optuna storage call is a transaction of its own; the storage adds
:meth:`_ResilientStorage.set_trial_attrs`, which writes a trial's user and system attributes in
one (the objective records a trial's results and artifact records in one commit, not 20), and
:func:`storage_of`, which finds that storage behind a study.

A lost database is ridden out (hpo.store.retry): idempotent calls are retried for
``$HPO_STORAGE_RETRY_SECONDS``, the heartbeat never raises, and a trial counts as stale (its
worker dead) only after a grace period of silence while the database was up.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.event
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL

from hpo.errors import StorageError
from hpo.store.lock import creation_lock
from hpo.store.optuna_private import (
    CACHE_CALLS,
    TrialHeartbeatModel,
    TrialModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    study_storage,
    unwrap_cache,
)
from hpo.store.retry import (
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
from hpo.store.secrets import mask_url
from hpo.store.url import (
    StorageURL,
    as_storage,
    check_url,
    read_only_reason,
    reading_url,
    sqlite_file,
)

__all__ = [
    "MAX_RETRY",
    "RETRY_ENV",
    "database_lost",
    "retry_seconds",
    "mask_url",
    "open_storage",
    "reading_url",
    "storage_of",
    "storage_shown",
    "with_retries",
    "lost_error",
    "quiet_optuna",
]

log = logging.getLogger("hpo")
MAX_RETRY = 3  # retries of a trial whose worker died or was stopped


def _prepare_sqlite(url: str, parsed: URL, *, read_only: bool) -> tuple[str, dict]:
    """The URL to open a SQLite storage with and the engine's arguments.

    A writer gets the file in WAL mode, or one StorageError line when it cannot write it (a
    read-only file or folder, a read-only file system) before anything is created; a reader
    gets :func:`reading_url`'s form.
    """
    engine_kwargs = {"connect_args": {"timeout": 60}}
    db = sqlite_file(parsed)
    if db is None:
        return url, engine_kwargs
    if read_only:
        return reading_url(url), engine_kwargs
    if not db.parent.exists():
        raise StorageError(f"cannot create the SQLite study database {db}: folder "
                           f"{db.parent} does not exist; create it or fix --storage")
    reason = read_only_reason(db)
    if reason is not None and not db.exists():
        raise StorageError(f"cannot create the SQLite study database {db}: {reason}; point "
                           "--storage / HPO_STORAGE at a file in a writable folder")
    if reason is not None:
        raise _read_only_error(db, reason)
    # WAL lets readers (dashboard, status) and the writer work at once; it is a property
    # of the file, so setting it once here covers every later connection.
    try:
        with closing(sqlite3.connect(db, timeout=60)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:  # not a database, a folder, a disk error
        raise _sqlite_unusable(mask_url(url), str(exc)) from None
    return url, engine_kwargs


def _sqlite_unusable(shown: str, reason: str) -> StorageError:
    return StorageError(f"cannot open the SQLite study database {shown}: {reason}; check that "
                        "it is a SQLite file and that it and its folder can be read, or fix "
                        "--storage / HPO_STORAGE")


def _read_only_error(db: Path, reason: str) -> StorageError:
    return StorageError(f"the SQLite study database {db} is read-only ({reason}), and this "
                        "command writes to it; copy it to a writable folder and point "
                        "--storage / HPO_STORAGE at the copy, or make it writable (reading "
                        "commands such as hpo status and hpo studies read it as it is)")


def _refuse_read_only_writes(storage: RDBStorage, db: Path) -> None:
    """A write SQLite refuses as read-only becomes one StorageError line, not a retried error
    (``hpo delete`` and ``hpo retry`` write through a reader's storage)."""

    @sqlalchemy.event.listens_for(storage.engine, "handle_error")
    def _read_only(context) -> None:
        if "readonly database" in str(context.original_exception):
            raise _read_only_error(db, read_only_reason(db) or str(
                context.original_exception))


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
    *CACHE_CALLS,
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
            trial_id: the trial's storage id (``hpo.store.optuna_private.trial_id``).
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
    storage = unwrap_cache(study_storage(study))
    return storage if hasattr(storage, "set_trial_attrs") else None


def storage_shown(study: optuna.Study) -> str:
    """The study's storage URL as messages show it (password masked); ``-`` if it has none."""
    storage = storage_of(study)
    return mask_url(storage.url) if storage is not None else "-"


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
    storage: StorageURL | str,
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
        storage: the storage (:func:`hpo.store.url.resolve_storage`), or its URL.
        read_only: for readers: neither create tables nor switch a SQLite file to WAL (a
            read changes no byte of the database).
        heartbeat_interval: seconds between a running trial's heartbeats; a trial silent for
            ``grace_period`` (default twice the interval) is failed and retried. None disables.
        grace_period: see above.
        max_retry: how often a trial of a dead worker is retried.

    Raises:
        StorageError: a URL the storage cannot use (:func:`hpo.store.url.check_url`), a
            SQLite file a writer cannot write, an unreachable server, bad credentials; the
            message names the URL with the password masked, and the fix.
    """
    retry_seconds()  # a bad $HPO_STORAGE_RETRY_SECONDS is one line now, not in mid-trial
    handle = as_storage(storage)
    parsed = check_url(handle)  # an unusable URL is one line before anything is opened
    url, masked = handle.url, handle.masked
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        url, engine_kwargs = _prepare_sqlite(url, parsed, read_only=read_only)
    else:
        # pre_ping replaces connections that died with a database restart before they're used
        engine_kwargs = {"pool_pre_ping": True, "pool_recycle": 300,
                         "connect_args": {"connect_timeout": 10}}
    callback = RetryHeartbeatStaleTrialCallback(max_retry=max_retry) if heartbeat_interval \
        else None
    # Optuna fills "{SCHEMA_VERSION}" into the URL with str.format: a password's braces stay
    literal = url.replace("{", "{{").replace("}", "}}")
    try:
        with creation_lock(url, enabled=not read_only):
            store = _ResilientStorage(literal, engine_kwargs=engine_kwargs,
                                      heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period,
                                      heartbeat_stale_trial_callback=callback,
                                      skip_table_creation=read_only)
    except Exception as exc:
        error = _storage_error(exc, parsed, masked)
        if error is None:
            raise
        raise error from None
    db = sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if db is not None:
        _refuse_read_only_writes(store, db)
    return store


def _storage_error(exc: Exception, parsed: URL, masked: str) -> StorageError | None:
    """The one-line error for a storage that did not open, or None to let ``exc`` through."""
    if parsed.get_backend_name() == "sqlite" and caused_by(exc, (sqlalchemy.exc.DBAPIError,)):
        return _sqlite_unusable(masked, reason_of(exc))
    if caused_by(exc, LOST):  # also behind Optuna's StorageInternalError (read-only open)
        reason = reason_of(exc)
        host = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        if any(w in reason.lower() for w in ("password", "authentication", "role ")):
            return StorageError(f"the study database at {masked} refused the login "
                                f"({reason}); check the user and password in --storage or "
                                "HPO_STORAGE")
        return StorageError(f"cannot reach the study database at {host} ({masked}): {reason}; "
                            "start the database or fix --storage / HPO_STORAGE")
    if isinstance(exc, RuntimeError):  # optuna: schema from another version
        return StorageError(f"study database {masked}: {reason_of(exc)}")
    return None


def quiet_optuna() -> None:
    # Optuna logs every failed trial with a full traceback; ours logs one line with the reason
    # and records it on the trial (``fail_reason``). ``hpo -v`` turns Optuna's logs back on.
    optuna.logging.set_verbosity(optuna.logging.ERROR)

