"""What a finished trial records, and that nothing is lost between its upload and COMPLETE.

Real tiny trials (``test_resnet`` on the shared tiny dataset, real SQLite files, real store
files): the user attributes the dashboard shows as table columns are short scalars, studies
written with the older layout still read, promote and predict, a checkpoint changed after its
trial ended stops ``hpo promote`` and ``hpo predict`` in one line, and a worker SIGKILLed
between the writes that end a trial loses nothing (``HPO_TEST_KILL_AT``, a test-only hook of
:mod:`hpo.run.objective`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.ensemble.predict import resolve_members
from hpo.ensemble.promote import promote
from hpo.errors import EnsembleError
from hpo.ops.admin import delete_study
from hpo.ops.report import best_data
from hpo.run.budget import Budget
from hpo.run.study import record_of
from hpo.run.worker import run_worker
from hpo.store.artifacts import PENDING, TRIAL_FILES, ArtifactPaths, file_sha256, sweep_pending
from hpo.store.records import (
    artifact_ids,
    recorded_sha256,
    recorded_value,
    trial_epochs_run,
    trial_metrics,
    trial_versions,
)
from hpo.studyfile.files import load_study_spec
from tests.conftest import REPO, hpo_cli

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")

STUDY = {
    "n_trials": 1,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 1, "batch_size": 16, "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
    "enqueue": [{"optim.lr": 2e-3}],
}
# Flat dicts of a few scalars that other readers follow live (hpo status, hpo launch's
# progress line; the retry tests): allowed beside the scalars.
SMALL_DICTS = {"progress", "resumed_from"}


def _study_file(folder: Path, name: str, **over) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **over}))
    return path


@pytest.fixture(scope="module")
def done(tiny_data, tmp_path_factory):
    """One completed real trial."""
    root = tmp_path_factory.mktemp("records")
    storage = f"sqlite:///{root}/hpo.db"
    run_worker(load_study_spec(str(_study_file(root, "rec"))), storage=storage,
               artifacts=str(root / "art"), train_dir=str(tiny_data / "train"),
               budget=Budget(1, None), heartbeat_interval=None)
    trial = optuna.load_study(study_name="rec", storage=storage).trials[0]
    assert trial.state == TrialState.COMPLETE
    return {"root": root, "storage": storage, "trial": trial}


def _copy(done, tmp_path: Path) -> tuple[str, Path]:
    """A copy of the study's database and artifact folder, to change freely."""
    # SQLite's backup, not a file copy: the study's recent writes may sit in its WAL file
    with sqlite3.connect(done["root"] / "hpo.db") as src, \
            sqlite3.connect(tmp_path / "hpo.db") as dst:
        src.backup(dst)
    shutil.copytree(done["root"] / "art", tmp_path / "art")
    return f"sqlite:///{tmp_path}/hpo.db", tmp_path / "art"


def test_user_attributes_are_short_scalars(done):
    trial = done["trial"]
    for key, value in trial.user_attrs.items():
        if key in SMALL_DICTS:
            assert isinstance(value, dict), key
            assert all(isinstance(v, (str, int, float, bool)) for v in value.values()), key
        else:
            assert isinstance(value, (str, int, float, bool)) or value is None, (key, value)
        assert len(json.dumps(value)) <= 80, (key, value)
    for gone in ("artifacts", "metrics", "versions", "epochs_run"):
        assert gone not in trial.user_attrs
    # the large records are system attributes (no table column), read through the accessors
    assert set(trial_metrics(trial)) >= {"f1", "accuracy", "mask_f1", "gender_f1", "age_f1"}
    assert trial_metrics(trial)["f1"] == trial.user_attrs["f1"]
    assert recorded_value(trial, "f1") == trial.value
    assert trial_versions(trial)["optuna"] == optuna.__version__
    assert trial_epochs_run(trial) == [1]
    best = done["root"] / "art" / "store" / artifact_ids(trial)["best.pt"]
    assert recorded_sha256(trial, "best.pt") == file_sha256(best)
    assert not (done["root"] / "art" / "trials" / "rec" / "0" / PENDING).exists()


def _to_old_layout(db: Path) -> None:
    """Rewrite the trial's records as the versions before ``hpo:`` system attributes did."""
    moved = {"hpo:artifacts": "artifacts", "hpo:metrics": "metrics",
             "hpo:versions": "versions", "hpo:epochs_run": "epochs_run"}
    with sqlite3.connect(db) as conn:
        for new, old in moved.items():
            conn.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                         "SELECT trial_id, ?, value_json FROM trial_system_attributes "
                         "WHERE key = ?", (old, new))
        conn.execute("DELETE FROM trial_system_attributes WHERE key LIKE 'hpo:%'")


def test_a_study_of_the_old_layout_still_reads_promotes_and_predicts(done, tmp_path):
    storage, art = _copy(done, tmp_path)
    _to_old_layout(tmp_path / "hpo.db")
    study = optuna.load_study(study_name="rec", storage=storage)
    old = study.trials[0]
    assert not [k for k in old.system_attrs if k.startswith("hpo:")]
    assert artifact_ids(old) == artifact_ids(done["trial"]) == old.user_attrs["artifacts"]
    assert trial_metrics(old) == trial_metrics(done["trial"])
    assert trial_versions(old) == trial_versions(done["trial"])
    assert trial_epochs_run(old) == [1]
    assert recorded_sha256(old, "best.pt") is None  # not hashed then: read unchecked
    assert recorded_value(old, "f1") == trial_metrics(old)["f1"]

    paths = ArtifactPaths(art)
    assert paths.stored_path(old, "best.pt") == art / "store" / artifact_ids(old)["best.pt"]
    copied = paths.fetch(old, "val_probs.npy", tmp_path / "probs.npy")
    assert copied.read_bytes() == paths.stored_path(old, "val_probs.npy").read_bytes()
    assert best_data(study, record_of(study))["metrics"]["f1"] == old.user_attrs["f1"]
    members = resolve_members(study="rec", trial=0, storage=storage, artifacts=art)
    assert members[0].checkpoint == paths.stored_path(old, "best.pt")
    result = promote(study, name="old", method="topk", max_members=1, artifacts=art)
    assert [m["trial"] for m in result.manifest["members"]] == [0]
    assert result.manifest["members"][0]["metrics"] == trial_metrics(old)


def _one_line(out, fragment: str) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


def test_a_checkpoint_changed_after_its_trial_ended_stops_promote_and_predict(
        done, tmp_path, tiny_data):
    storage, art = _copy(done, tmp_path)
    trial = done["trial"]
    stored = art / "store" / artifact_ids(trial)["best.pt"]
    with open(stored, "ab") as f:
        f.write(b"\0")
    args = ["--storage", storage, "--artifacts", str(art)]
    expected = (f"trial 0's best.pt in {stored} changed after the trial ended (sha256 "
                f"{recorded_sha256(trial, 'best.pt')[:16]} recorded, "
                f"{file_sha256(stored)[:16]} now); put the original file back")

    promoted = hpo_cli("promote", "--study", "rec", "--name", "changed", *args)
    _one_line(promoted, expected)
    assert not (art / "ensembles" / "changed.json").exists()
    predicted = hpo_cli("predict", "--study", "rec", "--trial", "0", "--data",
                        str(tiny_data / "eval"), "--out", str(tmp_path / "sub.csv"),
                        "--device", "cpu", *args)
    line = _one_line(predicted, expected)
    assert not (tmp_path / "sub.csv").exists()
    assert re.sub(r"^.*? now\); ", "", line) in DOC

    # a copy fetched from the store is checked the same way, and not left behind
    with pytest.raises(EnsembleError, match="changed after the trial ended"):
        ArtifactPaths(art).fetch(trial, "best.pt", tmp_path / "copy.pt")
    assert not (tmp_path / "copy.pt").exists()


def test_sweep_pending_removes_only_what_no_record_names(tmp_path):
    art = ArtifactPaths(tmp_path / "art")
    folder = art.trial_dir("s", 0)
    folder.mkdir(parents=True)
    for artifact_id in ("kept", "orphan"):
        (art.root / "store" / artifact_id).write_bytes(b"x")
    (folder / PENDING).write_text(json.dumps({"artifact_ids": ["kept", "orphan", "gone"]}))
    assert sweep_pending(folder, art.root, named={"kept"}) == 1
    assert sorted(p.name for p in (art.root / "store").iterdir()) == ["kept"]
    assert not (folder / PENDING).exists()
    assert sweep_pending(folder, art.root, named=()) == 0  # no list: nothing to do


def test_delete_removes_orphaned_uploads_too(done, tmp_path):
    storage, art = _copy(done, tmp_path)
    folder = art / "trials" / "rec" / "0"
    folder.mkdir(parents=True, exist_ok=True)
    (art / "store" / "orphan").write_bytes(b"x")  # uploaded, then the worker was killed
    (folder / PENDING).write_text(json.dumps({"artifact_ids": ["orphan"]}))
    study = optuna.load_study(study_name="rec", storage=storage)
    result = delete_study(study, storage=storage, artifacts=str(art))
    assert result.files == len(TRIAL_FILES) + 1
    assert list((art / "store").iterdir()) == []


# -- a worker SIGKILLed between the writes that end a trial ------------------------------------


def _killed_worker(study: Path, storage: str, art: Path, tiny_data: Path, point: str) -> None:
    env = {**os.environ, "HPO_TEST_KILL_AT": point}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "worker", "--study", str(study), "--storage",
         storage, "--artifacts", str(art), "--data", str(tiny_data / "train"),
         "--heartbeat", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, (proc.returncode, proc.stderr)


def _leftovers(art: Path) -> list[Path]:
    """Checkpoints, pending lists and half-written saves left in the trials' folders."""
    return sorted(p for p in (art / "trials").rglob("*") if p.is_file() and (
        p.name in ("best.pt", "last.pt", PENDING) or p.name.endswith(".tmp")))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_store", "after_records"])
def test_a_worker_killed_while_a_trial_ends_loses_nothing(point, tmp_path, tiny_data,
                                                          monkeypatch):
    monkeypatch.delenv("HPO_TEST_KILL_AT", raising=False)
    study_file = _study_file(tmp_path, "killed", fixed={**STUDY["fixed"], "epochs": 2})
    storage, art = f"sqlite:///{tmp_path}/hpo.db", tmp_path / "art"
    _killed_worker(study_file, storage, art, tiny_data, point)
    dead = optuna.load_study(study_name="killed", storage=storage).trials[0]
    assert dead.state == TrialState.RUNNING  # until a heartbeat check fails it
    folder0 = art / "trials" / "killed" / "0"
    pending = json.loads((folder0 / PENDING).read_text())["artifact_ids"]
    assert all((art / "store" / i).is_file() for i in pending)  # uploaded before the kill
    (folder0 / ".last.pt.4242.tmp").write_bytes(b"x")  # as if a save had been cut short

    run_worker(load_study_spec(str(study_file)), storage=storage, artifacts=str(art),
               train_dir=str(tiny_data / "train"), budget=Budget(1, None),
               heartbeat_interval=2)
    dead, retry = optuna.load_study(study_name="killed", storage=storage).trials
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0
    assert trial_epochs_run(retry) == [] and retry.intermediate_values == {}  # trained nothing
    if point == "after_records":  # the dead trial's result, recorded as the retry's
        assert retry.user_attrs["result_of"] == 0 and "resumed_from" not in retry.user_attrs
        assert retry.value == recorded_value(dead, "f1") == dead.system_attrs["hpo:value"]
        assert artifact_ids(retry) == artifact_ids(dead)
        assert set(artifact_ids(dead).values()) == set(pending)
    else:  # no result was recorded: resumed from last.pt (2 of 2 epochs done), stored anew
        assert not artifact_ids(dead)
        assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}
        assert not set(artifact_ids(retry).values()) & set(pending)
    assert round(retry.value, 6) == trial_metrics(retry)["f1"] == retry.user_attrs["f1"]
    # the store holds exactly the files the records name: the orphaned uploads went
    stored = {p.name for p in (art / "store").iterdir()}
    assert stored == set(artifact_ids(retry).values())
    assert ArtifactPaths(art).stored_path(retry, "best.pt").is_file()  # sha256 matches
    assert _leftovers(art) == []
