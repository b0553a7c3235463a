"""Faults injected with real processes: SIGKILL, SIGTERM, Ctrl-C, bad trials.

Database restarts and outages: tests/hpo/test_outage.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from timm.models import register_model
from torch import nn

from hpo.run.budget import Budget
from hpo.run.worker import run_worker
from hpo.studyfile.files import load_study_spec
from tests.conftest import REPO

SLOW_STUDY = {
    "n_trials": 2,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 6, "batch_size": 8, "data": {"img_size": [64, 48], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
    "enqueue": [{"optim.lr": 2e-3}],
}


def _study_file(tmp_path, name="faulty", **over) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SLOW_STUDY, **over}))
    return str(path)


def _worker(study, storage, tmp_path, tiny_data, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "worker", "--study", study, "--storage", storage,
         "--artifacts", str(tmp_path / "art"), "--data", str(tiny_data / "train"),
         "--heartbeat", "2", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def _wait_for_step(storage, name, step, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.stderr.read()}")
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except Exception:  # the study may not exist yet
            trials = []
        if trials and max(trials[0].intermediate_values, default=0) >= step:
            return
        time.sleep(0.1)
    raise AssertionError(f"trial 0 never reached epoch {step}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/hpo.db"
    return request.getfixturevalue("postgres_url")


@pytest.mark.slow
def test_killed_worker_is_resumed_not_restarted(any_storage, tmp_path, tiny_data):
    study = _study_file(tmp_path)
    victim = _worker(study, any_storage, tmp_path, tiny_data)
    _wait_for_step(any_storage, "faulty", 2, victim)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    rescuer = _worker(study, any_storage, tmp_path, tiny_data)
    out, err = rescuer.communicate(timeout=400)
    assert rescuer.returncode == 0, err
    trials = optuna.load_study(study_name="faulty", storage=any_storage).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    done = retry.user_attrs["resumed_from"]
    assert done["trial"] == 0 and 2 <= done["epoch"] < 6
    # the retry reported only the epochs it trained: the finished ones were not redone
    assert sorted(retry.intermediate_values) == list(range(done["epoch"] + 1, 7))
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2  # the study still reached its budget


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_the_trial_resumes(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    study = _study_file(tmp_path)
    worker = _worker(study, storage, tmp_path, tiny_data)
    _wait_for_step(storage, "faulty", 1, worker)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130
    assert "Resume with: hpo worker --study faulty" in err and "Traceback" not in err
    trials = optuna.load_study(study_name="faulty", storage=storage).trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]  # queued to resume
    again = _worker(study, storage, tmp_path, tiny_data)
    _, err = again.communicate(timeout=400)
    assert again.returncode == 0, err
    trials = optuna.load_study(study_name="faulty", storage=storage).trials
    retry = trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from"]["trial"] == 0
    assert min(retry.intermediate_values) == retry.user_attrs["resumed_from"]["epoch"] + 1
    assert TrialState.RUNNING not in [t.state for t in trials]


@pytest.mark.slow
def test_ctrl_c_to_launch_stops_every_worker(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    study = _study_file(tmp_path)
    launch = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "launch", "--study", study, "--storage", storage,
         "--artifacts", str(tmp_path / "art"), "--data", str(tiny_data / "train"),
         "--workers", "2", "--heartbeat", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(storage, "faulty", 1, launch)
    launch.send_signal(signal.SIGINT)
    _, err = launch.communicate(timeout=90)
    assert launch.returncode == 130
    assert "Resume with: hpo launch --study faulty" in err
    assert err.count("Resume with") == 1 and f"--data {tiny_data / 'train'}" in err
    states = [t.state for t in optuna.load_study(study_name="faulty", storage=storage).trials]
    assert TrialState.RUNNING not in states


# -- a lost database: the retry bound, and its setting ---------------------------------------


def test_a_database_that_stays_away_stops_with_one_line(monkeypatch):
    """A real refused connection is retried for HPO_STORAGE_RETRY_SECONDS, then one line."""
    import sqlalchemy

    from hpo.errors import StorageError
    from hpo.store.storage import with_retries

    monkeypatch.setenv("HPO_STORAGE_RETRY_SECONDS", "1")
    engine = sqlalchemy.create_engine("postgresql+psycopg://hpo@127.0.0.1:1/hpo",
                                      connect_args={"connect_timeout": 2})
    tries = []

    def connect():
        tries.append(time.monotonic())
        with engine.connect():
            pass

    with pytest.raises(StorageError) as info:
        with_retries(connect, what="counting trials")
    message = str(info.value)
    assert message.startswith("lost the study database while counting trials and it did not "
                              "come back within 1 s (connection failed")
    assert message.endswith("start it again and resume, or set HPO_STORAGE_RETRY_SECONDS to "
                            "wait longer") and "\n" not in message
    assert len(tries) == 3 and tries[-1] - tries[0] >= 1.0  # waited 0.5 + 1 s, then gave up
    from tests.test_errors import _in_doc

    _in_doc("and it did not come back within 300 s")
    _in_doc("start it again and resume, or set HPO_STORAGE_RETRY_SECONDS to wait longer")


def test_a_bad_retry_setting_is_one_line(tmp_path):
    from hpo.run.study import create_or_resume
    from tests.conftest import hpo_cli
    from tests.test_errors import _assert_one_line, _in_doc

    create_or_resume(load_study_spec("smoke"), storage=f"sqlite:///{tmp_path}/hpo.db",
                     heartbeat_interval=None)
    out = hpo_cli("status", "--study", "smoke", "--storage", f"sqlite:///{tmp_path}/hpo.db",
                  env={"HPO_STORAGE_RETRY_SECONDS": "soon"})
    message = ("HPO_STORAGE_RETRY_SECONDS is 'soon', but must be a number of seconds > 0 (how "
               "long a worker waits for a lost study database); e.g. "
               "HPO_STORAGE_RETRY_SECONDS=300")
    _assert_one_line(out, message)
    _in_doc(message)


# -- bad trials: real models that fail the way big or broken models do ------------------------


class _OutOfMemoryNet(nn.Module):
    """Runs like a model until a training batch is 'too big', as on a full GPU."""

    def __init__(self, num_classes: int = 18, **kwargs) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.fc(x.mean((2, 3)))


class _WrongHeadNet(nn.Module):
    """Gives 17 outputs instead of 18: the loss raises inside the training step."""

    def __init__(self, num_classes: int = 18, **kwargs) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


@register_model
def hpo_test_oom_net(pretrained: bool = False, **kwargs) -> nn.Module:
    return _OutOfMemoryNet(num_classes=kwargs.get("num_classes", 18))


@register_model
def hpo_test_wrong_head_net(pretrained: bool = False, **kwargs) -> nn.Module:
    return _WrongHeadNet(num_classes=kwargs.get("num_classes", 18))


def test_bad_trials_fail_alone_and_the_worker_goes_on(tmp_path, tiny_data):
    raw = {
        "n_trials": 4,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "data": {"train_dir": "unused", "val_fraction": 0.34},
        "fixed": {"epochs": 1, "batch_size": 16,
                  "data": {"img_size": [32, 24], "num_workers": 0},
                  "model": {"pretrained": False}},
        "space": {
            "model.name": {"type": "categorical",
                           "choices": ["test_resnet", "hpo_test_oom_net",
                                       "hpo_test_wrong_head_net"]},
            "optim.lr": {"type": "categorical", "choices": [0.003, 1.0e30]},
        },
        "enqueue": [{"model.name": "hpo_test_oom_net", "optim.lr": 0.003},
                    {"model.name": "test_resnet", "optim.lr": 1.0e30},
                    {"model.name": "hpo_test_wrong_head_net", "optim.lr": 0.003},
                    {"model.name": "test_resnet", "optim.lr": 0.003}],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/hpo.db"
    ran = run_worker(load_study_spec(str(path)), storage=storage,
                     artifacts=str(tmp_path / "art"), train_dir=str(tiny_data / "train"),
                     budget=Budget(4, None), heartbeat_interval=None)
    assert ran == 4
    trials = optuna.load_study(study_name="bad", storage=storage).trials
    reasons = [t.user_attrs.get("fail_reason", "") for t in trials]
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    assert reasons[0] == "CUDA out of memory: lower batch_size or img_size for this model"
    assert reasons[1].startswith("TrainingDiverged: training loss became NaN or infinite")
    assert reasons[2].startswith("ValueError: ") and "17" in reasons[2]
