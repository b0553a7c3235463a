"""Shared fixtures: one tiny synthetic dataset in the competition layout, and a tiny config."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from trainer.config import config_from_dict
from trainer.synth import make_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def copy_sqlite(src: Path, dst: Path) -> str:
    """Copy a SQLite study database with SQLite's backup API; returns the copy's storage URL.

    Never copy it as a file: in WAL mode recent commits live in the -wal file, and opening and
    closing the database file in a process that holds connections to it drops that process's
    POSIX locks, so another process may checkpoint and delete the WAL under them ("database
    disk image is malformed").
    """
    with contextlib.closing(sqlite3.connect(src)) as source, \
            contextlib.closing(sqlite3.connect(dst)) as target:
        source.backup(target)
    return f"sqlite:///{dst}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """18 people x 7 images at 64x48 in train/ and 4 eval people, made once per session."""
    root = tmp_path_factory.mktemp("tiny")
    return make_dataset(root, people=18, eval_people=4, size=(64, 48), seed=0)


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def tiny_raw(train_dir, out_dir, cache, **over) -> dict:
    """A config dict that trains timm's test_resnet for 1 epoch on the CPU in seconds."""
    raw = {
        "data": {"train_dir": str(train_dir), "img_size": [32, 24], "cache_dir": str(cache),
                 "val_fraction": 0.34, "num_workers": 0},
        "model": {"name": "test_resnet", "pretrained": False},
        "optim": {"name": "adamw", "lr": 3e-3},
        "epochs": 1, "batch_size": 16, "device": "cpu", "output_dir": str(out_dir),
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[key] = value
    return raw


@pytest.fixture()
def tiny_cfg(tiny_data, tmp_path):
    def make(**over):
        return config_from_dict(tiny_raw(tiny_data / "train", tmp_path / "run", tmp_path / "cache",
                                         **over))
    return make


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-cache")


@pytest.fixture(autouse=True)
def _loggers_enabled():
    # Optuna's schema migrations (alembic's env.py) call logging.config.fileConfig, which
    # disables every logger that exists at that moment; a test of our warnings must see them.
    for name in ("trainer", "hpo"):
        logging.getLogger(name).disabled = False


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, _session_cache):
    # Tests never reach a model hub (fail fast instead of hanging on the network) and never
    # write to the user's cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HPO_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.setenv("HPO_CACHE_DIR", str(_session_cache))


def cli(*args: str, env: dict | None = None, timeout: float = 600, cwd=None):
    """Run ``hpo ARGS`` as a real subprocess (``python -m hpo.cli``) from the repository root."""
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "hpo.cli", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this session on the server $HPO_TEST_POSTGRES_URL names.

    Skipped when the variable is unset (CI sets it); dropped at the end.
    """
    import os
    import uuid

    base = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("HPO_TEST_POSTGRES_URL is not set")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    admin = dict(host=url.host, port=url.port or 5432, user=url.username,
                 password=url.password, dbname=url.database or "postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name, drivername="postgresql+psycopg").render_as_string(
        hide_password=False)
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_postgres_database(base_url: str, prefix: str = "hpo_own"):
    """A new, empty database on the server ``base_url`` names; yields its URL, drops it after."""
    import uuid

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = dict(host=url.host, port=url.port or 5432, user=url.username,
                 password=url.password, dbname="postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def own_postgres_url(postgres_url):
    """A PostgreSQL database of this test module's own (created empty, dropped at the end), for
    tests that list every study in the storage."""
    with fresh_postgres_database(postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def faults_postgres():
    """A PostgreSQL cluster of the tests' own (``15/faults``, port 5433, created and started
    when missing) that fault tests may restart and stop; the shared ``main`` cluster is never
    touched. Skipped when this machine cannot run one (not root, no pg_createcluster)."""
    from bench.faults_pg import cluster_problem, ensure_cluster

    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    cluster = ensure_cluster()
    yield cluster
    if not cluster.ready():  # a failed test may have left it stopped
        cluster.start()
