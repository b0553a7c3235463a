"""Looking after a study through the real CLI: failure streaks stop the workers, `hpo retry`
queues the failed trials again, `hpo delete` removes a study and its files."""
from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import REPO, hpo_cli

DOC = (REPO / "docs" / "errors.md").read_text()

FAILING = {
    "description": "every trial diverges the same way",
    "n_trials": 10,
    "sampler": {"name": "random", "seed": 0},
    "pruner": "none",
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 2, "batch_size": 16, "optim": {"lr": 1.0e30},
              "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"data.mixup": {"type": "float", "low": 0.0, "high": 0.2}},
}


@pytest.fixture(scope="module")
def failed(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("failing")
    (root / "failing.yaml").write_text(yaml.safe_dump(FAILING))
    args = ["--storage", f"sqlite:///{root}/hpo.db", "--artifacts", str(root / "artifacts")]
    out = hpo_cli("launch", "--study", str(root / "failing.yaml"), "--data",
                  str(tiny_data / "train"), "--workers", "2", *args)
    return {"root": root, "args": args, "out": out}


@pytest.mark.slow
def test_a_failure_streak_stops_the_workers_with_one_line(failed):
    out = failed["out"]
    assert out.returncode == 1, out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "the last 3 trials failed with the same reason: TrainingDiverged" in errors[0]
    assert "hpo retry --study failing" in errors[0]
    head, _, tail = errors[0][len("Error: "):].partition("TrainingDiverged: ")
    assert head + "TrainingDiverged: ..." in DOC
    assert "; fix the cause, then queue them again with hpo retry --study failing (and hpo " \
        "launch to run them)" in DOC
    study = optuna.load_study(study_name="failing", storage=failed["args"][1])
    states = [t.state for t in study.trials]
    # 2 workers: the one that saw the streak stops; the other may have had one trial running
    assert TrialState.RUNNING not in states and 3 <= len(states) <= 4, states
    assert all(s == TrialState.FAIL for s in states)


@pytest.mark.slow
def test_retry_queues_the_failed_trials_and_delete_removes_the_study(failed):
    args = failed["args"]
    storage = args[1]
    n_failed = len(optuna.load_study(study_name="failing", storage=storage).trials)
    out = hpo_cli("retry", "--study", "failing", *args[:2])
    assert out.returncode == 0, out.stderr
    assert f"queued {n_failed} failed trial(s) of failing again" in out.stdout
    study = optuna.load_study(study_name="failing", storage=storage)
    waiting = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(waiting) == n_failed
    assert {t.system_attrs["failed_trial"] for t in waiting} == set(range(n_failed))
    assert "no failed trial to retry" in hpo_cli("retry", "--study", "failing", *args[:2]).stdout

    refused = hpo_cli("delete", "--study", "failing", *args)  # no --yes, no terminal: aborts
    assert refused.returncode == 1
    assert optuna.study.get_all_study_names(storage) == ["failing"]
    out = hpo_cli("delete", "--study", "failing", "--yes", *args)
    assert out.returncode == 0, out.stderr
    assert "deleted study failing" in out.stdout
    assert optuna.study.get_all_study_names(storage) == []
    assert not (failed["root"] / "artifacts" / "trials" / "failing").exists()
    again = hpo_cli("delete", "--study", "failing", "--yes", *args)
    assert again.returncode == 1 and "study 'failing' does not exist" in again.stderr
    assert "`hpo retry`, `hpo delete`" in DOC
    assert len(again.stderr.strip().splitlines()) == 1
