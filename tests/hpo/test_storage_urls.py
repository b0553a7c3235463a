"""Storage URLs the storage cannot use: one line each (the real CLI), never a password, nothing
created; and read-only SQLite files: readers read them, writers say what is wrong."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, quote_plus

import optuna
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hpo.errors import StorageError
from hpo.store.storage import open_storage
from hpo.store.url import StorageURL, check_url
from tests.conftest import REPO, cli

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"  # the test server's address (trust auth)

# (URL, the message printed after "Error: ", texts that must not be printed)
BAD_URLS = {
    "raw @ then : in the password": (
        "postgresql://hpo:qqpw@zz:tail99@127.0.0.1:5432/db",
        "storage URL postgresql+psycopg://hpo:***@127.0.0.1:5432/db holds an unencoded '@' "
        "in its user name, password, database or options, so it reads two ways (part of the "
        "password would be taken for the host); write each '@' but the one before the host as "
        "%40 (percent-encode the password)",
        ("qqpw", "zz", "tail99")),
    "non-numeric port": (
        "postgresql://u:qqsecret@host:abc/db",
        "storage URL postgresql+psycopg://u:***@host:abc/db has the port 'abc', but a port is "
        "a number from 1 to 65535; write HOST:PORT with digits (e.g. 127.0.0.1:5432), or leave "
        ":PORT out for the default",
        ("qqsecret",)),
    "unknown database": (
        "foo://x",
        "storage URL foo://x names the database 'foo', but studies live in SQLite or "
        "PostgreSQL only; use sqlite:///hpo.db (a file) or "
        "postgresql://USER:PASSWORD@HOST:5432/DB",
        ()),
    "mysql": (
        "mysql://u:qqsecret@127.0.0.1/db",
        "storage URL mysql://u:***@127.0.0.1/db names the database 'mysql', but studies live "
        "in SQLite or PostgreSQL only; use sqlite:///hpo.db (a file) or "
        "postgresql://USER:PASSWORD@HOST:5432/DB",
        ("qqsecret",)),
    "no scheme": (
        "garbage",
        "storage URL garbage is not a database URL (it has no scheme://); use sqlite:///hpo.db "
        "(a file) or postgresql://USER:PASSWORD@HOST:5432/DB",
        ()),
    "sqlite with two slashes": (
        "sqlite://relative.db",
        "storage URL sqlite://relative.db reads 'relative.db' as a host (two slashes), but a "
        "SQLite URL names a file after three; use sqlite:///relative.db for a path relative to "
        "the current folder, or four slashes for an absolute one (sqlite:////abs/path.db)",
        ()),
    "unknown option": (
        PG_URL + "?bogus=1",
        "storage URL postgresql+psycopg://postgres@127.0.0.1:5432/test?bogus=*** has the "
        "option 'bogus', which the driver does not take; remove it or fix its name; "
        "PostgreSQL takes libpq's connection parameters: sslmode, connect_timeout, "
        "application_name, options, target_session_attrs, ...",
        ()),
    "driver not installed": (
        "postgresql+psycopg2://u:qqsecret@127.0.0.1/db",
        "storage URL postgresql+psycopg2://u:***@127.0.0.1/db names the driver 'psycopg2', "
        "which is not installed (No module named 'psycopg2'); install it (pip install "
        "psycopg2-binary) or use postgresql:// (no +driver)",
        ("qqsecret",)),
}
# also through `hpo status` (the same check, through another reader's door)
STATUS_TOO = ("raw @ then : in the password", "non-numeric port", "sqlite with two slashes",
              "unknown option")


def _one_error_line(out) -> str:
    """The one line a refused command prints (after ``Error: ``)."""
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    return lines[0][len("Error: "):]


def _skip_when_installed(case: str) -> None:
    if case == "driver not installed" and importlib.util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed here, so that URL is usable")


@pytest.mark.parametrize("case", list(BAD_URLS))
def test_a_bad_url_is_one_line_before_anything_is_created(case, tmp_path):
    _skip_when_installed(case)
    url, message, secrets = BAD_URLS[case]
    commands = [("studies",)] + ([("status", "--study", "x")] if case in STATUS_TOO else [])
    for command in commands:
        out = cli(*command, "--storage", url, cwd=tmp_path, timeout=120)
        line = _one_error_line(out)
        assert line == message, (command, line)
        assert not any(s in out.stdout + out.stderr for s in secrets), out.stderr
    assert list(tmp_path.iterdir()) == []  # no database file, lock or folder appeared
    assert message in DOC, "docs/errors.md lacks the message, exactly as printed"


def test_a_bad_url_in_the_environment_is_refused_the_same_way(tmp_path):
    url, message, secrets = BAD_URLS["raw @ then : in the password"]
    for command in (("studies",), ("launch", "--study", "smoke")):  # a reader and a writer
        out = cli(*command, env={"HPO_STORAGE": url}, cwd=tmp_path, timeout=120)
        assert _one_error_line(out) == message, command
        assert not any(s in out.stdout + out.stderr for s in secrets), out.stderr
    assert list(tmp_path.iterdir()) == []
    out = cli("studies", env={"HPO_STORAGE": "garbage"}, cwd=tmp_path, timeout=120)
    assert _one_error_line(out) == BAD_URLS["no scheme"][1]


@pytest.mark.parametrize("case", list(BAD_URLS))
def test_open_storage_refuses_the_same_urls_before_connecting(case, tmp_path, monkeypatch):
    _skip_when_installed(case)
    url, message, _ = BAD_URLS[case]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("url", "read"), [
    ("sqlite:///hpo.db", "hpo.db"),
    ("sqlite:///:memory:", ":memory:"),
    ("postgresql://u:p%40ss@127.0.0.1:5432/db?sslmode=disable&application_name=hpo", "db"),
    ("postgresql://user@server:pw@server.example.com/db", "db"),  # an Azure-style user name
    ("postgresql:///db?host=/var/run/postgresql", "db"),
    ("sqlite:///file:hpo.db?mode=ro&uri=true", "file:hpo.db"),
])
def test_good_urls_pass_the_check(url, read):
    assert check_url(url).database == read


@pytest.mark.parametrize(("url", "says"), [
    ("postgresql://u@127.0.0.1:1/db?password=qq@ss", "unencoded '@'"),  # host 'ss' otherwise
    ("postgresql://host:5432/db?password=qq@ss", "unencoded '@'"),
    ("postgresql://u@h:99999/db", "has the port '99999'"),
    ("postgresql://u:qqsecret@a..b:1/db", "has the host 'a..b', which is not a host name"),
    ("postgresql://u@h1:5432,h2:5433/db", "?host=h1:5432&host=h2:5433"),
    ("postgresql+nosuch://h/db", "names the driver 'nosuch', which SQLAlchemy does not know"),
    ("postgresql+asyncpg://h/db", "names the asyncio driver 'asyncpg'"),
    ("postgresql://u@h/db?sslmod=require", "(did you mean 'sslmode'?)"),
    ("postgresql://u@h/db?passwrd=qqsecret", "?passwrd=*** has the option 'passwrd'"),
    ("sqlite:///x.db?mode=ro", "with uri=true also mode"),
    ("sqlite://u:qqsecret@/x.db", "has a user name, password or port"),
    ("postgresql://u:qq\nsecret@h/db", "holds a control character"),
])
def test_more_refusals(url, says):
    with pytest.raises(StorageError) as info:
        check_url(url)
    message = str(info.value)
    assert says in message and "qq" not in message and "\n" not in message, message


def test_a_file_that_is_not_a_sqlite_database(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello\n")
    message = ("cannot open the SQLite study database sqlite:///notes.txt: file is not a "
               "database; check that it is a SQLite file and that it and its folder can be "
               "read, or fix --storage / HPO_STORAGE")
    out = cli("studies", "--storage", "sqlite:///notes.txt", cwd=tmp_path, timeout=120)
    assert _one_error_line(out) == message
    assert message in DOC
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as info:  # a writer's open
        open_storage("sqlite:///notes.txt")
    assert str(info.value) == message
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "hello\n"


# ---------------------------------------------------------------------------------------------
# passwords never shown, whatever they hold

PASSWORD = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=4,
                   max_size=24)
MISSING = Path(tempfile.gettempdir()) / "hpo-no-such-folder"  # nothing is created in it
TEMPLATES = [
    "postgresql://user:{}@127.0.0.1:1/db",
    "postgresql+psycopg://user:{}@127.0.0.1:1/db?sslmode=disable",
    "postgresql://user:{}@127.0.0.1:1/db?bogus=1",
    "postgresql://user:{}@127.0.0.1:abc/db",
    "postgresql://user@127.0.0.1:1/db?password={}",
    "postgresql://user@127.0.0.1:1/db?password={}&application_name=hpo",
    "mysql://user:{}@127.0.0.1:1/db",
    f"sqlite:///{MISSING}/x.db?password={{}}",
    "sqlite://user:{}@/x.db",
    "sqlite://user:{}@host/x.db",
]
ENCODINGS = {"raw": lambda p: p, "quote": lambda p: quote(p, safe=""), "quote_plus": quote_plus}


def _fixed_text() -> str:
    """The text of every message that holds no password (a password inside it is not judged)."""
    texts = []
    for template in TEMPLATES + ["postgresql://user:{}@127.0.0.1:1/db?x=1@y",
                                 "postgresql+psycopg2://user:{}@h/db", "garbage{}"]:
        try:
            open_storage(template.format("QQQQ"), heartbeat_interval=None)
        except StorageError as exc:
            texts.append(str(exc))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def fixed_text() -> str:
    return _fixed_text()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pw=PASSWORD, template=st.sampled_from(TEMPLATES),
       encoding=st.sampled_from(sorted(ENCODINGS)))
@example(pw="p@ss:w0rd", template=TEMPLATES[0], encoding="raw")
@example(pw="qq@zz@127.0.0.1", template=TEMPLATES[0], encoding="raw")
@example(pw="a/b?c#d&e=f%g", template=TEMPLATES[0], encoding="raw")
@example(pw="s3c@r&token=x", template=TEMPLATES[4], encoding="raw")
@example(pw="abc@127.0.0.1", template=TEMPLATES[5], encoding="raw")
@example(pw="{SCHEMA_VERSION}", template=TEMPLATES[0], encoding="raw")
def test_no_password_in_any_message_or_handle(pw, template, encoding, fixed_text):
    written = ENCODINGS[encoding](pw)
    url = template.format(written)
    rest = StorageURL(template.format("")).url  # the URL's other text, as the handle has it
    # What must not show: the password as given and as written, and (raw) each of its tails
    # after an '@', which SQLAlchemy would take for the host. One that is part of the URL's
    # other text, or of a message's fixed text, cannot be judged.
    tails = [written[i + 1:] for i, c in enumerate(written) if c == "@"]
    hidden = [t for t in [pw, written, *tails] if len(t) >= 4]
    assume(pw not in rest and written not in rest)
    assume(pw not in fixed_text and written not in fixed_text)
    hidden = [t for t in hidden if t not in rest and t not in fixed_text]
    handle = StorageURL(url)
    for shown in (str(handle), repr(handle), handle.masked):
        assert not any(t in shown for t in hidden), shown
    try:
        open_storage(handle, heartbeat_interval=None)  # a closed port: refused at once
    except StorageError as exc:
        message = str(exc)
        assert not any(t in message for t in hidden), message
        assert "\n" not in message, message
    else:
        pytest.fail(f"{handle} opened")
    assert not MISSING.exists()


# ---------------------------------------------------------------------------------------------
# read-only SQLite files: readers read them, writers say so (nothing is written)


def _make_study_database(folder: Path) -> str:
    url = f"sqlite:///{folder}/hpo.db"
    store = open_storage(url, heartbeat_interval=None)
    study = optuna.create_study(study_name="x", storage=store)
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    store.engine.dispose()
    for leftover in folder.glob(".hpo.db.*"):  # the creation lock: the mount holds hpo.db only
        leftover.unlink()
    return url


@contextlib.contextmanager
def _read_only_mount(folder: Path):
    """``folder`` as a tmpfs of its own, turned read-only after the block's setup (mount(8))."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip("a read-only file system needs mount(8) with CAP_SYS_ADMIN (root in a "
                    f"privileged container): {mounted.stderr.strip()}")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _assert_readers_read_it(url: str, tmp_path: Path) -> None:
    out = cli("studies", "--storage", url, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "x " in out.stdout and "trials 2" in out.stdout, out.stderr
    out = cli("status", "--study", "x", "--storage", url, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "COMPLETE" in out.stdout, out.stderr


def _assert_writers_refused(url: str, db: Path, reason: str, tmp_path: Path) -> None:
    message = (f"the SQLite study database {db} is read-only ({reason}), and this command "
               "writes to it; copy it to a writable folder and point --storage / HPO_STORAGE "
               "at the copy, or make it writable (reading commands such as hpo status and hpo "
               "studies read it as it is)")
    out = cli("delete", "--study", "x", "--yes", "--storage", url, cwd=tmp_path, timeout=120)
    assert _one_error_line(out) == message
    assert message.replace(str(db), "/mnt/ro/hpo.db") in DOC.replace(
        "(it is on a read-only file system)", f"({reason})")
    with pytest.raises(StorageError) as info:  # hpo launch and hpo worker open it so
        open_storage(url)
    assert str(info.value) == message


def test_a_sqlite_file_on_a_read_only_file_system(tmp_path):
    folder = tmp_path / "ro"
    with _read_only_mount(folder) as make_read_only:
        url = _make_study_database(folder)
        before = (folder / "hpo.db").read_bytes()
        make_read_only()
        assert sorted(p.name for p in folder.iterdir()) == ["hpo.db"]  # no -wal: immutable
        _assert_readers_read_it(url, tmp_path)
        _assert_writers_refused(url, folder / "hpo.db", "it is on a read-only file system",
                                tmp_path)
        with pytest.raises(StorageError) as info:
            open_storage(f"sqlite:///{folder}/new.db")
        message = (f"cannot create the SQLite study database {folder}/new.db: it is on a "
                   "read-only file system; point --storage / HPO_STORAGE at a file in a "
                   "writable folder")
        assert str(info.value) == message
        assert message.replace(str(folder), "/mnt/ro") in DOC
        assert sorted(p.name for p in folder.iterdir()) == ["hpo.db"]
        assert (folder / "hpo.db").read_bytes() == before


def test_an_immutable_sqlite_file(tmp_path):
    url = _make_study_database(tmp_path)
    db = tmp_path / "hpo.db"
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here (needs CAP_LINUX_IMMUTABLE and ext4/xfs)")
    before = db.read_bytes()
    try:
        assert not os.access(db, os.W_OK)  # even for root
        _assert_readers_read_it(url, tmp_path)
        _assert_writers_refused(url, db, "the file is not writable by this user", tmp_path)
        assert db.read_bytes() == before
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert len(optuna.load_study(study_name="x", storage=url).trials) == 2
