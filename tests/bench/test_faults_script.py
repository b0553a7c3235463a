"""``bench/faults.py`` at toy scale: a worker SIGKILLed in mid-trial on SQLite, for real."""
from __future__ import annotations

import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from bench.faults import lost_epochs
from tests.conftest import REPO


@pytest.mark.slow
def test_kill_worker_on_sqlite(tmp_path):
    """The killed trial resumes from its last checkpoint: nothing RUNNING, no traceback, and
    the RESULT line's figures are the study's."""
    out = subprocess.run(
        [sys.executable, "bench/faults.py", "--out", str(tmp_path), "--scenario",
         "kill_worker", "--epochs", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"RESULT scenario=kill_worker trials=(\d+) lost_epochs=(\d+) "
                         r"running_left=0 tracebacks=0", last)
    assert match, out.stdout
    storage = f"sqlite:///{tmp_path}/kill_worker/hpo.db"
    trials = optuna.load_study(study_name="faults_kill_worker", storage=storage).trials
    assert int(match.group(1)) == len(trials) == 3  # 2 trials and the killed one's retry
    assert int(match.group(2)) == lost_epochs(trials)
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"]["epoch"] >= 2  # killed at epoch 2 or later
    assert "fail_reason" not in retry.user_attrs and failed.user_attrs["fail_reason"]


def test_lost_epochs_counts_epochs_trained_twice():
    def trial(number, values, state=TrialState.COMPLETE, **attrs):
        system = {"failed_trial": attrs.pop("failed")} if "failed" in attrs else {}
        return optuna.trial.create_trial(
            state=state, value=None if state != TrialState.COMPLETE else 0.5,
            intermediate_values=dict.fromkeys(values, 0.1), user_attrs=attrs,
            system_attrs=system)

    trials = [trial(0, [1, 2, 3], TrialState.FAIL),
              trial(1, [3, 4], failed=0, resumed_from={"trial": 0, "epoch": 2}),
              trial(2, [1, 2], TrialState.FAIL),
              trial(3, [1, 2, 3, 4], failed=2)]  # resumed from nothing: 2 epochs again
    assert lost_epochs(trials) == 1 + 2
