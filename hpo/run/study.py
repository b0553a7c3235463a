"""The study's lifecycle, through two doors kept apart.

**Create or resume** (:func:`create_or_resume`, from a study file): the first time, the study
records what every later reader needs (its split, metric, description, the study file's path
and text) and enqueues the file's recipes; later, it checks that the split is the same.

**Load** (:func:`load`, :func:`peek`, :func:`summaries`, from the storage alone): ``status``,
``best``, ``studies``, ``promote``, ``predict``, ``ensembles`` and ``dashboard`` need no study
file and no ``--data``; they read what the study recorded, and any Optuna study in the storage
can be read, recorded or not. A load never writes: no database file, folder, study or attribute
appears because someone looked.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from hpo.errors import HpoError, SpecError
from hpo.store.storage import open_storage, with_retries
from hpo.store.url import StorageURL, as_storage, check_url, reading_url, sqlite_file
from hpo.studyfile.compare import spec_changes
from hpo.studyfile.files import load_study_spec, parse_study_text
from hpo.studyfile.samplers import create_pruner, create_sampler
from hpo.studyfile.space import enqueue_params
from hpo.studyfile.spec import SamplerSpec, StudySpec

__all__ = [
    "StudyRecord",
    "create_or_resume",
    "data_folder",
    "load",
    "open_for_reading",
    "peek",
    "record_of",
    "spec_for",
    "split_of",
    "study_name_of",
    "summaries",
    "worker_seed_offset",
]

SPLIT_ATTR = "hpo_split"
METRIC_ATTR = "metric"
DESCRIPTION_ATTR = "description"
FILE_ATTR = "study_file"
TEXT_ATTR = "study_file_text"

log = logging.getLogger("hpo")


@dataclass(frozen=True)
class StudyRecord:
    """What a study recorded about itself (empty fields for a study made with plain Optuna)."""

    name: str
    metric: str
    direction: str
    split: dict[str, Any] | None
    description: str
    study_file: str | None
    text: str | None

    @property
    def train_dir(self) -> str | None:
        """The training folder the study was started with (absolute), if it recorded one."""
        return (self.split or {}).get("train_dir")


def record_of(study: optuna.Study) -> StudyRecord:
    """Read a loaded study's record (its user attributes; nothing is written).

    A study made outside ``hpo`` has no recorded metric: it is named after Optuna's metric
    names when the study set them, else ``value``.
    """
    attrs = with_retries(lambda: study.user_attrs, what="reading the study's attributes")
    names = with_retries(lambda: study.metric_names, what="reading the study's metric names")
    metric = attrs.get(METRIC_ATTR) or (names[0] if names else "value")
    direction = ",".join(d.name.lower() for d in study.directions)
    split = attrs.get(SPLIT_ATTR)
    return StudyRecord(
        name=study.study_name, metric=str(metric), direction=direction,
        split=dict(split) if isinstance(split, dict) else None,
        description=str(attrs.get(DESCRIPTION_ATTR) or ""),
        study_file=attrs.get(FILE_ATTR), text=attrs.get(TEXT_ATTR),
    )


# ---------------------------------------------------------------------------------------------
# load: from the storage alone, never writing


def _sqlite_missing(url: str) -> Path | None:
    """The path of a SQLite database file that does not exist (None: exists, or not SQLite).

    Raises:
        StorageError: the URL cannot be used (checked before anything is opened).
    """
    parsed = check_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    path = sqlite_file(parsed)
    return None if path is None or path.is_file() else path


# How long a reader waits for a storage another process is creating this instant.
_CREATION_WAIT = 60.0


def _schema_state(url: str) -> str:
    """``empty`` (no Optuna tables), ``creating`` (tables, but another process has not stamped
    the schema's version yet) or ``ready``."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        inspector = sqlalchemy.inspect(engine)
        if not inspector.has_table("version_info"):
            return "empty"
        if not inspector.has_table("alembic_version"):
            return "creating"
        with engine.connect() as conn:
            stamped = conn.execute(sqlalchemy.text("SELECT 1 FROM alembic_version")).first()
        return "ready" if stamped is not None else "creating"
    except sqlalchemy.exc.DBAPIError:
        return "ready"  # unreachable, refused: open_storage says so in its own words
    finally:
        engine.dispose()


def _open_read_only(url: str):
    """The storage opened for reading, or None when it holds no Optuna tables yet.

    A database nobody has written to (an empty PostgreSQL database or SQLite file) holds no
    studies, which is no error for a reader; its tables are not created by looking. A storage
    another process is creating at this instant is waited for: opening it half-made would have
    Optuna stamp its version beside the creator's (a UNIQUE constraint error).
    """
    deadline = time.monotonic() + _CREATION_WAIT
    state = _schema_state(reading_url(url))  # a read-only SQLite file is read as it is
    while state == "creating" and time.monotonic() < deadline:
        time.sleep(0.1)
        state = _schema_state(reading_url(url))
    if state == "empty":
        return None
    return open_storage(url, heartbeat_interval=None, read_only=True)


def _open_existing(url: str):
    missing = _sqlite_missing(url)
    if missing is not None:
        return None
    return _open_read_only(url)


def summaries(storage: StorageURL | str) -> list[optuna.study.StudySummary]:
    """Every study in the storage (made by ``hpo`` or not); empty when there is no database.

    Raises:
        StorageError: the database cannot be reached.
    """
    handle = as_storage(storage)
    url = handle.url
    store = _open_existing(url)
    if store is None:
        return []
    return with_retries(lambda: optuna.get_all_study_summaries(store, include_best_trial=True),
                        what="listing studies")


def peek(name: str, *, storage: StorageURL | str) -> StudyRecord | None:
    """The record of study ``name``, or None when the storage has no such study (or no file).

    Raises:
        StorageError: the database cannot be reached.
    """
    handle = as_storage(storage)
    url = handle.url
    store = _open_existing(url)
    if store is None:
        return None
    names = with_retries(lambda: [s.study_name for s in store.get_all_studies()],
                         what="listing studies")
    if name not in names:
        return None
    study = with_retries(lambda: optuna.load_study(study_name=name, storage=store),
                         what="loading the study")
    return record_of(study)


def open_for_reading(storage: StorageURL | str, *, study: str = "NAME"):
    """The study storage, opened only if it exists (a missing SQLite file is not created).

    Args:
        storage: the study storage (:func:`hpo.store.url.resolve_storage`).
        study: the study the caller looks for, named in the error.

    Raises:
        HpoError: no SQLite database file there.
        StorageError: the database cannot be reached.
    """
    handle = as_storage(storage)
    url = handle.url
    missing = _sqlite_missing(url)
    if missing is not None:
        what = "studies" if study == "NAME" else f"study {study!r}"
        raise HpoError(f"no study database at {missing} (storage {handle.masked}), so no "
                       f"{what} there; start one with: hpo launch --study {study}, or point "
                       "--storage / HPO_STORAGE at the studies' database")
    store = _open_read_only(url)
    if store is None:
        raise HpoError(f"the study database {handle.masked} holds no studies yet; start one "
                       f"with: hpo launch --study {study}")
    return store


def load(name: str, *, storage: StorageURL | str) -> optuna.Study:
    """Load study ``name`` from the storage alone (no study file, no data folder).

    Args:
        name: the study's name in the storage. A path to a study file (``studies/x.yaml``)
            stands for the study named after the file.
        storage: the study storage (:func:`hpo.store.url.resolve_storage`).

    Returns:
        The study; read it with :func:`record_of`.

    Raises:
        HpoError: no database, or no such study (the message lists the studies there).
        StorageError: the database cannot be reached.
    """
    name = study_name_of(name)
    handle = as_storage(storage)
    store = open_for_reading(handle, study=name)
    names = with_retries(lambda: [s.study_name for s in store.get_all_studies()],
                         what="listing studies")
    if name not in names:
        listing = ", ".join(sorted(names)) or "none"
        raise HpoError(f"study {name!r} does not exist in {handle.masked} (studies there: "
                       f"{listing}); start it with: hpo launch --study {name}")
    return with_retries(lambda: optuna.load_study(study_name=name, storage=store),
                        what="loading the study")


def data_folder(name: str, train_dir: str | None, *, storage: StorageURL | str) -> str | None:
    """``--data`` if given, else the training folder study ``name`` recorded (None: neither)."""
    if train_dir is not None:
        return train_dir
    record = peek(name, storage=storage)
    return record.train_dir if record is not None else None


def study_name_of(name_or_path: str) -> str:
    """A study's name: the argument itself, or the stem of a study file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or os.sep in name_or_path or "/" in name_or_path:
        return path.stem
    return name_or_path


def spec_for(name_or_path: str, *, storage: StorageURL | str) -> StudySpec:
    """The study file for a worker: found on this machine, else the text the study recorded.

    A worker on a machine without the study file (a wheel install, another checkout) can
    still join a study that an ``hpo launch`` elsewhere created.

    Raises:
        SpecError: no such file here and no study of that name recorded its file.
    """
    try:
        return load_study_spec(name_or_path)
    except SpecError as not_here:
        record = peek(study_name_of(name_or_path), storage=storage)
        if record is None or not record.text:
            raise not_here from None
        return parse_study_text(record.text, name=record.name,
                                path=f"{record.study_file or record.name} (recorded in storage)")


# ---------------------------------------------------------------------------------------------
# create or resume: from a study file


def split_of(spec: StudySpec, train_dir: str | None) -> dict[str, Any]:
    """The split a study records: the data section, with ``train_dir`` made absolute."""
    split = dict(spec.data)
    if train_dir:
        split["train_dir"] = train_dir
    split["train_dir"] = os.path.abspath(split["train_dir"])
    return split


def _comparable(split: dict[str, Any]) -> dict[str, Any]:
    # The data folder may be mounted elsewhere on another machine; its name and the split
    # settings must agree.
    return {**split, "train_dir": os.path.basename(os.path.normpath(split["train_dir"]))}


def worker_seed_offset() -> int:
    """Which worker this process is, for its sampler seed (see :func:`create_or_resume`).

    ``hpo launch`` numbers its workers (``HPO_WORKER_INDEX``): worker 0 keeps the study file's
    seed, so a one-worker study is reproducible. A worker started by hand on another machine
    takes an offset from its host name and process id.
    """
    index = os.environ.get("HPO_WORKER_INDEX", "")
    if index.isdigit():
        return int(index)
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_003 + 1


def _offset_seed(sampler: SamplerSpec, offset: int, history: int) -> SamplerSpec:
    """The sampler with a seed of its own for this worker and this point of the study.

    ``offset`` separates parallel workers; ``history`` (trials already in the study) separates
    launches: a relaunched study must not replay the random proposals of its first launch.
    A new study's worker 0 keeps the file's seed, so a one-worker study is reproducible.
    """
    seed = sampler.options.get("seed")
    if seed is None or (offset == 0 and history == 0):
        return sampler
    mixed = (seed + 7919 * offset + 104_729 * history) % 2**32
    return replace(sampler, options={**sampler.options, "seed": mixed})


def create_or_resume(
    spec: StudySpec,
    *,
    storage: StorageURL | str,
    train_dir: str | None = None,
    heartbeat_interval: int | None = 30,
    seed_offset: int = 0,
) -> optuna.Study:
    """Create the study a study file defines, or resume it if it exists (never starts over).

    A new study records its split, metric, description and the study file (path and text) and
    enqueues the file's first trials. An existing study must have been made with the same
    split: every trial of a study validates on the same people, which promotion relies on; and
    with the same :data:`hpo.studyfile.compare.MEANING` (a file that changes only the rest
    resumes it, is recorded and said in a warning; a plain Optuna study, with no recorded file,
    is not compared).

    Args:
        spec: the validated study file.
        storage: the study storage (:func:`hpo.store.url.resolve_storage`).
        train_dir: the training folder (``--data``), overriding the file's ``data.train_dir``.
        heartbeat_interval: seconds between running trials' heartbeats (None: none).
        seed_offset: this worker's number; parallel workers get distinct sampler seeds.

    Returns:
        The study, with the spec's sampler and pruner.

    Raises:
        StorageError: the storage cannot be reached.
        HpoError: the study exists with another split, or from a study file whose trials are
            not comparable with this one's.
    """
    store = open_storage(storage, heartbeat_interval=heartbeat_interval)
    sampler = create_sampler(spec.sampler)  # checks the options before anything is created
    study = with_retries(lambda: optuna.create_study(
        study_name=spec.name, storage=store, sampler=sampler,
        pruner=create_pruner(spec.pruner), direction=spec.direction, load_if_exists=True,
    ), what="opening the study")
    # Enqueued trials (WAITING) are not history: a fresh study's worker 0 keeps the file's seed.
    history = with_retries(lambda: sum(t.state != optuna.trial.TrialState.WAITING
                                       for t in study.get_trials(deepcopy=False)),
                           what="counting trials")
    # Parallel workers, and later launches, would replay one seed's proposals: each gets its own.
    study.sampler = create_sampler(_offset_seed(spec.sampler, seed_offset, history))
    split = split_of(spec, train_dir)
    recorded = with_retries(lambda: study.user_attrs.get(SPLIT_ATTR), what="reading the study")
    if recorded is None:
        with_retries(lambda: _record(study, spec, split), what="recording the study")
    elif _comparable(recorded) != _comparable(split):
        raise HpoError(f"study {spec.name!r} was started with split {recorded}, but now "
                       f"{split}; every trial must validate on the same people: restore the "
                       "study file's data section (or --data), or rename the study")
    else:
        _check_same_study(study, spec, recorded, storage=storage, history=history)
    return study


def _check_same_study(study: optuna.Study, spec: StudySpec, split: dict[str, Any], *,
                      storage: StorageURL | str, history: int) -> None:
    """Resume only from a study file whose trials are comparable with the recorded one's."""
    record = record_of(study)
    if not record.text or record.text == spec.text:
        return  # made by plain Optuna (or before files were recorded), or the same file
    try:
        old = parse_study_text(record.text, name=record.name, path=str(record.study_file))
    except SpecError as exc:  # recorded by another version of hpo: cannot tell; keep it
        return log.warning("study %r: its recorded study file does not parse (%s); resumed "
                           "without comparing it with %s", spec.name, exc, spec.path)
    meaning, steering = spec_changes(old, spec)
    if meaning:
        was, now = record.study_file or "(path not recorded)", spec.path
        made, fix = ((f"an earlier version of study file {now}, which now differs from it",
                      "restore those settings, ") if was == now else
                     (f"study file {was}, and study file {now} differs from it", ""))
        raise HpoError(f"study {spec.name!r} in {as_storage(storage).masked} was made from "
                       f"{made} in {'; '.join(meaning)}, so their trials would not be "
                       f"comparable; {fix}rename {now} (a study is named after its file), use "
                       "another --storage, or delete the old study first with: hpo delete "
                       f"--study {spec.name}")
    if steering:
        log.warning("study %r goes on with %s's changed %s (its metric, split, fixed settings "
                    "and search space are unchanged, so its %d trial(s) stay comparable)",
                    spec.name, spec.path, ", ".join(steering), history)
    if spec.text:  # a spec built in code has no text: the recorded one stays
        with_retries(lambda: _record(study, spec, split), what="recording the study")


def _note(spec: StudySpec, split: dict[str, Any]) -> str:
    lines = [f"# {spec.name}", "", spec.description or "(no description)", "",
             f"- metric: **{spec.metric}** ({spec.direction}), budget: "
             f"{spec.n_trials or '-'} trials, timeout {spec.timeout or '-'} s",
             f"- data: `{split['train_dir']}`, validation fraction {split['val_fraction']}, "
             f"split seed {split['split_seed']}",
             f"- sampler: {spec.sampler.name}, pruner: {spec.pruner.name}",
             f"- study file: `{spec.path}` (its text is the study's user attribute "
             f"`{TEXT_ATTR}`)"]
    return "\n".join(lines)


def _record(study: optuna.Study, spec: StudySpec, split: dict[str, Any]) -> None:
    from optuna_dashboard import save_note  # 1.4 s to import: only when a study is created

    # The split goes last: it marks the record complete, so a launcher killed half-way
    # records everything again on the next start (each write is an idempotent upsert).
    study.set_user_attr(METRIC_ATTR, spec.metric)
    study.set_user_attr(DESCRIPTION_ATTR, spec.description)
    study.set_user_attr(FILE_ATTR, spec.path)
    study.set_user_attr(TEXT_ATTR, spec.text)
    study.set_metric_names([spec.metric])  # the dashboard's name for the objective
    save_note(study, _note(spec, split))  # the dashboard shows a study's note on its page
    for params in enqueue_params(spec):
        study.enqueue_trial(params, skip_if_exists=True)
    study.set_user_attr(SPLIT_ATTR, split)

