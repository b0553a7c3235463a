"""Storage load: many worker processes on one study, through the real trial code path.

Drives ``bench/storage.py``'s machinery (``run_load``): real ``run_worker`` processes, the real
Objective, a trainer stand-in that sleeps 5 ms per epoch. 300 trials with 8 workers on one SQLite
file and 200 with 16 workers on PostgreSQL: 500 in all, as the issue asks.
"""
from __future__ import annotations

import importlib.util
import sys

import optuna
import pytest
from optuna.trial import TrialState

from hpo.store.artifacts import TRIAL_FILES
from tests.conftest import REPO

EPOCHS = 3


def _bench():
    name = "bench_storage"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "storage.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def _check(url: str, *, workers: int, trials: int, tmp_path) -> None:
    """Run the load and check the study it leaves.

    The study must hold only COMPLETE and PRUNED trials, no lock error may be logged, and it
    must hold exactly ``trials`` of them: a worker counts the study's trials and creates one
    under the study's budget lock, so workers that start at once cannot overshoot.
    """
    artifacts = tmp_path / "artifacts"
    result = _bench().run_load(url, workers=workers, trials=trials, sleep_ms=5, epochs=EPOCHS,
                               artifacts=artifacts, timeout=420)
    summary = "\n".join([*result.report(), result.result_line()])
    print(summary)
    assert not any(result.exit_codes), summary
    assert result.states.get("FAIL", 0) == 0, summary
    assert result.states.get("RUNNING", 0) == 0, summary
    assert result.lock_errors == 0, summary
    assert result.trials == result.finished, summary  # nothing WAITING or in another state
    assert result.finished == trials, summary  # exact: counted and created under the lock

    # The real Objective ran: per-epoch reports and pruning, user attributes, artifact upload.
    study = optuna.load_study(study_name=result.study, storage=url)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    assert done and pruned, summary
    for t in done:
        assert set(t.system_attrs["hpo:artifacts"]) == set(TRIAL_FILES), t.number
        assert t.system_attrs["hpo:epochs_run"] == list(range(1, EPOCHS + 1)), t.number
        assert len(t.intermediate_values) == EPOCHS, t.number
    for t in pruned:
        assert len(t.system_attrs["hpo:epochs_run"]) < EPOCHS, t.number
    stored = list((artifacts / "store").iterdir())
    assert len(stored) == len(TRIAL_FILES) * len(done)


@pytest.mark.slow
def test_eight_workers_on_one_sqlite_file(tmp_path):
    """8 worker processes, 300 trials, one SQLite file (WAL, busy timeout): no FAIL, no
    RUNNING, no lock error, exactly 300 trials."""
    _check(f"sqlite:///{tmp_path / 'load.db'}", workers=8, trials=300, tmp_path=tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_sixteen_workers_on_postgresql(tmp_path, postgres_url):
    """16 worker processes, 200 trials, PostgreSQL: no FAIL, no RUNNING, no lock error,
    exactly 200 trials."""
    _check(postgres_url, workers=16, trials=200, tmp_path=tmp_path)
