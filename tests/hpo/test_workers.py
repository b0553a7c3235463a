"""Several workers on one study, and pruning, with real trials and real databases."""
from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.budget import Budget
from hpo.studyfiles import load_study_spec
from hpo.worker import run_worker
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
def test_three_workers_on_postgresql(tiny_data, tmp_path, postgres_url):
    out = cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"), "--n-trials",
              "6", "--workers", "3", "--storage", postgres_url, "--artifacts",
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
    from hpo.study import create_or_resume, worker_seed_offset

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
