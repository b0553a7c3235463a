"""Bounded disk (docs/architecture.md): a checkpoint is kept only while something may need it.

Real tiny trials (``test_resnet`` on the shared tiny dataset): pruned trials keep no
checkpoint, a completed trial one ``best.pt`` (in the store), an interrupted trial its
checkpoints until its retry ends, ``hpo gc`` removes what no ensemble and no top trial needs and
leaves a running trial alone, and an artifact folder that takes no file fails the trial in one
line with nothing else lost.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import trainer
from hpo.cli import main
from hpo.ensemble.promote import promote
from hpo.errors import EnsembleError
from hpo.run.budget import Budget
from hpo.run.lineage import retry_failed
from hpo.run.objective import Objective
from hpo.run.progress import size_text
from hpo.run.study import create_or_resume
from hpo.run.worker import run_worker
from hpo.store.artifacts import TRIAL_FILES, ArtifactPaths
from hpo.store.records import artifact_ids, trial_epochs_run
from hpo.store.storage import storage_of
from hpo.studyfile.files import load_study_spec
from tests.conftest import REPO

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")
CHECKPOINT_NAMES = ("best.pt", "last.pt")

# Three trials that are never pruned (the pruner's startup), then two hopeless ones it prunes.
DISK_STUDY = {
    "n_trials": 5,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 0},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 3, "batch_size": 16, "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "categorical", "choices": [0.002, 0.003, 0.004, 5.0, 10.0]}},
    "enqueue": [{"optim.lr": 0.003}, {"optim.lr": 0.002}, {"optim.lr": 0.004},
                {"optim.lr": 10.0}, {"optim.lr": 5.0}],
}


@dataclass(frozen=True)
class Run:
    name: str
    storage: str
    root: Path

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=self.storage)


def _spec(tmp_path: Path, name: str, **over):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**DISK_STUDY, **over}))
    return load_study_spec(str(path))


def _run(spec, tmp_path: Path, tiny_data: Path, *, n: int, fit=None) -> Run:
    storage = f"sqlite:///{tmp_path}/{spec.name}.db"
    run_worker(spec, storage=storage, artifacts=str(tmp_path / "art"),
               train_dir=str(tiny_data / "train"), budget=Budget(n, None),
               heartbeat_interval=None, fit=fit)
    return Run(spec.name, storage, tmp_path / "art")


def _checkpoints(root: Path) -> list[Path]:
    """Every checkpoint under the artifact folder: working names, saves and stored files."""
    found = [p for p in root.rglob("*") if p.is_file() and (p.name in CHECKPOINT_NAMES
                                                            or p.name.endswith(".tmp"))]
    store = root / "store"
    found += [p for p in store.iterdir() if p.is_file() and _is_torch_file(p)]
    return sorted(found)


def _is_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK"  # torch.save writes a zip archive


def _bytes_of(run: Run, t: optuna.trial.FrozenTrial) -> tuple[int, int]:
    """(all bytes, checkpoint bytes) a trial keeps: its folder and its stored files."""
    folder = run.root / "trials" / run.name / str(t.number)
    files = [p for p in folder.rglob("*") if p.is_file()]
    stored = [run.root / "store" / i for i in artifact_ids(t).values()]
    everything = files + [p for p in stored if p.is_file()]
    total = sum(p.stat().st_size for p in everything)
    ckpt = sum(p.stat().st_size for p in everything
               if p.name in CHECKPOINT_NAMES or _is_torch_file(p))
    return total, ckpt


@pytest.fixture(scope="module")
def disk_run(tiny_data, tmp_path_factory) -> Run:
    """The study above, trained once for this module (about 20 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("disk")
    return _run(_spec(tmp, "disk"), tmp, tiny_data, n=5)


def _copy(run: Run, tmp_path: Path) -> Run:
    """A copy of the run's artifact folder (gc removes files; the storage is only read)."""
    shutil.copytree(run.root, tmp_path / "art")
    return Run(run.name, run.storage, tmp_path / "art")


def test_pruned_keep_nothing_completed_one_best_pt_no_last_pt(disk_run):
    trials = disk_run.study().trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(done) >= 3 and pruned, [(t.number, t.state) for t in trials]
    stored_best = {disk_run.root / "store" / artifact_ids(t)["best.pt"] for t in done}
    # exactly one checkpoint per completed trial, in the store; none for pruned trials
    assert _checkpoints(disk_run.root) == sorted(stored_best)
    assert not list(disk_run.root.rglob("last.pt"))
    for t in done:
        assert set(artifact_ids(t)) == set(TRIAL_FILES) and "last.pt" not in TRIAL_FILES
        assert t.user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
        best = trainer.load_checkpoint(disk_run.root / "store" / artifact_ids(t)["best.pt"])
        assert best["epoch"] == t.user_attrs["best_epoch"]
    for t in pruned:
        assert not artifact_ids(t)
        assert _bytes_of(disk_run, t)[1] == 0
    # the figures of docs/benchmarks.md "Disk" (pytest -s shows them)
    for t in trials:
        total, ckpt = _bytes_of(disk_run, t)
        print(f"DISK trial {t.number} {t.state.name:<8} all {size_text(total):>8} "
              f"checkpoints {size_text(ckpt):>8}")


def _gc(run: Run, *args: str):
    return CliRunner().invoke(main, ["gc", "--study", run.name, "--storage", run.storage,
                                     "--artifacts", str(run.root), *args])


def test_gc_keeps_top_and_ensemble_members_and_says_what_it_freed(disk_run, tmp_path):
    run = _copy(disk_run, tmp_path)
    study = run.study()
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: (-t.value, t.number))
    best, member, rest = done[0], done[-1], done[1:-1]
    store = run.root / "store"

    def stored(t) -> Path:
        return store / artifact_ids(t)["best.pt"]

    # an ensemble holds the worst completed trial; leftovers of an interrupted save and of an
    # older layout sit in finished trials' folders
    manifest = {"name": "e", "study": run.name, "members": [
        {"trial": member.number, "checkpoint": str(stored(member).resolve()),
         "artifact": f"store/{stored(member).name}"}]}
    (run.root / "ensembles").mkdir()
    (run.root / "ensembles" / "e.json").write_text(json.dumps(manifest))
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    leftovers = [run.root / "trials" / run.name / str(pruned.number) / "last.pt",
                 run.root / "trials" / run.name / str(best.number) / ".best.pt.4242.tmp"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    going = [stored(t) for t in rest] + leftovers
    freed = sum(p.stat().st_size for p in going)

    dry = _gc(run, "--keep-top", "1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would remove {len(going)} checkpoints" in dry.output
    assert all(p.is_file() for p in going)

    out = _gc(run, "--keep-top", "1")
    assert out.exit_code == 0, out.output
    trials_hit = len(rest) + 2
    assert out.output.strip() == (f"removed {len(going)} checkpoints of {trials_hit} trials, "
                                  f"freed {size_text(freed)}")
    assert not any(p.exists() for p in going)
    assert stored(best).is_file() and stored(member).is_file()
    for t in done:  # the small files stay: promote still reads their probabilities
        assert (store / artifact_ids(t)["val_probs.npy"]).is_file()
    again = _gc(run, "--keep-top", "1")
    assert again.output.strip() == "removed 0 checkpoints of 0 trials, freed 0 B"

    # promote leaves out the trials whose checkpoint went; a reader says why in one line
    result = promote(study, name="after-gc", method="topk", max_members=5,
                     artifacts=run.root)
    members = {m["trial"] for m in result.manifest["members"]}
    assert best.number in members and not members & {t.number for t in rest}
    with pytest.raises(EnsembleError) as caught:
        ArtifactPaths(run.root).stored_path(rest[0], "best.pt")
    message = str(caught.value)
    assert "\n" not in message and "(hpo gc removed it, or this is not" in message
    assert re.sub(r"^.*? is missing from \S+ ", "", message) in DOC


def test_gc_refuses_when_a_manifest_cannot_be_read(disk_run, tmp_path):
    run = _copy(disk_run, tmp_path)
    (run.root / "ensembles").mkdir()
    (run.root / "ensembles" / "broken.json").write_text("{not json")
    before = _checkpoints(run.root)
    out = _gc(run, "--keep-top", "1")
    assert out.exit_code == 1
    line = out.output.strip()
    assert "\n" not in line and "hpo gc removed nothing" in line
    assert "hpo gc removed nothing, as it cannot tell which checkpoints that ensemble" in DOC
    assert _checkpoints(run.root) == before


# -- retries: an interrupted trial keeps its checkpoints until its retry ends -----------------


class _StopsAfter:
    """trainer.fit, stopped by ``error`` right after epoch ``epoch`` was saved and reported."""

    def __init__(self, epoch: int, error: BaseException) -> None:
        self.epoch, self.error = epoch, error

    def __call__(self, cfg, *, on_epoch=None, resume=None, data=None):
        def stopping(epoch: int, metrics: dict):
            on_epoch(epoch, metrics)
            if epoch == self.epoch:
                raise self.error

        return trainer.fit(cfg, on_epoch=stopping, resume=resume, data=data)


def _objective_study(tmp_path, tiny_data, name: str):
    spec = _spec(tmp_path, name, n_trials=1, pruner={"name": "none"},
                 enqueue=[{"optim.lr": 0.003}])
    study = create_or_resume(spec, storage=f"sqlite:///{tmp_path}/{name}.db",
                             train_dir=str(tiny_data / "train"), heartbeat_interval=None)
    art = ArtifactPaths(tmp_path / "art")

    def objective(fit=None) -> Objective:
        return Objective(spec, art, train_dir=str(tiny_data / "train"), fit=fit,
                         storage=storage_of(study))

    return study, art, objective


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_interrupted_trial_keeps_its_checkpoints_until_its_retry_ends(tmp_path, tiny_data):
    study, art, objective = _objective_study(tmp_path, tiny_data, "stop")
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective(_StopsAfter(2, KeyboardInterrupt())), n_trials=1)
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    folder0 = art.trial_dir("stop", 0)
    assert {"best.pt", "last.pt"} <= _names(folder0)  # the retry resumes from them
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, first)  # what the worker queues

    # gc while the retry waits: the checkpoints it resumes from stay
    out = _gc(Run("stop", f"sqlite:///{tmp_path}/stop.db", tmp_path / "art"))
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "removed 0 checkpoints of 0 trials, freed 0 B"
    assert {"best.pt", "last.pt"} <= _names(folder0)

    study.optimize(objective(), n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}
    assert not _names(folder0) & set(CHECKPOINT_NAMES)  # gone once the retry ended
    assert _checkpoints(art.root) == [art.root / "store" / artifact_ids(retry)["best.pt"]]


def test_a_trial_failing_on_its_own_keeps_nothing_and_retry_starts_over(tmp_path, tiny_data):
    study, art, objective = _objective_study(tmp_path, tiny_data, "own")
    study.optimize(objective(_StopsAfter(2, RuntimeError("the loss went away"))), n_trials=1,
                   catch=(RuntimeError,))
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "RuntimeError: the loss went away"
    assert _checkpoints(art.root) == []
    assert retry_failed(study) == [0]  # hpo retry: the retry starts from scratch
    study.optimize(objective(), n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE and "resumed_from" not in retry.user_attrs
    assert trial_epochs_run(retry) == [1, 2, 3]
    assert len(_checkpoints(art.root)) == 1


# -- the artifact folder takes no file when a trial ends ----------------------------------------


class _BreaksTheStore:
    """trainer.fit; after trial ``number`` trained, the store becomes a regular file (as a
    read-only or vanished mount looks to a root process, which ignores permissions)."""

    def __init__(self, root: Path, number: int) -> None:
        self.root, self.number = root, number

    def __call__(self, cfg, *, on_epoch=None, resume=None, data=None):
        result = trainer.fit(cfg, on_epoch=on_epoch, resume=resume, data=data)
        if Path(cfg.output_dir).name == str(self.number):
            os.replace(self.root / "store", self.root / "store.saved")
            (self.root / "store").write_text("not a folder")
        return result


def test_a_store_that_takes_no_file_fails_the_trial_in_one_line(tmp_path, tiny_data):
    spec = _spec(tmp_path, "ro", n_trials=2, pruner={"name": "none"}, fixed={
        **DISK_STUDY["fixed"], "epochs": 1}, enqueue=[{"optim.lr": 0.003}, {"optim.lr": 0.002}])
    root = tmp_path / "art"
    run = _run(spec, tmp_path, tiny_data, n=2, fit=_BreaksTheStore(root, 1))
    ok, broken = run.study().trials
    assert ok.state == TrialState.COMPLETE and broken.state == TrialState.FAIL
    reason = broken.user_attrs["fail_reason"]
    assert "\n" not in reason and reason.startswith(
        f"ArtifactStoreError: trial 1's files cannot be stored in the artifact folder {root} "
        "(store: Not a directory); its checkpoints stay in trials/ro/1")
    assert "hpo retry --study ro stores them without training again" in reason
    fragment = "files cannot be stored in the artifact folder"
    assert fragment in DOC and "stores them without training again" in DOC
    assert not artifact_ids(broken)
    # nothing else lost: trial 0's stored files, trial 1's checkpoints; no half-stored files
    (root / "store").unlink()
    os.replace(root / "store.saved", root / "store")
    assert sorted(p.name for p in (root / "store").iterdir()) == sorted(
        artifact_ids(ok).values())
    assert {"best.pt", "last.pt"} <= _names(root / "trials" / "ro" / "1")

    assert retry_failed(run.study()) == [1]  # once fixed: stored without training again
    run_worker(spec, storage=run.storage, artifacts=str(root),
               train_dir=str(tiny_data / "train"), budget=Budget(2, None),
               heartbeat_interval=None)
    retry = run.study().trials[2]
    assert retry.state == TrialState.COMPLETE, retry.user_attrs.get("fail_reason")
    assert retry.user_attrs["resumed_from"] == {"trial": 1, "epoch": 1}
    assert trial_epochs_run(retry) == []
    assert len(_checkpoints(root)) == 2 and not list(root.rglob("last.pt"))


def test_store_files_removes_what_it_stored_when_the_disk_fills(tmp_path, monkeypatch):
    folder = tmp_path / "trial"
    folder.mkdir()
    for name in TRIAL_FILES:
        (folder / name).write_bytes(b"y" * 5000)
    art = ArtifactPaths(tmp_path / "art")
    real = shutil.copyfileobj
    calls = []

    def fills_up(src, dst, *args):
        calls.append(1)
        if len(calls) == 3:
            dst.write(src.read(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args)

    monkeypatch.setattr(shutil, "copyfileobj", fills_up)
    with pytest.raises(OSError) as caught:
        art.store_files(folder)
    assert caught.value.errno == errno.ENOSPC
    assert list((tmp_path / "art" / "store").iterdir()) == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(TRIAL_FILES)


# -- hpo gc next to a running worker ------------------------------------------------------------


def _wait(storage: str, name: str, proc, ready, what: str, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.stderr.read()}")
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except Exception:  # the study may not exist yet
            trials = []
        if ready(trials):
            return trials
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_gc_leaves_a_running_trial_alone(tmp_path, tiny_data):
    raw = {**DISK_STUDY, "n_trials": 2, "pruner": {"name": "none"},
           "fixed": {"batch_size": 8, "data": {"img_size": [64, 48], "num_workers": 0},
                     "model": {"name": "test_resnet", "pretrained": False}},
           "space": {"epochs": {"type": "categorical", "choices": [1, 10]}},
           "enqueue": [{"epochs": 1}, {"epochs": 10}]}
    (tmp_path / "busy.yaml").write_text(yaml.safe_dump(raw))
    storage, root = f"sqlite:///{tmp_path}/busy.db", tmp_path / "art"
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "worker", "--study", str(tmp_path / "busy.yaml"),
         "--storage", storage, "--artifacts", str(root), "--data", str(tiny_data / "train"),
         "--heartbeat", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        _wait(storage, "busy", worker, lambda ts: len(ts) > 1 and ts[1].state ==
              TrialState.RUNNING and ts[1].intermediate_values, "trial 1 to run an epoch")
        running = root / "trials" / "busy" / "1"
        (running / ".best.pt.4242.tmp").write_bytes(b"x")  # as if a save were under way
        done_left = root / "trials" / "busy" / "0" / ".last.pt.4242.tmp"
        done_left.write_bytes(b"x" * 10)
        # the worker's own saves (".last.pt.<its pid>.tmp") come and go while it trains: they
        # are the worker's to rename, so only the files that stay put are compared
        in_flight = f".{worker.pid}.tmp"
        before = {n for n in _names(running) if not n.endswith(in_flight)}
        assert {"best.pt", "last.pt", "config.yaml", ".best.pt.4242.tmp"} <= before

        out = _gc(Run("busy", storage, root), "--keep-top", "1")
        states = [t.state for t in optuna.load_study(study_name="busy", storage=storage).trials]
        assert states[1] == TrialState.RUNNING, "trial 1 ended before gc ran: make it slower"
        assert out.exit_code == 0, out.output
        assert out.output.strip() == "removed 1 checkpoint of 1 trial, freed 10 B"
        assert before <= _names(running) and not done_left.exists()

        _, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    trials = optuna.load_study(study_name="busy", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trial_epochs_run(trials[1]) == list(range(1, 11))
    assert len(_checkpoints(root)) == 2 and not _names(running) & set(CHECKPOINT_NAMES)
