"""Many processes creating one new storage at the same instant (SQLite file, PostgreSQL
database): every one of them opens it and joins the study, none fails. Half of them first
read it as ``hpo launch`` without ``--data`` and ``hpo worker`` do (``peek`` for the recorded
data folder), which opens the storage read-only while the others create its schema."""
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
from hpo.store.storage import open_storage
from hpo.run.study import create_or_resume, peek
from hpo.studyfile.files import load_study_spec
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # all processes leave this line at one instant
if sys.argv[3] == "read-first":
    peek("smoke", storage=sys.argv[1])
create_or_resume(load_study_spec("smoke"), storage=sys.argv[1], heartbeat_interval=None,
                 train_dir="demo/train")
print("opened")
"""


def _open_at_once(url: str) -> list[subprocess.CompletedProcess]:
    start = time.time() + 4.0  # after every interpreter has imported optuna
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN, url, str(start),
                               "read-first" if i % 2 else "create"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HPO_STORAGE": url})
             for i in range(OPENERS)]
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


def test_a_reader_waits_for_a_storage_being_created_instead_of_stamping_it(tmp_path):
    """The moment the issue caught: the tables exist, the creator has not stamped the schema's
    version yet. A reader (peek, as hpo launch and hpo worker do first) must not stamp it too."""
    import threading

    import sqlalchemy

    from hpo.run.study import peek
    from hpo.store.storage import open_storage

    url = f"sqlite:///{tmp_path}/half.db"
    open_storage(url, heartbeat_interval=None).engine.dispose()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        query = sqlalchemy.text("SELECT version_num FROM alembic_version")
        (version,) = conn.execute(query).one()
        conn.execute(sqlalchemy.text("DELETE FROM alembic_version"))  # as if mid-creation
    stamped = threading.Event()

    def creator_finishes() -> None:
        time.sleep(0.5)
        with engine.begin() as conn:
            stamp = sqlalchemy.text("INSERT INTO alembic_version VALUES (:v)")
            conn.execute(stamp, {"v": version})
        stamped.set()

    thread = threading.Thread(target=creator_finishes)
    thread.start()
    try:
        assert peek("smoke", storage=url) is None  # no such study, and no error
        assert stamped.is_set()  # it waited for the creator rather than stamping itself
    finally:
        thread.join()
        engine.dispose()
