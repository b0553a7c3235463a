"""The study service through the CLI, as users run it (SQLite file).

Commands run in-process (``hpo_cli``: the output, exit code and strictness of a process; a
launch still starts real worker processes); a real process where the behaviour needs one: a
server (dashboard) and the check that no password reaches any output."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from hpo.store.records import artifact_ids, trial_epochs_run, trial_versions
from tests.conftest import REPO, cli, copy_launch, hpo_cli


@pytest.fixture(scope="module")
def smoke(smoke_launch, tmp_path_factory):
    """The shipped smoke study, 3 trials, run once through `hpo launch` (the session's launch;
    this module's own copy of the study)."""
    return {"out": smoke_launch["out"],
            **copy_launch(smoke_launch, tmp_path_factory.mktemp("smoke"))}


@pytest.mark.slow
def test_launch_runs_the_smoke_study(smoke):
    out = smoke["out"]
    assert out.returncode == 0, out.stderr
    assert "study smoke in sqlite:///" in out.stdout
    assert "finished 3/3: complete " in out.stdout and "best trial" in out.stdout
    study = optuna.load_study(study_name="smoke", storage=smoke["storage"])
    states = [t.state for t in study.trials]
    assert len(states) == 3 and TrialState.RUNNING not in states
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done
    trial = done[0]
    for key in ("f1", "accuracy", "mask_f1", "gender_f1", "age_f1", "best_epoch", "seconds",
                "images_per_second", "device", "seed", "val_hash"):
        assert key in trial.user_attrs, key
    assert trial_epochs_run(trial)
    assert trial_versions(trial)["optuna"] == optuna.__version__
    store = smoke["root"] / "artifacts" / "store"
    for name in ("config.yaml", "best.pt", "val_probs.npy", "confusion.png"):
        assert (store / artifact_ids(trial)[name]).is_file(), name
    assert "last.pt" not in artifact_ids(trial)  # a completed trial never resumes
    # trial 0 is the study file's enqueued recipe
    assert study.trials[0].params["optim.lr"] == pytest.approx(1e-2)


@pytest.mark.slow
def test_status_and_best_print_the_trials(smoke):
    status = hpo_cli("status", "--study", "smoke", *smoke["args"][:2])
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "study smoke: 3 trials (f1, maximize)"
    assert "state" in lines[1] and "params" in lines[1]
    assert sum(" COMPLETE " in line or " PRUNED " in line for line in lines) == 3
    assert lines[-1].startswith("best: trial ")
    best = hpo_cli("best", "--study", "smoke", *smoke["args"][:2])
    assert best.returncode == 0, best.stderr
    assert best.stdout.startswith("best trial ") and "optim.lr = " in best.stdout
    studies = hpo_cli("studies", *smoke["args"][:2])
    assert "smoke" in studies.stdout and "trials 3" in studies.stdout


@pytest.mark.slow
def test_resuming_adds_trials(smoke, tiny_data):
    out = hpo_cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"),
                  "--n-trials", "4", *smoke["args"])
    assert out.returncode == 0, out.stderr
    assert "3 trials so far" in out.stdout
    study = optuna.load_study(study_name="smoke", storage=smoke["storage"])
    assert len(study.trials) == 4
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    # a relaunch does not replay the first launch's proposals
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 4
    again = hpo_cli("launch", "--study", "smoke", "--n-trials", "4", *smoke["args"])
    assert again.returncode == 0, again.stderr
    assert "budget met: 4/4 trials finished" in again.stdout and "best trial" in again.stdout
    assert len(optuna.load_study(study_name="smoke", storage=smoke["storage"]).trials) == 4


def test_study_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_trials: 3\nspace:\n  optim.lr: {type: float, low: 1, high: 0.1}\n")
    out = hpo_cli("launch", "--study", str(bad), "--storage", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 1
    assert out.stderr.startswith("Error: ") and "low" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = hpo_cli("status", "--study", "nosuchstudy", "--storage",
                  f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 1 and "no study database at" in out.stderr
    assert "nosuchstudy" in out.stderr and not (tmp_path / "x.db").exists()


def test_status_of_a_study_never_launched(tmp_path):
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/x.db")
    out = hpo_cli("status", "--study", "smoke", "--storage", f"sqlite:///{tmp_path}/x.db")
    assert out.returncode == 1
    assert "study 'smoke' does not exist" in out.stderr and "(studies there: other)" in \
        out.stderr and "hpo launch --study smoke" in out.stderr


def test_unreachable_database_at_start(tiny_data):
    # a real process: no byte of its output may show the password
    out = cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"), "--storage",
              "postgresql://hpo:hunter2@127.0.0.1:1/studies")
    assert out.returncode == 1
    assert "cannot reach the study database at 127.0.0.1:1" in out.stderr
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr


def test_every_command_has_help():
    for command in ("launch", "worker", "studies", "status", "best", "dashboard", "promote",
                    "ensembles", "predict"):
        out = hpo_cli(command, "--help")
        assert out.returncode == 0 and "--storage" in out.stdout or command == "ensembles"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_serves_the_study(smoke):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", "dashboard", "--port", str(port),
                             *smoke["args"]], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        body = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        assert body is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        names = [s["study_name"] for s in body["study_summaries"]]
        assert "smoke" in names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_shell_completion_names_studies_and_ensembles(smoke):
    env = {"_HPO_COMPLETE": "bash_complete", "HPO_STORAGE": smoke["storage"],
           "HPO_ARTIFACTS": str(smoke["root"] / "artifacts")}
    out = hpo_cli(env={**env, "COMP_WORDS": "hpo status --study sm", "COMP_CWORD": "3"})
    assert out.stdout.split() == ["plain,smoke"], out.stderr
    out = hpo_cli(env={**env, "COMP_WORDS": "hpo launch --study ", "COMP_CWORD": "3"})
    assert {"plain,smoke", "plain,effnet"} <= set(out.stdout.split())


@pytest.mark.slow
def test_demo_runs_the_whole_flow(tmp_path):
    """The README's one-command quickstart."""
    out = hpo_cli("demo", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    for line in ("1/4 making demo data", "2/4 study smoke (6 trials)", "3/4 ensemble smoke-greedy",
                 "4/4 submission (84 images)", "done: best trial f1 "):
        assert line in out.stdout, out.stdout
    assert (tmp_path / "demo" / "submission.csv").read_text().startswith("ImageID,ans\n")
    again = hpo_cli("demo", str(tmp_path / "demo"))  # reuses data and study
    assert again.returncode == 0, again.stderr
    assert "(already there)" in again.stdout and "budget met: 6/6" in again.stdout
