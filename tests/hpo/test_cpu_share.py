"""A worker's share of the cores (hpo.run.cpu): computed, refused when it cannot be kept, handed
to real worker processes before torch starts, and recorded on every trial."""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml

from hpo.errors import HpoError
from hpo.run.cpu import cpu_share, usable_cores, worker_env
from tests.conftest import REPO, cli

DOC = (REPO / "docs" / "errors.md").read_text()
STUDY = {
    "n_trials": 2,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 1, "batch_size": 16, "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.004}},
}


def test_each_worker_gets_an_equal_share():
    assert cpu_share(1, cores=2) == 2
    assert cpu_share(2, cores=2) == 1
    assert cpu_share(3, cores=16) == 5
    assert cpu_share(2, cpus=8, cores=16) == 4
    assert worker_env(3)["OMP_NUM_THREADS"] == "3" and worker_env(3)["HPO_CPUS"] == "3"


@pytest.mark.parametrize(("workers", "cpus", "message"), [
    (3, None, "3 workers on 2 core(s) would leave a worker without a thread of its own"),
    (1, 0, "--cpus 0: a worker needs at least 1 of this machine's 2 usable core(s)"),
    (1, 3, "--cpus 3: a worker needs at least 1 of this machine's 2 usable core(s)"),
    (2, 1, "2 workers on 1 core(s) would leave a worker without a thread of its own"),
])
def test_a_share_that_cannot_be_kept_is_refused(workers, cpus, message):
    with pytest.raises(HpoError) as err:
        cpu_share(workers, cpus=cpus, cores=2)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def _study(tmp_path: Path) -> str:
    path = tmp_path / "share.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return str(path)


@pytest.mark.parametrize("extra", [["--workers", "WORKERS"], ["--cpus", "0"], ["--cpus", "abc"]])
def test_launch_refuses_before_anything_is_created(tmp_path, tiny_data, extra):
    extra = [str(usable_cores() + 1) if e == "WORKERS" else e for e in extra]
    db = tmp_path / "hpo.db"
    out = cli("launch", "--study", _study(tmp_path), "--data", str(tiny_data / "train"),
              "--storage", f"sqlite:///{db}", "--artifacts", str(tmp_path / "art"), *extra)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, out.stderr
    if extra[0] == "--workers":
        assert "would leave a worker without a thread of its own" in lines[0]
        assert "would leave a worker without a thread of its own" in DOC
    assert not db.exists() and not (tmp_path / "art").exists()


@pytest.mark.slow
def test_launched_workers_record_their_share(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    workers = usable_cores()
    out = cli("launch", "--study", _study(tmp_path), "--data", str(tiny_data / "train"),
              "--workers", str(workers), "--n-trials", str(workers), "--storage", storage,
              "--artifacts", str(tmp_path / "art"))
    assert out.returncode == 0, out.stderr[-2000:]
    trials = optuna.load_study(study_name="share", storage=storage).trials
    assert len(trials) == workers
    assert {t.user_attrs["cpu_threads"] for t in trials} == {usable_cores() // workers}


@pytest.mark.slow
def test_a_worker_started_by_hand_takes_its_cpus(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    out = cli("worker", "--study", _study(tmp_path), "--data", str(tiny_data / "train"),
              "--n-trials", "1", "--cpus", "1", "--storage", storage,
              "--artifacts", str(tmp_path / "art"))
    assert out.returncode == 0, out.stderr[-2000:]
    (trial,) = optuna.load_study(study_name="share", storage=storage).trials
    assert trial.user_attrs["cpu_threads"] == 1
    assert os.environ.get("HPO_CPUS") is None  # the test process itself is left alone
