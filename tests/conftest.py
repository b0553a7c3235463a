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
    """Run ``hpo ARGS`` as a real subprocess (``python -m hpo.cli``) from the repository root.

    For what needs a process of its own: signals and kills, the entry point itself, every byte
    a process prints (no password in any output). Everything else: :func:`hpo_cli`.
    """
    import os
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "hpo.cli", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


# A fresh interpreter's own warning filters (no -W options), first in `python -m hpo.cli`; pytest
# puts "always" for deprecations in their place.
_PROCESS_WARNING_FILTERS = (("default", DeprecationWarning, "__main__"),
                            ("ignore", DeprecationWarning, ""),
                            ("ignore", PendingDeprecationWarning, ""),
                            ("ignore", ImportWarning, ""), ("ignore", ResourceWarning, ""))


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (CliRunner's, in a call)."""

    def write(self, text: str) -> int:
        import sys

        return sys.stderr.write(text)

    def flush(self) -> None:
        import sys

        sys.stderr.flush()


def hpo_cli(*args: str, env: dict | None = None, cwd=None):
    """Run ``hpo ARGS`` in this process (click's CliRunner), shaped and as strict as :func:`cli`.

    For the calls whose behaviour needs no process of its own (refusals, reads, promote,
    predict, gc, launches judged by their outcome): it saves an interpreter start and the
    torch import per call. See :func:`_in_process` for what it shows and puts back.
    """
    from hpo.cli import main

    return _in_process(main, "hpo", args, env=env, cwd=cwd)


def trainer_cli(*args: str, env: dict | None = None, cwd=None):
    """Run ``python -m trainer ARGS`` in this process (its ``main``), shaped like :func:`cli`."""
    import click

    @click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def trainer_main(argv):
        import sys

        from trainer.__main__ import main

        sys.exit(main(list(argv)))

    return _in_process(trainer_main, "python -m trainer", args, env=env, cwd=cwd)


def _in_process(command, prog_name: str, args, *, env: dict | None, cwd):
    """Invoke a click command as a process would run it; a ``subprocess.CompletedProcess``.

    What a real process would have shown comes back:

    - an unexpected exception's traceback ends ``stderr`` (as Python prints it when a process
      dies of one), so "no Traceback" and "one line" checks still catch it;
    - file descriptors 1 and 2 are captured too (``capture="fd"``): the output of the worker
      processes ``hpo launch`` starts, and C-level output, land in ``stdout`` / ``stderr``
      (after the command's own output);
    - the command's log records reach ``stderr`` through the handler its own
      ``logging.basicConfig`` installs (pytest's root handlers are set aside meanwhile),
      Optuna's handler writes there too, and warnings are printed there under a fresh
      interpreter's filters instead of being recorded by pytest;
    - ``env`` applies to this call only (a value None unsets a variable); ``cwd`` (default:
      the repository root, like :func:`cli`) is entered and left.

    What the command changes in this process is put back afterwards: the SIGINT/SIGTERM
    handlers (``hpo worker`` installs its own), the root logger's handlers and level, loggers a
    logging configuration disabled, Optuna's verbosity (``quiet_optuna``) and handler, the
    working directory; and the storages it left behind are collected, so no SQLite connection
    outlives the call.
    """
    import gc
    import os
    import signal
    import subprocess
    import sys
    import traceback
    import warnings

    import optuna
    from click.testing import CliRunner

    signals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    disabled = {name: logger.disabled for name, logger in logging.root.manager.loggerDict.items()
                if isinstance(logger, logging.Logger)}
    optuna_streams = [(h, h.stream) for h in logging.getLogger("optuna").handlers
                      if isinstance(h, logging.StreamHandler)]
    verbosity = optuna.logging.get_verbosity()
    old_cwd = os.getcwd()

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    root.handlers.clear()  # a fresh process has none: the command's basicConfig adds its own
    try:
        for handler, _ in optuna_streams:
            handler.setStream(_CurrentStderr())
        os.chdir(cwd or REPO)
        with warnings.catch_warnings():
            for action, category, module in reversed(_PROCESS_WARNING_FILTERS):
                warnings.filterwarnings(action, category=category, module=module)
            warnings.showwarning = show
            result = CliRunner(capture="fd").invoke(command, [str(a) for a in args], env=env,
                                                    prog_name=prog_name, catch_exceptions=True)
    finally:
        os.chdir(old_cwd)
        for sig, handler in signals.items():
            signal.signal(sig, handler)
        for handler in root.handlers:
            if handler not in root_handlers:
                handler.close()
        root.handlers[:] = root_handlers
        root.setLevel(root_level)
        for name, was in disabled.items():
            logging.getLogger(name).disabled = was
        for handler, stream in optuna_streams:
            handler.setStream(stream)
        optuna.logging.set_verbosity(verbosity)
        gc.collect()
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess([prog_name, *args], result.exit_code, result.stdout,
                                       stderr)


@pytest.fixture(scope="session")
def smoke_launch(tiny_data, tmp_path_factory) -> dict:
    """``hpo launch`` of the shipped smoke study, 3 trials on the tiny data, once per session.

    Its output (``out``) is shared; the study is not: a test module takes its own copy with
    :func:`copy_launch` before it adds anything.
    """
    root = tmp_path_factory.mktemp("smoke-launch")
    out = hpo_cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"),
                  "--n-trials", "3", "--storage", f"sqlite:///{root}/hpo.db", "--artifacts",
                  str(root / "artifacts"))
    return {"root": root, "out": out}


def copy_launch(launch: dict, folder: Path) -> dict:
    """A copy of a launched study (its SQLite database and artifact folder) in ``folder``."""
    import shutil

    storage = copy_sqlite(launch["root"] / "hpo.db", folder / "hpo.db")
    shutil.copytree(launch["root"] / "artifacts", folder / "artifacts")
    return {"storage": storage, "root": folder,
            "args": ["--storage", storage, "--artifacts", str(folder / "artifacts")]}


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
