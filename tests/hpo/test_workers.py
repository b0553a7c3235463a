"""Several workers on one study, and pruning, with real trials and real databases."""
from __future__ import annotations

import os

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.run.budget import Budget
from hpo.run.worker import run_worker
from hpo.studyfile.files import load_study_spec
from tests.conftest import cli


def _check_finished(storage: str, name: str, n: int, out) -> list:
    assert out.returncode == 0, out.stderr
    assert "database is locked" not in out.stderr + out.stdout
    study = optuna.load_study(study_name=name, storage=storage)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    finished = [s for s in states if s in (TrialState.COMPLETE, TrialState.PRUNED)]
    # the budget is exact: workers count and create trials under the study's budget lock
    assert len(finished) == n, states
    assert TrialState.FAIL not in states
    return study.trials


@pytest.mark.slow
def test_two_workers_share_one_sqlite_file(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    out = cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"), "--n-trials",
              "6", "--workers", "2", "--storage", storage, "--artifacts", str(tmp_path / "a"))
    trials = _check_finished(storage, "smoke", 6, out)
    hosts = {t.user_attrs.get("host") for t in trials}
    assert hosts  # recorded by every trial


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_on_postgresql(tiny_data, tmp_path, postgres_url):
    # As many workers as cores (more are refused: each gets a share of its own, hpo.run.cpu).
    workers = str(max(2, len(os.sched_getaffinity(0))))
    out = cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"), "--n-trials",
              "6", "--workers", workers, "--storage", postgres_url, "--artifacts",
              str(tmp_path / "a"))
    assert "hpo:" not in out.stdout or "***" in out.stdout  # no password in the banner
    _check_finished(postgres_url, "smoke", 6, out)


PRUNE_STUDY = {
    "description": "a space with a hopeless learning rate",
    "n_trials": 6,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 3, "batch_size": 16, "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "categorical", "choices": [0.003, 10.0]}},
    "enqueue": [{"optim.lr": 0.003}],
}


def test_pruning_really_prunes(tiny_data, tmp_path):
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(PRUNE_STUDY))
    spec = load_study_spec(str(path))
    storage = f"sqlite:///{tmp_path}/p.db"
    run_worker(spec, storage=storage, artifacts=str(tmp_path / "a"),
               train_dir=str(tiny_data / "train"), budget=Budget(6, None),
               heartbeat_interval=None)
    study = optuna.load_study(study_name="prune", storage=storage)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.params) for t in study.trials]
    assert all(t.params["optim.lr"] == 10.0 for t in pruned)
    # a pruned trial stopped early: fewer reported epochs than the study's 3
    assert all(len(t.intermediate_values) < 3 for t in pruned)
    good = [t for t in study.trials if t.params["optim.lr"] == 0.003]
    assert all(t.state == TrialState.COMPLETE for t in good)


def test_parallel_workers_sample_with_different_seeds(tmp_path, monkeypatch):
    from hpo.run.study import create_or_resume, worker_seed_offset

    spec = load_study_spec("smoke")
    monkeypatch.setenv("HPO_WORKER_INDEX", "0")
    assert worker_seed_offset() == 0
    monkeypatch.setenv("HPO_WORKER_INDEX", "3")
    assert worker_seed_offset() == 3
    monkeypatch.delenv("HPO_WORKER_INDEX")
    assert worker_seed_offset() > 0  # a worker started by hand: from host and pid
    proposals = []
    for offset, db in ((0, "a"), (0, "b"), (1, "c"), (0, "c")):
        study = create_or_resume(spec, storage=f"sqlite:///{tmp_path}/{db}.db",
                                 heartbeat_interval=None, seed_offset=offset,
                                 train_dir="demo/train")
        trial = study.sampler.sample_independent(
            study, study.ask(), "x", optuna.distributions.FloatDistribution(0, 1))
        proposals.append(trial)
    assert proposals[0] == proposals[1]  # worker 0 of a new study keeps the file's seed
    assert proposals[2] != proposals[0]  # another worker: another seed
    assert proposals[3] != proposals[0]  # worker 0 joining a study with history: another


@pytest.mark.slow
def test_launch_fails_the_trial_its_killed_worker_left_running(tiny_data, tmp_path):
    """A worker killed mid-trial (SIGKILL: no clean-up of its own): when the launch ends, its
    trial is FAIL with a reason naming the worker, queued to resume, and nothing is RUNNING."""
    import os
    import signal
    import subprocess
    import sys
    import time

    storage = f"sqlite:///{tmp_path}/hpo.db"
    slow = dict(PRUNE_STUDY, n_trials=1, pruner="none", enqueue=[{"optim.lr": 0.003}],
                fixed={**PRUNE_STUDY["fixed"], "epochs": 50})
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(slow))
    launch = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "launch", "--study", str(tmp_path / "slow.yaml"),
         "--data", str(tiny_data / "train"), "--storage", storage, "--artifacts",
         str(tmp_path / "a"), "--heartbeat", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    for _ in range(240):
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="slow", storage=storage).trials
        except KeyError:
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and
                   t.user_attrs.get("worker")]
        if running:
            worker = int(running[0].user_attrs["worker"].rsplit(":", 1)[1])
            break
    assert worker is not None, "no trial started"
    os.kill(worker, signal.SIGKILL)
    out, err = launch.communicate(timeout=120)
    assert launch.returncode == 1, (out, err)
    assert f"worker 0 (pid {worker}) exited with code -9; its trial(s) 0 recorded FAIL" in err
    assert "Traceback" not in err
    study = optuna.load_study(study_name="slow", storage=storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING], states
    assert "exited with code -9" in study.trials[0].user_attrs["fail_reason"]
