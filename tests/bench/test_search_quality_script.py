"""``bench/search_quality.py`` at toy scale (synthetic faces, timm's test models): the whole
flow runs through the CLI, resumes, scores the eval people and replays the pruners."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from bench.search_quality import replay
from tests.conftest import REPO

RESULT = re.compile(r"RESULT preset=tiny hand=(\S+) best=(\S+) ensemble=(\S+) refit=(\S+) "
                    r"full=(\S+) age_best=(\S+) age_refit=(\S+) age_full=(\S+)")
PRUNER = re.compile(r"PRUNER name=(\w+) seconds_to_target=(\d+|never) ratio_to_none=(\S+) "
                    r"reached=(\d+)/20 median_ratio=(\S+)")


def _bench(out):
    return subprocess.run([sys.executable, "bench/search_quality.py", "--preset", "tiny",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_tiny_preset_end_to_end_and_resumed(tmp_path):
    run = _bench(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    result = RESULT.fullmatch(lines[-5])
    assert result, lines[-5]
    assert all(0.0 <= float(x) <= 1.0 for x in result.groups())
    pruners = [PRUNER.fullmatch(line) for line in lines[-4:]]
    assert [m.group(1) for m in pruners] == ["none", "median", "successive_halving",
                                             "hyperband"]
    assert float(pruners[0].group(3)) == 1.0
    assert pruners[0].group(4) == "20" and float(pruners[0].group(5)) == 1.0
    storage = f"sqlite:///{tmp_path}/hpo.db"
    search = optuna.load_study(study_name="smoke-sq", storage=storage).trials
    assert [t.state for t in search] == [TrialState.COMPLETE] * 3  # no pruning: whole curves
    refits = optuna.load_study(study_name="smoke-sq-refit", storage=storage).trials
    assert sorted(str(t.user_attrs["refit_fold"]) for t in refits) == ["0", "0", "1", "1",
                                                                      "all", "all"]
    again = _bench(tmp_path)  # every stage resumes: no trial runs twice, same figures
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip().splitlines()[-5] == lines[-5]
    assert len(optuna.load_study(study_name="smoke-sq", storage=storage).trials) == 3


def _trial(number: int, curve: list[float], seconds: float):
    return optuna.trial.create_trial(
        value=max(curve), intermediate_values=dict(enumerate(curve, 1)),
        user_attrs={"seconds": seconds},
        params={}, distributions={})


def test_replay_charges_pruned_trials_their_epochs_and_stops_at_the_target():
    good = [0.2, 0.4, 0.6, 0.7]
    bad = [0.1, 0.1, 0.1, 0.1]
    trials = [_trial(0, good, 40), _trial(1, good, 40), _trial(2, bad, 40),
              _trial(3, [0.2, 0.5, 0.7, 0.8], 40)]
    none = replay(trials, optuna.pruners.NopPruner(), 0.795)
    assert none == pytest.approx(160)  # all four trials, whole
    median = replay(trials, optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                    0.795)
    assert median == pytest.approx(80 + 10 + 40)  # the bad trial stops after one epoch
    assert math.isinf(replay(trials[:3], optuna.pruners.NopPruner(), 0.795))


def test_pruner_lines_replay_every_order():
    from bench.search_quality import pruner_lines, replay_orders

    orders = replay_orders(4, 20)
    assert orders[0] == [0, 1, 2, 3] and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert len({tuple(o) for o in orders}) > 10  # shuffles, not copies
    good = [0.2, 0.4, 0.6, 0.7]
    trials = [_trial(0, good, 40), _trial(1, [0.1] * 4, 40), _trial(2, [0.1] * 4, 40),
              _trial(3, [0.05, 0.1, 0.7, 0.8], 40)]  # the best starts worst: pruning loses it
    lines = pruner_lines(trials, {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}, 4)
    none, median = (PRUNER.fullmatch(line) for line in lines[:2])
    assert none.groups()[1:] == ("160", "1.00", "20", "1.00")
    assert median.group(2) == "never" and int(median.group(4)) < 20
