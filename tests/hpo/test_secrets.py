"""Secrets in storage URLs never reach the screen: mask_url, the CLI, and the workers' argv."""
from __future__ import annotations

import os
import sys
import types
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from hpo.run.launcher import Launch, _worker_argv, run_workers
from hpo.store.secrets import is_secret_parameter, mask_url
from hpo.store.url import StorageURL
from tests.conftest import cli

CASES = [
    # the user info's password, whatever it holds
    ("postgresql://u:hunter2@db:5432/hpo", "postgresql://u:***@db:5432/hpo"),
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:a@b@c@host:5432/db", "postgresql://u:***@host:5432/db"),
    ("postgresql://u:p:w/x?y#z@host:5432/db", "postgresql://u:***@host:5432/db"),
    ("postgresql://u:p%40ss%2Fw@host/db", "postgresql://u:***@host/db"),
    ("postgresql+psycopg://:only-a-password@host/db", "postgresql+psycopg://:***@host/db"),
    ("postgresql://user@server:pw@server.example.com/db",  # Azure-style user@server
     "postgresql://user@server:***@server.example.com/db"),
    # secret query parameters, any case, raw or percent-encoded
    ("postgresql://u@h/db?password=qq", "postgresql://u@h/db?password=***"),
    ("postgresql://u@h/db?PassWord=qq&sslmode=require",
     "postgresql://u@h/db?PassWord=***&sslmode=require"),
    ("postgresql://u@h/db?sslpassword=a&passwd=b&pass=c&pwd=d",
     "postgresql://u@h/db?sslpassword=***&passwd=***&pass=***&pwd=***"),
    ("postgresql://u@h/db?secret=a&token=b&api_key=c&apikey=d&access_token=e",
     "postgresql://u@h/db?secret=***&token=***&api_key=***&apikey=***&access_token=***"),
    ("postgresql://u@h/db?my_Client_Secret=a&refreshToken=b&db_password_2=c",
     "postgresql://u@h/db?my_Client_Secret=***&refreshToken=***&db_password_2=***"),
    ("postgresql://u@h/db?pass%77ord=a&%70assword=b&password=s3%40cr%26t",
     "postgresql://u@h/db?pass%77ord=***&%70assword=***&password=***"),
    ("postgresql://u@h:5432/db?password=p@ss&sslmode=require",
     "postgresql://u@h:5432/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?password=a&b&c&application_name=x",
     "postgresql://u@h/db?password=***&application_name=x"),
    ("postgresql://u@h/db?password=a#b?c", "postgresql://u@h/db?password=***"),
    ("postgresql://u:pw@h/db?password=x", "postgresql://u:***@h/db?password=***"),
    ("mssql+pyodbc:///?odbc_connect=DRIVER%3Dx%3BPWD%3Dhunter2",
     "mssql+pyodbc:///?odbc_connect=***"),
    # paths are not secrets
    ("postgresql://u@h/db?passfile=/home/u/.pgpass&sslkey=/k/client.key&sslcert=/k/c.crt"
     "&sslrootcert=/k/root.crt",
     "postgresql://u@h/db?passfile=/home/u/.pgpass&sslkey=/k/client.key&sslcert=/k/c.crt"
     "&sslrootcert=/k/root.crt"),
    # nothing to hide: kept exactly as written
    ("postgresql://hpo@db.lan:5432/studies?sslmode=require&application_name=hpo",
     "postgresql://hpo@db.lan:5432/studies?sslmode=require&application_name=hpo"),
    ("postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write",
     "postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write"),
    ("postgresql://[::1]:5432/db", "postgresql://[::1]:5432/db"),
    ("postgresql:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql"),
    ("postgresql://u:@h/db", "postgresql://u:@h/db"),
    ("sqlite:///hpo.db", "sqlite:///hpo.db"),
    ("sqlite:////srv/runs/team@lab:2/hpo.db", "sqlite:////srv/runs/team@lab:2/hpo.db"),
    ("sqlite:///C:\\runs\\hpo.db?mode=ro", "sqlite:///C:\\runs\\hpo.db?mode=ro"),
    ("sqlite://", "sqlite://"),
    # not URLs SQLAlchemy reads: masked all the same
    ("hpo.db", "hpo.db"),
    ("", ""),
    ("weird://a:b@c", "weird://a:***@c"),
    ("postgresql:/u:hunter2@h/db", "postgresql:***@h/db"),
    ("postgresql://u:hunter2@", "postgresql://u:***@"),
    ("u:hunter2@h/db?token=t0k3n", "u:***@h/db?token=***"),
]


@pytest.mark.parametrize(("url", "shown"), CASES)
def test_mask_url(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(("name", "secret"), [
    ("password", True), ("SSLPASSWORD", True), ("passwd", True), ("pass", True),
    ("secret", True), ("token", True), ("api_key", True), ("apikey", True),
    ("access_token", True), ("x-Secret-y", True), ("pass%77ord", True),
    ("passfile", False), ("sslkey", False), ("sslcert", False), ("sslmode", False),
    ("host", False), ("user", False), ("application_name", False),
])
def test_secret_parameter_names(name, secret):
    assert is_secret_parameter(name) is secret


def test_the_query_password_of_sqlalchemy_urls_is_hidden_too():
    # SQLAlchemy's own rendering hides only the user info's password
    from sqlalchemy.engine import make_url

    url = "postgresql+psycopg://u:pw@h/db?password=qq"
    assert "qq" in make_url(url).render_as_string(hide_password=True)
    assert "qq" not in mask_url(url) and "pw" not in mask_url(url)


def test_never_raises_on_odd_input():
    not_a_string = types.SimpleNamespace()
    assert mask_url(not_a_string) == str(not_a_string)
    for odd in ["\x00@\x00:", "://", "@@@", "?&&==", "a://b:c@d?e=%zz&password=%"]:
        assert isinstance(mask_url(odd), str)
    assert "%" not in mask_url("a://b@d?password=%").split("=", 1)[1]


_PASSWORDS = st.one_of(  # printable ASCII, and any printable character
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=4, max_size=40),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=4, max_size=20))
_SPECIALS = st.text(st.sampled_from("@:/?#%&=+ abc1"), min_size=4, max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_PASSWORDS, _SPECIALS))
@example("p@ss:w/rd?x#y")
@example("@@@@")
@example("x/db?a=b@")
@example("a@b/c?d=e")
def test_a_password_in_the_user_info_never_shows(pw):
    template = "postgresql://user:{}@host:5432/db"
    for written in {pw, quote(pw, safe=""), quote_plus(pw)}:
        _assert_hidden(template, pw, written)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_PASSWORDS, _SPECIALS))
@example("p@ss&sslmode=require")
@example("a#b?c@d")
def test_a_password_in_the_query_never_shows(pw):
    for written in {pw, quote(pw, safe=""), quote_plus(pw)}:
        for template in ("postgresql://user@host:5432/db?password={}",
                         "postgresql://user@host:5432/db?sslmode=require&password={}",
                         "postgresql+psycopg://user:{}@host/db?password={}"):
            _assert_hidden(template, pw, written)


def _assert_hidden(template: str, pw: str, written: str) -> None:
    """Neither the password nor the form written into the URL shows in mask_url's output."""
    # a password that is part of the URL's other text ("host", "5432") cannot be judged
    assume(pw not in template and written not in template)
    shown = mask_url(template.replace("{}", written))
    assert pw not in shown and written not in shown, shown
    assert shown.startswith(template.partition(":")[0] + "://user"), shown


def test_cli_error_line_shows_no_password():
    out = cli("studies", "--storage",
              "postgresql://postgres:s3cr3t-p%40ss@127.0.0.1:1/db?password=qqsecretqq",
              timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "s3cr3t" not in text and "qqsecretqq" not in text, text
    assert "Traceback" not in text, text
    assert "cannot reach the study database at 127.0.0.1:1" in text, text
    assert "postgres:***@127.0.0.1:1/db?password=***" in text, text


def test_cli_refuses_an_unencoded_at_without_showing_the_password():
    out = cli("studies", "--storage", "postgresql://postgres:pw@qqsecretqq@127.0.0.1:1/db",
              timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "qqsecretqq" not in text, text
    assert "unencoded '@'" in text and "%40" in text, text


@pytest.mark.postgres
def test_cli_on_a_real_server_with_a_query_password(postgres_url):
    from hpo.store.storage import open_storage

    open_storage(postgres_url).engine.dispose()  # the schema, so `studies` reads a database
    url = postgres_url + ("&" if "?" in postgres_url else "?") + "password=qqsecretqq"
    out = cli("studies", "--storage", url, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text  # trust authentication ignores the password
    assert "qqsecretqq" not in text and "password=***" in text, text


def _launch(tmp_path, url: str) -> Launch:
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: s\n")
    spec = types.SimpleNamespace(path=str(spec_file), name="s", metric="val_f1")
    return Launch(spec=spec, storage=StorageURL(url), train_dir=str(tmp_path / "data"),
                  study=None, target=2, heartbeat=30, n_trials=2, timeout=60.0,
                  artifacts=str(tmp_path / "art"))


def test_workers_get_the_storage_in_their_environment_not_argv(tmp_path, monkeypatch):
    url = "postgresql+psycopg://u:qqsecretqq@db:5432/hpo?sslpassword=qqsslqq"
    launch = _launch(tmp_path, url)
    argv = _worker_argv(launch)
    assert "--storage" not in argv
    assert not any("qqsecretqq" in a or "qqsslqq" in a or "db:5432" in a for a in argv), argv

    started = []

    class FakeWorker:
        def __init__(self, argv, env, **kwargs):
            started.append((list(argv), dict(env)))

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr("hpo.run.launcher.subprocess.Popen", FakeWorker)
    monkeypatch.setattr("hpo.run.launcher.watch", lambda *args, **kwargs: None)
    codes, stopped = run_workers(launch, devices=[None, None])
    assert codes == [0, 0] and not stopped and len(started) == 2
    for argv, env in started:
        assert argv[:3] == [sys.executable, "-m", "hpo.cli"]
        assert not any("qqsecretqq" in a for a in argv), argv
        assert env["HPO_STORAGE"] == url  # the worker reads it from there
    assert "qqsecretqq" not in launch.resume_hint()
    assert os.environ.get("HPO_STORAGE") != url
