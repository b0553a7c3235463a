"""The study database goes away under a running 2-worker study, for real.

A PostgreSQL cluster of the tests' own (conftest ``faults_postgres``) is restarted three times
(both workers training; both again after that; one training while the other waits), or
stopped for 25 s (longer than the heartbeat's 2 s grace), while ``hpo launch`` runs two
workers with ``--heartbeat 1``; and a worker is frozen (SIGSTOP) past the grace, so
the other fails its trial and retries it while it still lives. Each time the study must end
with every lineage COMPLETE, none RUNNING, no trial told twice, no traceback, exit code 0.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO, fresh_postgres_database
from tests.hpo.test_faults import SLOW_STUDY, _study_file

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
# The last trial trains alone for several epochs: room for a restart. (With a thread each,
# two workers on 2 cores train 8 epochs in about 10 s: too short a window to hit.)
EPOCHS = 16


@pytest.fixture()
def outage_db(faults_postgres):
    with fresh_postgres_database(faults_postgres.url(), prefix="hpo_outage") as url:
        yield url


def _launch(study: str, storage: str, tmp_path, tiny_data) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "launch", "--study", study, "--storage", storage,
         "--artifacts", str(tmp_path / "art"), "--data", str(tiny_data / "train"),
         "--workers", "2", "--heartbeat", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HPO_STORAGE_RETRY_SECONDS": "120"})


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="faulty", storage=storage).trials
    except Exception:  # not created yet, or the database is away
        return []


def _wait(storage: str, proc: subprocess.Popen, ready, what: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hpo launch exited before {what}: {proc.communicate()}")
        trials = _trials(storage)
        if ready(trials):
            return trials
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _both_running(trials) -> bool:
    running = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
    return len(running) == 2


def _epochs_run(t: optuna.trial.FrozenTrial) -> list[int] | None:
    # a system attribute since hpo.store.records; a user attribute before
    return t.system_attrs.get("hpo:epochs_run", t.user_attrs.get("epochs_run"))


def _check_study(storage: str, proc: subprocess.Popen, *, n_trials: int, epochs: int = EPOCHS,
                 fails: int = 0) -> str:
    """The launch ended well; returns its stderr."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err, err
    trials = _trials(storage)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    lineages = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(lineages) == n_trials  # the budget, exactly
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == fails, [(t.number, t.user_attrs.get("fail_reason")) for t in failed]
    for t in failed:  # a failure has a reason and a retry
        assert t.user_attrs.get("fail_reason") and t.number in retried
    for t in trials:
        if t.state != TrialState.FAIL:
            assert t.state == TrialState.COMPLETE, (t.number, t.state)
            start = t.user_attrs.get("resumed_from", {}).get("epoch", 0)
            # every epoch reported once: no trial was trained or told twice
            assert sorted(t.intermediate_values) == list(range(start + 1, epochs + 1))
            assert _epochs_run(t) == list(range(start + 1, epochs + 1))
    return err


def _running(trials) -> dict[int, int]:
    """Running trials and the last epoch each reported."""
    return {t.number: max(t.intermediate_values, default=0) for t in trials
            if t.state == TrialState.RUNNING}


def _trained_on(before: dict[int, int]):
    """Every trial running at ``before`` reported a later epoch, or ended."""
    def ready(trials) -> bool:
        now = {t.number: t for t in trials}
        return bool(now) and all(
            now[n].state != TrialState.RUNNING or max(now[n].intermediate_values) > epoch
            for n, epoch in before.items())
    return ready


def _last_trial_alone(trials) -> bool:
    """The budget is taken and one trial is left running (with epochs to go): one worker trains,
    the other waits for it, checking for dead workers every second."""
    running = _running(trials)
    return len(trials) == 3 and len(running) == 1 and max(running.values()) < EPOCHS - 1


def test_database_restart_mid_study(tmp_path, tiny_data, outage_db, faults_postgres):
    """Three restarts: while both workers train, again once both trained on after it, then while
    one trains and the other waits for it: nothing fails, nothing is lost. Each restart waits
    for the state it is meant to hit (not for a clock), so a fast machine cannot finish the
    study before the restarts."""
    study = _study_file(tmp_path, n_trials=3, fixed={**SLOW_STUDY["fixed"],
                                                            "epochs": EPOCHS})
    launch = _launch(study, outage_db, tmp_path, tiny_data)
    trials = _wait(outage_db, launch, _both_running, "both workers to train")
    faults_postgres.restart()
    _wait(outage_db, launch, _trained_on(_running(trials)), "both trials to train on")
    faults_postgres.restart()
    _wait(outage_db, launch, _last_trial_alone, "the last trial to train alone")
    faults_postgres.restart()
    completed = [t.number for t in _trials(outage_db) if t.state == TrialState.COMPLETE]
    err = _check_study(outage_db, launch, n_trials=3)
    assert "database unavailable while" in err or "heartbeat of trial" in err  # it was felt
    states = {t.number: t.state for t in _trials(outage_db)}
    assert all(states[n] == TrialState.COMPLETE for n in completed)  # nothing completed is lost


def test_database_outage_longer_than_the_grace(tmp_path, tiny_data, outage_db, faults_postgres):
    """Stopped for 25 s (the grace is 2 s): both workers wait, then finish their trials."""
    study = _study_file(tmp_path, n_trials=2, fixed={**SLOW_STUDY["fixed"], "epochs": 4})
    launch = _launch(study, outage_db, tmp_path, tiny_data)
    _wait(outage_db, launch, _both_running, "both workers to train")
    faults_postgres.stop()
    try:
        time.sleep(25)
        assert launch.poll() is None  # nobody gave up
    finally:
        faults_postgres.start()
    err = _check_study(outage_db, launch, n_trials=2, epochs=4)
    assert "database unavailable while" in err


def test_a_frozen_worker_loses_its_trial_quietly(tmp_path, tiny_data, postgres_url):
    """A worker frozen past the grace (SIGSTOP: a stalled machine) has its trial failed and
    retried by the other; woken, it finds the trial gone, drops it and goes on."""
    # 8 epochs: the two trials overlap even when one worker starts seconds after the other.
    study = _study_file(tmp_path, n_trials=2, fixed={**SLOW_STUDY["fixed"], "epochs": 8})
    with fresh_postgres_database(postgres_url, prefix="hpo_frozen") as storage:
        launch = _launch(study, storage, tmp_path, tiny_data)
        trials = _wait(storage, launch, _both_running, "both workers to train")
        victim = min((t for t in trials if t.state == TrialState.RUNNING),
                     key=lambda t: t.number)
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        try:
            _wait(storage, launch, lambda ts: any(
                t.system_attrs.get("failed_trial") == victim.number
                and t.state != TrialState.WAITING for t in ts), "the retry to start")
        finally:
            os.kill(pid, signal.SIGCONT)
        err = _check_study(storage, launch, n_trials=2, epochs=8, fails=1)
        failed = _trials(storage)[victim.number]
        assert "was silent (no heartbeat) for more than 2 s" in failed.user_attrs["fail_reason"]
        assert f"trial {victim.number} was failed by another worker" in err
        assert "drops it and goes on" in err
