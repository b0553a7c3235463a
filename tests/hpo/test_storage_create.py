"""Many processes creating one new storage at the same instant (SQLite file, PostgreSQL
database): every one of them opens it and joins the study, none fails."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest

from tests.conftest import REPO, fresh_postgres_database

OPENERS = 6
_OPEN = """
import sys, time
from hpo.storage import open_storage
from hpo.study import create_or_resume
from hpo.studyfiles import load_study_spec
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # all processes leave this line at one instant
create_or_resume(load_study_spec("smoke"), storage=sys.argv[1], heartbeat_interval=None,
                 train_dir="demo/train")
print("opened")
"""


def _open_at_once(url: str) -> list[subprocess.CompletedProcess]:
    start = time.time() + 4.0  # after every interpreter has imported optuna
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, url, str(start)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HPO_STORAGE": url})
             for _ in range(OPENERS)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate())
            for p in procs]


def _check(url: str) -> None:
    results = _open_at_once(url)
    for r in results:
        assert r.returncode == 0 and "opened" in r.stdout, r.stderr[-2000:]
    study = optuna.load_study(study_name="smoke", storage=url)
    assert len(study.trials) == 1  # the study file's one recipe, enqueued once


def test_processes_creating_one_new_sqlite_file_at_once(tmp_path):
    _check(f"sqlite:///{tmp_path}/new.db")


@pytest.mark.postgres
def test_processes_creating_one_new_postgres_database_at_once(postgres_url):
    with fresh_postgres_database(postgres_url, "hpo_create") as url:
        _check(url)
