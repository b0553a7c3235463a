from __future__ import annotations

import sqlite3

import pytest

from hpo.errors import StorageError
from hpo.store.storage import mask_url, open_storage
from hpo.store.url import StorageURL, as_storage, resolve_storage


def test_default_and_environment(monkeypatch):
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert resolve_storage(None) == StorageURL("sqlite:///hpo.db", explicit=False)
    monkeypatch.setenv("HPO_STORAGE", "postgresql://u:p@db:5432/hpo")
    env = resolve_storage(None)
    assert env.url == "postgresql+psycopg://u:p@db:5432/hpo" and not env.explicit
    flag = resolve_storage("sqlite:///x.db")
    assert flag.url == "sqlite:///x.db" and flag.explicit
    assert resolve_storage(None, environ={}).url == "sqlite:///hpo.db"


def test_a_handle_never_shows_its_password():
    handle = StorageURL("postgresql://hpo:s3cret@db:5432/x")
    assert "s3cret" not in str(handle) and "s3cret" not in repr(handle)
    assert "s3cret" not in f"{handle} {[handle]} {handle!r}"
    assert handle.masked == "postgresql+psycopg://hpo:***@db:5432/x"


def test_below_the_edge_nothing_reads_the_environment(monkeypatch):
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///from-env.db")
    assert as_storage("sqlite:///given.db").url == "sqlite:///given.db"
    with pytest.raises(TypeError, match="resolve_storage"):
        as_storage(None)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://hpo:s3cr%40t@db.lan:5432/studies",
     "postgresql+psycopg://hpo:***@db.lan:5432/studies"),
    ("postgresql://hpo@db/x", "postgresql://hpo@db/x"),
    ("sqlite:///hpo.db", "sqlite:///hpo.db"),
    ("weird://a:b@c", "weird://a:***@c"),
    ("postgresql://u:p@ss@db/x", "postgresql://u:***@db/x"),
    ("postgresql://u@db/x?password=s3cr3t&sslmode=require",
     "postgresql://u@db/x?password=***&sslmode=require"),
])
def test_passwords_are_masked(url, shown):
    assert mask_url(url) == shown


def test_sqlite_gets_wal_and_a_busy_timeout(tmp_path):
    db = tmp_path / "s.db"
    storage = open_storage(f"sqlite:///{db}")
    assert storage.engine.url.database == str(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with storage.engine.connect() as conn:
        timeout_ms = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert timeout_ms >= 30000


def test_sqlite_in_a_missing_folder(tmp_path):
    with pytest.raises(StorageError, match="folder .*nope does not exist; create it or fix"):
        open_storage(f"sqlite:///{tmp_path}/nope/s.db")


def test_unreachable_database_names_host_and_masks_password():
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://hpo:hunter2@127.0.0.1:1/studies")
    message = str(info.value)
    assert message.startswith("cannot reach the study database at 127.0.0.1:1 "
                              "(postgresql+psycopg://hpo:***@127.0.0.1:1/studies)")
    assert message.endswith("start the database or fix --storage / HPO_STORAGE")
    assert "hunter2" not in message and "\n" not in message


def test_unreachable_database_read_only_is_one_masked_line():
    # a reader's open skips table creation: Optuna wraps the lost connection in its own error
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://hpo:hunter2@127.0.0.1:1/studies?password=qqsecretqq",
                     heartbeat_interval=None, read_only=True)
    message = str(info.value)
    assert message.startswith("cannot reach the study database at 127.0.0.1:1 "
                              "(postgresql+psycopg://hpo:***@127.0.0.1:1/studies"
                              "?password=***)")
    assert "hunter2" not in message and "qqsecretqq" not in message and "\n" not in message


def test_unencoded_at_in_the_password_is_refused_without_showing_it():
    # SQLAlchemy would take "qqsecretqq@127.0.0.1" for the host (and a resolver error shows it)
    with pytest.raises(StorageError) as info:
        open_storage("postgresql://hpo:pw@qqsecretqq@127.0.0.1:1/studies")
    message = str(info.value)
    assert "qqsecretqq" not in message and "hpo:***@127.0.0.1:1/studies" in message
    assert "unencoded '@'" in message and "%40" in message


def test_refused_login_is_masked(postgres_url):
    from sqlalchemy.engine import make_url

    bad = make_url(postgres_url).set(username="nobody_here", password="hunter2")
    with pytest.raises(StorageError) as info:
        open_storage(bad.render_as_string(hide_password=False))
    message = str(info.value)
    assert "hunter2" not in message and "***" in message and "\n" not in message
    assert "nobody_here" in message


def test_not_a_url():
    with pytest.raises(StorageError, match="is not a database URL"):
        open_storage("hpo.db")


@pytest.mark.postgres
def test_a_study_shows_its_storage_with_the_password_masked(postgres_url):
    import optuna

    from hpo.store.storage import storage_shown

    url = postgres_url.replace("postgres@", "postgres:qqhunter2qq@", 1)  # trust ignores it
    study = optuna.create_study(storage=open_storage(url, heartbeat_interval=None))
    try:
        shown = storage_shown(study)
        assert "qqhunter2qq" not in shown and ":***@" in shown, shown
    finally:
        optuna.delete_study(study_name=study.study_name, storage=open_storage(url))
