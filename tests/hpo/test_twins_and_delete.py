"""Twin study files on one storage, ``hpo delete`` while a worker runs, ``--gpus`` checks and
the message of a study whose trials all failed, through the real CLI and real processes."""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.run.study import create_or_resume, record_of
from hpo.studyfile.files import load_study_spec
from tests.conftest import REPO, cli

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")

TINY = {
    "description": "a tiny study",
    "metric": "f1",
    "n_trials": 1,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "data": {"train_dir": "unused", "val_fraction": 0.34},
    "fixed": {"epochs": 1, "batch_size": 16, "device": "cpu",
              "data": {"img_size": [32, 24], "num_workers": 0},
              "model": {"name": "test_resnet", "pretrained": False}},
    "space": {"optim.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
}


def _write(path, **over):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**TINY, **over}, sort_keys=False))
    return path


def _error_line(out) -> str:
    """The command failed with one ``Error:`` line, last on stderr, and no traceback."""
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and out.stderr.strip().splitlines()[-1] == errors[0], out.stderr
    return errors[0][len("Error: "):]


def _in_doc(message: str, tmp_path) -> None:
    shown = message.replace(f"{tmp_path}/", "")  # the doc shows paths without temp folders
    assert shown in DOC, f"docs/errors.md lacks: {shown}"


def _trials(storage: str, name: str) -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.number, t.state, t.params, t.value, dict(t.user_attrs)) for t in study.trials]


# ---------------------------------------------------------------------------------------------
# 1. two study files of one name on one storage


@pytest.mark.slow
def test_a_twin_study_file_is_refused_and_a_comparable_change_goes_on(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    args = ["--data", str(tiny_data / "train"), "--storage", storage, "--artifacts",
            str(tmp_path / "art")]
    first = _write(tmp_path / "a" / "tw.yaml")
    out = cli("launch", "--study", str(first), *args)
    assert out.returncode == 0, out.stderr
    before = _trials(storage, "tw")
    assert [t[1] for t in before] == [TrialState.COMPLETE]

    twin = _write(tmp_path / "b" / "tw.yaml", metric="accuracy", n_trials=4, space={
        "optim.lr": {"type": "categorical", "choices": [0.001, 0.01]}})
    message = _error_line(cli("launch", "--study", str(twin), *args))
    assert message == (
        f"study 'tw' in {storage} was made from study file {first}, and study file {twin} "
        "differs from it in metric f1 -> accuracy; space: optim.lr {type: float, low: 0.001, "
        "high: 0.01, log: True} -> {type: categorical, choices: (0.001, 0.01)}, so their "
        f"trials would not be comparable; rename {twin} (a study is named after its file), "
        "use another --storage, or delete the old study first with: hpo delete --study tw")
    _in_doc(message, tmp_path)
    assert _trials(storage, "tw") == before  # untouched: no trial, no attribute written
    study = optuna.load_study(study_name="tw", storage=storage)
    assert record_of(study).study_file == str(first)
    assert record_of(study).text == first.read_text()

    more = _write(tmp_path / "c" / "tw.yaml", n_trials=2)  # only the budget: comparable
    out = cli("launch", "--study", str(more), *args)
    assert out.returncode == 0, out.stderr
    line = (f"study 'tw' goes on with {more}'s changed n_trials 1 -> 2 (its metric, split, "
            "fixed settings and search space are unchanged, so its 1 trial(s) stay comparable)")
    assert line in out.stderr
    _in_doc(line, tmp_path)
    after = _trials(storage, "tw")
    assert after[0] == before[0] and len(after) == 2
    study = optuna.load_study(study_name="tw", storage=storage)
    assert record_of(study).study_file == str(more)  # the new budget is what workers read

    out = cli("launch", "--study", str(more), *args)  # the same file: resumes, says nothing
    assert out.returncode == 0, out.stderr
    assert "goes on with" not in out.stderr and "budget met: 2/2" in out.stdout
    assert _trials(storage, "tw") == after


def test_an_edited_file_that_changes_what_trials_mean_is_refused(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    path = _write(tmp_path / "tw.yaml")
    create_or_resume(load_study_spec(str(path)), storage=storage, heartbeat_interval=None,
                     train_dir=str(tiny_data / "train"))
    _write(path, direction="minimize", fixed={**TINY["fixed"], "epochs": 3},
           space={**TINY["space"], "optim.weight_decay": {"type": "float", "low": 0.0,
                                                          "high": 0.1}})
    with pytest.raises(HpoError) as refused:
        create_or_resume(load_study_spec(str(path)), storage=storage, heartbeat_interval=None,
                         train_dir=str(tiny_data / "train"))
    assert str(refused.value) == (
        f"study 'tw' in {storage} was made from an earlier version of study file {path}, "
        "which now differs from it in direction maximize -> minimize; fixed: epochs 1 -> 3; "
        "space: optim.weight_decay added, so their trials would not be comparable; restore "
        f"those settings, rename {path} (a study is named after its file), use another "
        "--storage, or delete the old study first with: hpo delete --study tw")
    study = optuna.load_study(study_name="tw", storage=storage)
    assert "epochs: 1" in record_of(study).text and study.direction.name == "MAXIMIZE"


def test_plain_optuna_studies_and_specs_without_text_resume_as_before(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    plain = optuna.create_study(study_name="tw", storage=storage, direction="maximize")
    plain.add_trial(optuna.trial.create_trial(value=0.5))
    spec = load_study_spec(str(_write(tmp_path / "tw.yaml")))
    study = create_or_resume(spec, storage=storage, heartbeat_interval=None,
                             train_dir=str(tiny_data / "train"))
    assert record_of(study).text == spec.text and len(study.trials) == 1
    # a spec built in code (no text) and one with comments only: resumed, nothing lost
    create_or_resume(dataclasses.replace(spec, text=""), storage=storage,
                     heartbeat_interval=None, train_dir=str(tiny_data / "train"))
    assert record_of(optuna.load_study(study_name="tw", storage=storage)).text == spec.text
    (tmp_path / "tw.yaml").write_text("# a comment\n" + spec.text)
    create_or_resume(load_study_spec(str(tmp_path / "tw.yaml")), storage=storage,
                     heartbeat_interval=None, train_dir=str(tiny_data / "train"))
    recorded = record_of(optuna.load_study(study_name="tw", storage=storage))
    assert recorded.text.startswith("# a comment\n")


# ---------------------------------------------------------------------------------------------
# 2. hpo delete while a worker runs


def _running_worker(storage: str, name: str, proc, deadline: float) -> tuple[int, str]:
    """Wait until a trial of the study is RUNNING with its worker recorded."""
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with code {proc.returncode}"
        try:
            trials = optuna.load_study(study_name=name, storage=storage).trials
        except KeyError:  # not created yet
            trials = []
        running = [t for t in trials if t.state == TrialState.RUNNING and
                   t.user_attrs.get("worker")]
        if running:
            return running[0].number, running[0].user_attrs["worker"]
        time.sleep(0.5)
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_delete_refuses_while_a_worker_runs_and_force_deletes_after_it_died(tiny_data,
                                                                            tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    path = _write(tmp_path / "slow.yaml", fixed={**TINY["fixed"], "epochs": 500})
    args = ["--storage", storage, "--artifacts", str(tmp_path / "art")]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "worker", "--study", str(path), "--data",
         str(tiny_data / "train"), "--heartbeat", "1", *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        number, owner = _running_worker(storage, "slow", worker, time.monotonic() + 240)
        assert owner.endswith(f":{worker.pid}")
        for extra in ((), ("--yes",)):  # refused before asking, and with --yes
            message = _error_line(cli("delete", "--study", "slow", *extra, *args))
            assert message == (
                f"study slow has 1 RUNNING trial(s): {number} (worker {owner}); deleting it "
                "now would crash their workers, so hpo delete refuses while any trial is "
                "RUNNING: stop those workers first (Ctrl-C the hpo launch, or kill the pid), "
                "or, if they are dead and left their trials RUNNING, delete anyway with: hpo "
                "delete --study slow --yes --force")
        _in_doc(message.replace(owner, "host:1234"), tmp_path)
        assert worker.poll() is None  # still training its trial
        assert "slow" in optuna.get_all_study_names(storage)

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=60)
        assert _error_line(cli("delete", "--study", "slow", "--yes", *args)) == message
        out = cli("delete", "--study", "slow", "--yes", "--force", *args)
        assert out.returncode == 0, out.stderr
        assert "deleted study slow: 1 trial(s)" in out.stdout
        assert "slow" not in optuna.get_all_study_names(storage)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=60)
        log.close()


# ---------------------------------------------------------------------------------------------
# 3. --gpus that would train on the CPU


@pytest.mark.parametrize("gpus", ["abc", "0", "0,0"])
def test_gpus_that_do_not_exist_are_refused_before_anything_starts(gpus, tiny_data, tmp_path):
    if gpus != "abc" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    db = tmp_path / "hpo.db"
    out = cli("launch", "--study", str(_write(tmp_path / "tw.yaml")), "--data",
              str(tiny_data / "train"), "--gpus", gpus, "--storage", f"sqlite:///{db}",
              "--artifacts", str(tmp_path / "art"))
    message = _error_line(out)
    if gpus == "abc":
        expected = ("--gpus 'abc': 'abc' is not a GPU number (--gpus takes device numbers 0, "
                    "1, ... separated by commas, as nvidia-smi lists them); give e.g. --gpus "
                    "0,1, or leave --gpus out to train on the CPU")
    else:
        expected = (f"--gpus '{gpus}': this machine has no GPU that torch can use "
                    "(torch.cuda.is_available() is False), so the workers would train on the "
                    "CPU; leave --gpus out (--workers N for N CPU workers), or install a CUDA "
                    "build of torch and its driver")
    assert message == expected
    _in_doc(expected.replace(f"'{gpus}'", "'0'") if gpus == "0,0" else expected, tmp_path)
    assert not db.exists() and not (tmp_path / "art").exists()


# ---------------------------------------------------------------------------------------------
# 4. a study whose trials failed on their data


@pytest.mark.slow
def test_a_study_whose_trials_failed_says_the_last_reason(tiny_data, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(tiny_data / "train", train)
    images = sorted(p for p in (train / "images").rglob("*") if p.is_file())
    for image in images[:30]:  # past the 5% the trainer skips with a warning
        image.write_bytes(b"")
    storage = f"sqlite:///{tmp_path}/hpo.db"
    out = cli("launch", "--study", str(_write(tmp_path / "tw.yaml")), "--data", str(train),
              "--storage", storage, "--artifacts", str(tmp_path / "art"))
    message = _error_line(out)
    assert re.fullmatch(
        r"study tw has no completed trial: 1 of 1 finished trial\(s\) failed, the last \(trial "
        r"0\) with: DataError: 30 of 126 images cannot be read \(first: \S+: empty file \(0 "
        r"bytes\)\); replace or remove them; fix that cause \(a data error: the images or the "
        r"--data folder it names\), then queue them again with hpo retry --study tw and run "
        r"hpo launch; every trial's reason: hpo status --study tw", message), message
    assert "run: hpo launch" not in message
    best = cli("best", "--study", "tw", "--storage", storage)
    assert _error_line(best) == message
    _in_doc(re.sub(r"first: \S+:", "first: mask1.jpg:", message), tmp_path)
