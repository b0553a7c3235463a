"""Storage writes per trial: the objective's attributes go in a few transactions, not 40.

A real trial path (the real :class:`hpo.run.objective.Objective`, the storage benchmark's trainer
stand-in, a real SQLite file or PostgreSQL) with SQLAlchemy's ``commit`` event counting the
transactions. The readers' attributes (``hpo status``, ``hpo promote``, the dashboard's
artifact list) must be the same as with Optuna's one-write-per-attribute path.
"""
from __future__ import annotations

import logging
import sqlite3
import uuid
from collections import Counter

import optuna
import pytest
import sqlalchemy.exc
from optuna.artifacts import get_all_artifact_meta
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy import event

from bench.storage_probe import written_table
from bench.storage_standin import StandInFit, bench_spec
from hpo.run.objective import Objective
from hpo.store.artifacts import TRIAL_FILES, ArtifactPaths, file_sha256
from hpo.store.optuna_private import trial_id
from hpo.store.records import artifact_ids, recorded_value, trial_epochs_run, trial_metrics
from hpo.store.storage import open_storage, storage_of

EPOCHS = 3
START_KEYS = {"host", "worker", "seed", "device", "cpu_threads"}
RESULT_KEYS = {"f1", "accuracy", "mask_f1", "gender_f1", "age_f1", "best_epoch", "seconds",
               "images_per_second", "device", "val_hash", "progress"}
# The large or nested records: trial system attributes, out of the dashboard's trial table.
SYSTEM_KEYS = {"hpo:versions", "hpo:artifacts", "hpo:sha256", "hpo:metrics", "hpo:value",
               "hpo:epochs_run"}
ATTR_TABLES = {"trial_user_attributes", "trial_system_attributes"}
# Write transactions of one completed 3-epoch trial with batched attributes, measured: create
# the trial 1, Optuna's suggest 5 (one per parameter), start attributes 1, reports 3, progress
# 2 (the last one goes with the results), results + artifact records 1, the final state 1.
MAX_WRITES = 14
# All commits, reads included (Optuna commits the session of every read): measured 21 on SQLite
# and on PostgreSQL (7 of them reads); 43 with one write per attribute (36 writes).
MAX_COMMITS = 22


class _Commits:
    """Commits on one engine, and the tables each write transaction wrote."""

    def __init__(self, engine) -> None:
        self.commits = 0
        self.writes: list[frozenset[str]] = []
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, parameters, context, executemany):
        table = written_table(statement)
        if table is not None:
            conn.info.setdefault("_test_tables", set()).add(table)

    def _commit(self, conn):
        self.commits += 1
        tables = conn.info.pop("_test_tables", None)
        if tables:
            self.writes.append(frozenset(tables))

    @property
    def attr_writes(self) -> int:
        """Write transactions that touched a trial attribute table."""
        return sum(1 for tables in self.writes if tables & ATTR_TABLES)

    def reset(self) -> None:
        self.commits = 0
        self.writes.clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/writes.db"
    return request.getfixturevalue("postgres_url")


def _study(url: str, pruner: optuna.pruners.BasePruner | None = None):
    storage = open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(study_name=f"writes-{uuid.uuid4().hex[:8]}", storage=storage,
                                direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=pruner or optuna.pruners.NopPruner())
    return study, storage


def _objective(study, tmp_path, *, batched: bool, fit=None) -> Objective:
    spec = bench_spec(study.study_name, trials=10, epochs=EPOCHS)
    return Objective(spec, ArtifactPaths(tmp_path / "art"), fit=fit or StandInFit(0.0),
                     storage=storage_of(study) if batched else None)


def _run_one(url: str, tmp_path, *, batched: bool):
    study, storage = _study(url)
    objective = _objective(study, tmp_path, batched=batched)
    counter = _Commits(storage.engine)
    study.optimize(objective, n_trials=1)
    return study.trials[0], storage, counter


def test_one_trial_makes_few_commits_and_keeps_every_reader_key(url, tmp_path):
    trial, storage, counter = _run_one(url, tmp_path, batched=True)
    old, _, old_counter = _run_one(url, tmp_path / "old", batched=False)

    assert trial.state == old.state == TrialState.COMPLETE
    # One write for the start, one per epoch but the last, one with results and artifacts.
    assert counter.attr_writes == 1 + (EPOCHS - 1) + 1, counter.writes
    assert len(counter.writes) <= MAX_WRITES, Counter(counter.writes)
    assert counter.commits <= MAX_COMMITS, Counter(counter.writes)
    assert old_counter.commits >= counter.commits + 20  # the per-attribute path, for scale

    assert set(trial.user_attrs) == START_KEYS | RESULT_KEYS == set(old.user_attrs)
    for key in set(trial.user_attrs) - {"seconds"}:  # wall time
        assert trial.user_attrs[key] == old.user_attrs[key], key

    def hpo_keys(t):
        return {k for k in t.system_attrs if k.startswith("hpo:")}

    assert hpo_keys(trial) == SYSTEM_KEYS == hpo_keys(old)
    for key in SYSTEM_KEYS - {"hpo:artifacts", "hpo:sha256"}:  # fresh artifact ids
        assert trial.system_attrs[key] == old.system_attrs[key], key
    assert trial_epochs_run(trial) == list(range(1, EPOCHS + 1))
    assert trial.user_attrs["progress"] == {"epoch": EPOCHS, "epochs": EPOCHS,
                                            "f1": round(trial.user_attrs["f1"], 5)}
    assert trial_metrics(trial)["f1"] == trial.user_attrs["f1"] == round(trial.value, 6)
    assert recorded_value(trial, "f1") == trial.value
    assert set(artifact_ids(trial)) == set(TRIAL_FILES)
    best = tmp_path / "art" / "store" / artifact_ids(trial)["best.pt"]
    assert trial.system_attrs["hpo:sha256"] == {"best.pt": file_sha256(best)}
    assert isinstance(trial.user_attrs["seconds"], float)
    assert trial.intermediate_values == old.intermediate_values


def test_artifact_records_are_the_ones_the_dashboard_reads(url, tmp_path):
    trial, storage, _ = _run_one(url, tmp_path, batched=True)
    old, old_storage, _ = _run_one(url, tmp_path / "old", batched=False)

    ids = artifact_ids(trial)
    metas = {m.artifact_id: m for m in get_all_artifact_meta(trial, storage=storage)}
    assert set(metas) == set(ids.values())
    old_metas = {m.filename: m for m in get_all_artifact_meta(old, storage=old_storage)}
    for name, artifact_id in ids.items():
        meta = metas[artifact_id]
        assert meta.filename == name
        assert (meta.mimetype, meta.encoding) == (old_metas[name].mimetype,
                                                  old_metas[name].encoding)
        stored = tmp_path / "art" / "store" / artifact_id
        assert stored.is_file() and stored.stat().st_size > 0
    # the raw records match upload_artifact's (a JSON string per key "artifacts:<id>")
    records = {k: v for k, v in trial.system_attrs.items() if k.startswith("artifacts:")}
    old_records = {k: v for k, v in old.system_attrs.items() if k.startswith("artifacts:")}
    assert len(records) == len(old_records) == len(TRIAL_FILES)
    assert all(isinstance(v, str) for v in records.values())


class _DiesAfter:
    """The stand-in, failing (like a crash) right after reporting epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.fit = StandInFit(0.0)

    def __call__(self, cfg, *, on_epoch=None, resume=None, data=None):
        def dying(epoch: int, metrics: dict) -> None:
            on_epoch(epoch, metrics)
            if epoch == self.epoch:
                raise RuntimeError("the GPU fell off the bus")

        return self.fit(cfg, on_epoch=dying, resume=resume, data=data)


def test_failed_trial_one_write_and_its_retry_records_where_it_resumed(url, tmp_path):
    study, storage = _study(url)
    counter = _Commits(storage.engine)
    study.optimize(_objective(study, tmp_path, batched=True, fit=_DiesAfter(2)), n_trials=1,
                   catch=(RuntimeError,))
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "RuntimeError: the GPU fell off the bus"
    assert trial_epochs_run(failed) == [1, 2]
    assert failed.user_attrs["progress"]["epoch"] == 2
    assert START_KEYS <= set(failed.user_attrs)
    assert counter.attr_writes == 1 + 2 + 1  # start, two epochs' progress, the failure

    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, failed)  # what a dead worker gets
    study.optimize(_objective(study, tmp_path, batched=True), n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    # A failure of its own keeps no checkpoint (docs/architecture.md): the retry starts over.
    # tests/hpo/test_disk.py and test_faults.py check that an interrupted or killed trial's
    # retry resumes and records where.
    assert "resumed_from" not in retry.user_attrs
    assert trial_epochs_run(retry) == [1, 2, 3]
    assert START_KEYS | RESULT_KEYS <= set(retry.user_attrs)
    assert SYSTEM_KEYS <= set(retry.system_attrs)


def test_pruned_trial_one_write(tmp_path):
    study, storage = _study(f"sqlite:///{tmp_path}/pruned.db",
                            pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    counter = _Commits(storage.engine)
    study.optimize(_objective(study, tmp_path, batched=True), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial_epochs_run(trial) == [1]
    assert trial.user_attrs["progress"]["epoch"] == 1
    assert counter.attr_writes == 1 + 1 + 1  # start, epoch 1's progress, the prune


def test_storage_of(tmp_path):
    study, storage = _study(f"sqlite:///{tmp_path}/a.db")
    assert storage_of(study) is storage
    plain = optuna.create_study(storage=f"sqlite:///{tmp_path}/b.db")
    assert storage_of(plain) is None  # a plain RDBStorage cannot batch: per-attribute writes


def _new_trial(tmp_path):
    study, storage = _study(f"sqlite:///{tmp_path}/t.db")
    trial = study.ask()
    return study, storage, trial


def test_set_trial_attrs_upserts_in_one_commit(tmp_path):
    study, storage, trial = _new_trial(tmp_path)
    counter = _Commits(storage.engine)
    storage.set_trial_attrs(trial_id(trial), user={"a": 1, "b": {"c": [1, 2]}},
                            system={"artifacts:x": '{"artifact_id": "x"}'})
    storage.set_trial_attrs(trial_id(trial), user={"a": 2})  # an upsert: repeating is safe
    storage.set_trial_attrs(trial_id(trial))  # nothing to write: no transaction
    assert counter.commits == 2 and len(counter.writes) == 2
    frozen = storage.get_trial(trial_id(trial))
    assert frozen.user_attrs == {"a": 2, "b": {"c": [1, 2]}}
    assert frozen.system_attrs["artifacts:x"] == '{"artifact_id": "x"}'

    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_attrs(trial_id(trial), user={"a": 3})
    with pytest.raises(KeyError):
        storage.set_trial_attrs(10_000, user={"a": 3})


def _fail_next_statements(engine, count: int) -> list[int]:
    """The next ``count`` statements on ``engine`` raise a driver error (a dropped link)."""
    left = [count]

    def fail(conn, cursor, statement, parameters, context, executemany):
        if left[0] > 0:
            left[0] -= 1
            raise sqlite3.OperationalError("disk I/O error (injected by the test)")

    event.listen(engine, "before_cursor_execute", fail)
    return left


def test_set_trial_attrs_rides_out_a_lost_connection(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)  # the backoff, not the test, waits
    _, storage, trial = _new_trial(tmp_path)
    left = _fail_next_statements(storage.engine, 2)
    with caplog.at_level(logging.WARNING, logger="hpo"):
        storage.set_trial_attrs(trial_id(trial), user={"progress": {"epoch": 1}})
    assert left == [0]
    assert storage.get_trial(trial_id(trial)).user_attrs == {"progress": {"epoch": 1}}
    assert "database unavailable while recording 1 attributes" in caplog.text


def test_optunas_own_calls_ride_out_a_lost_connection_too(tmp_path, monkeypatch):
    # Optuna reports a lost connection as StorageInternalError; the retry looks through it.
    monkeypatch.setattr("time.sleep", lambda s: None)
    _, storage, trial = _new_trial(tmp_path)
    left = _fail_next_statements(storage.engine, 1)
    storage.set_trial_user_attr(trial_id(trial), "seed", 7)
    assert left == [0]
    assert storage.get_trial(trial_id(trial)).user_attrs == {"seed": 7}
    _fail_next_statements(storage.engine, 100)
    with pytest.raises(optuna.exceptions.StorageInternalError) as info:
        storage.set_trial_user_attr(trial_id(trial), "seed", 8)
    assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)
