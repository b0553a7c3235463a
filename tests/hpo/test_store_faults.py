"""An artifact folder that stops taking files, as it really happens: a tmpfs remounted
read-only between two trials or in the middle of one, and a disk that fills mid-trial.

The worker must stop with one line instead of failing the rest of the budget, keep the
interrupted trial's checkpoints, and resume it with ``hpo retry`` once the folder is fixed.
Needs a machine that lets the tests mount a tmpfs (root in a container does); skipped elsewhere.
"""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import trainer
from hpo.errors import HpoError
from hpo.run.budget import Budget
from hpo.run.lineage import retry_failed
from hpo.run.worker import run_worker
from hpo.studyfile.files import load_study_spec

STUDY = {
    "n_trials": 3,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 2, "batch_size": 16, "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.004}},
}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture()
def tmpfs(tmp_path) -> Iterator[Path]:
    """A real 96 MiB tmpfs of the test's own, unmounted at the end whatever happened."""
    point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=96m", "tmpfs", str(point))
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"this machine does not let the tests mount a tmpfs ({exc})")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30)


def _read_only(point: Path, read_only: bool = True) -> None:
    _mount("-o", f"remount,{'ro' if read_only else 'rw'}", str(point))


def _spec(tmp_path: Path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return load_study_spec(str(path))


def _work(spec, storage: str, root: Path, tiny_data: Path, n: int, fit=None) -> None:
    run_worker(spec, storage=storage, artifacts=str(root), train_dir=str(tiny_data / "train"),
               budget=Budget(n, None), heartbeat_interval=None, fit=fit)


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).trials


def _at_epoch(epoch: int, action):
    """The real trainer, with ``action()`` run after ``epoch``'s checkpoint is written."""
    def fit(cfg, *, on_epoch=None, resume=None, data=None):
        def hook(e, metrics):
            out = on_epoch(e, metrics) if on_epoch is not None else None
            if e == epoch:
                action()
            return out
        return trainer.fit(cfg, on_epoch=hook, resume=resume, data=data)
    return fit


def test_a_store_gone_read_only_between_trials_burns_no_trial(tmpfs, tmp_path, tiny_data):
    spec, root = _spec(tmp_path, "ro-between"), tmpfs / "art"
    storage = f"sqlite:///{tmp_path}/s.db"
    _work(spec, storage, root, tiny_data, n=1)
    assert [t.state for t in _trials(storage, spec.name)] == [TrialState.COMPLETE]

    _read_only(tmpfs)
    with pytest.raises(HpoError) as err:
        _work(spec, storage, root, tiny_data, n=3)
    message = str(err.value)
    assert "\n" not in message and message.startswith(
        f"cannot write to the artifact folder {root} ") and "Read-only file system" in message
    assert len(_trials(storage, spec.name)) == 1  # burnt: none

    _read_only(tmpfs, False)
    _work(spec, storage, root, tiny_data, n=3)
    assert [t.state for t in _trials(storage, spec.name)] == [TrialState.COMPLETE] * 3


def test_a_store_gone_read_only_mid_trial_stops_the_worker_and_resumes(tmpfs, tmp_path,
                                                                      tiny_data):
    spec, root = _spec(tmp_path, "ro-mid"), tmpfs / "art"
    storage = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(HpoError, match="cannot write to the artifact folder"):
        _work(spec, storage, root, tiny_data, n=3, fit=_at_epoch(1, lambda: _read_only(tmpfs)))
    (failed,) = _trials(storage, spec.name)  # the worker stopped: no second trial burnt
    reason = failed.user_attrs["fail_reason"]
    assert failed.state == TrialState.FAIL and "\n" not in reason
    assert reason == (f"ArtifactStoreError: the artifact folder {root} stopped taking files "
                      "while trial 0 trained (Read-only file system (torch.save could not write "
                      "the checkpoint)); make it writable or free "
                      "space, then hpo retry --study ro-mid resumes the trial from its last "
                      "checkpoint")

    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    assert "stopped taking files while trial 3 trained (Read-only file system" in doc
    _read_only(tmpfs, False)
    assert (root / "trials" / "ro-mid" / "0" / "last.pt").is_file()  # kept for the retry
    assert retry_failed(optuna.load_study(study_name=spec.name, storage=storage)) == [0]
    _work(spec, storage, root, tiny_data, n=3)
    trials = _trials(storage, spec.name)
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert trials[1].user_attrs["resumed_from"] == {"trial": 0, "epoch": 1}


def test_a_disk_filling_mid_trial_is_one_line_not_a_torch_error(tmpfs, tmp_path, tiny_data):
    spec, storage, root = _spec(tmp_path, "full"), f"sqlite:///{tmp_path}/s.db", tmpfs / "art"

    def fill() -> None:
        with open(tmpfs / "filler", "wb") as f:  # every byte of the disk but a few
            try:
                while True:
                    f.write(b"\0" * 2**20)
            except OSError:
                pass

    with pytest.raises(HpoError) as err:
        _work(spec, storage, root, tiny_data, n=3, fit=_at_epoch(1, fill))
    assert "MiB free, but a trial needs about" in str(err.value)  # the check before trial 1
    (failed,) = _trials(storage, spec.name)
    reason = failed.user_attrs["fail_reason"]
    assert reason.startswith(f"ArtifactStoreError: the artifact folder {root} stopped taking "
                             "files while trial 0 trained (No space left on device"), reason
    assert "inline_container" not in reason and "unexpected pos" not in reason
    (tmpfs / "filler").unlink()
    assert not list(root.rglob("*.tmp"))  # no half-written checkpoint left behind
