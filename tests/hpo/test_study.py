"""The study's lifecycle through the CLI: create or resume from a study file, read from the
storage alone (no study file, no --data, from a folder without studies/), and read commands
that write nothing. SQLite file and the PostgreSQL server.

Commands run in-process (``hpo_cli``: the output, exit code and strictness of a process; a
launch still starts real worker processes); ``python -m hpo.cli`` itself runs as a process in
test_version."""
from __future__ import annotations

import json
import shutil

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO, cli, fresh_postgres_database, hpo_cli

READ_ONLY_COMMANDS = (
    ("studies",),
    ("studies", "-f", "json"),
    ("status", "--study", "smoke"),
    ("status", "--study", "smoke", "-f", "json"),
    ("best", "--study", "smoke"),
    ("best", "--study", "smoke", "-f", "json"),
    ("ensembles",),
    ("ensembles", "-f", "json"),
    ("promote", "--study", "smoke"),
    ("predict", "--study", "smoke", "--trial", "0", "--data", "eval", "--out", "s.csv"),
    ("dashboard", "--port", "1"),
)


def _launched(tmp_path_factory, tiny_data, storage_of):
    """The smoke study, launched on a copy of the data that is then moved away."""
    root = tmp_path_factory.mktemp("launched")
    data = root / "elsewhere" / "train"
    shutil.copytree(tiny_data / "train", data)
    storage = storage_of(root)
    artifacts = str(root / "artifacts")
    out = hpo_cli("launch", "--study", "smoke", "--data", str(data), "--n-trials", "2",
                  "--storage", storage, "--artifacts", artifacts)
    assert out.returncode == 0, out.stderr
    return {"root": root, "storage": storage, "artifacts": artifacts, "data": data}


@pytest.fixture(scope="module")
def sqlite_study(tmp_path_factory, tiny_data):
    return _launched(tmp_path_factory, tiny_data, lambda root: f"sqlite:///{root}/hpo.db")


@pytest.fixture(scope="module")
def pg_study(tmp_path_factory, tiny_data, own_postgres_url):
    return _launched(tmp_path_factory, tiny_data, lambda root: own_postgres_url)


def _read_everything(study: dict, tmp_path, tiny_data) -> None:
    """Every read command, run where no study file is (cwd without studies/, no --data)."""
    away = tmp_path / "away"
    away.mkdir()
    env = {"HPO_STORAGE": study["storage"], "HPO_ARTIFACTS": study["artifacts"]}
    status = hpo_cli("status", "--study", "smoke", env=env, cwd=away)
    assert status.returncode == 0, status.stderr
    assert "optim.lr=" in status.stdout and "model.name" not in status.stdout.split("\n")[1]
    data = json.loads(hpo_cli("status", "--study", "smoke", "-f", "json", env=env,
                              cwd=away).stdout)
    assert data["study"] == "smoke" and data["metric"] == "f1" and len(data["trials"]) == 2
    assert all("optim.name" in t["params"] for t in data["trials"])
    best = hpo_cli("best", "--study", "smoke", "-f", "json", env=env, cwd=away)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["metric"] == "f1"
    listing = json.loads(hpo_cli("studies", "-f", "json", env=env, cwd=away).stdout)
    assert [r["name"] for r in listing] == ["smoke"] and listing[0]["metric"] == "f1"
    promote = hpo_cli("promote", "--study", "smoke", env=env, cwd=away)
    assert promote.returncode == 0, promote.stderr
    ensembles = json.loads(hpo_cli("ensembles", "-f", "json", env=env, cwd=away).stdout)
    assert [e["name"] for e in ensembles] == ["smoke-greedy"]
    number = json.loads(best.stdout)["number"]
    out = hpo_cli("predict", "--study", "smoke", "--trial", str(number), "--data",
                  str(tiny_data / "eval"), "--out", str(away / "sub.csv"), env=env, cwd=away)
    assert out.returncode == 0, out.stderr
    assert (away / "sub.csv").is_file()
    assert sorted(p.name for p in away.iterdir()) == ["sub.csv"]


@pytest.mark.slow
def test_a_study_is_read_from_the_storage_alone_sqlite(sqlite_study, tmp_path, tiny_data):
    _read_everything(sqlite_study, tmp_path, tiny_data)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_study_is_read_from_the_storage_alone_postgres(pg_study, tmp_path, tiny_data):
    _read_everything(pg_study, tmp_path, tiny_data)


@pytest.mark.slow
def test_the_study_records_what_readers_need(sqlite_study):
    study = optuna.load_study(study_name="smoke", storage=sqlite_study["storage"])
    attrs = study.user_attrs
    assert attrs["metric"] == "f1"
    assert attrs["hpo_split"]["train_dir"] == str(sqlite_study["data"])
    assert attrs["description"].startswith("Smoke test")
    assert "space:" in attrs["study_file_text"]
    assert study.metric_names == ["f1"]
    from optuna_dashboard import get_note

    note = get_note(study)
    assert "Smoke test" in note and str(sqlite_study["data"]) in note


@pytest.mark.slow
def test_relaunch_without_data_uses_the_recorded_folder(sqlite_study, tmp_path):
    away = tmp_path / "away"
    away.mkdir()
    out = hpo_cli("launch", "--study", "smoke", "--n-trials", "3", "--storage",
                  sqlite_study["storage"], "--artifacts", sqlite_study["artifacts"], cwd=away)
    assert out.returncode == 0, out.stderr
    assert f"data {sqlite_study['data']}" in out.stdout
    study = optuna.load_study(study_name="smoke", storage=sqlite_study["storage"])
    assert len(study.trials) == 3


@pytest.mark.slow
def test_a_worker_without_the_study_file_joins_from_the_recorded_text(tiny_data, tmp_path):
    """A study file that exists only where the study was launched: workers elsewhere (and a
    relaunch after the file is gone) take the text the study recorded, and its data folder."""
    study_file = tmp_path / "remote.yaml"
    shutil.copy(REPO / "studies" / "smoke.yaml", study_file)
    storage = f"sqlite:///{tmp_path}/hpo.db"
    args = ["--storage", storage, "--artifacts", str(tmp_path / "artifacts")]
    out = hpo_cli("launch", "--study", str(study_file), "--data", str(tiny_data / "train"),
                  "--n-trials", "1", *args)
    assert out.returncode == 0, out.stderr
    study_file.unlink()
    away = tmp_path / "away"
    away.mkdir()
    out = hpo_cli("worker", "--study", "remote", "--n-trials", "2", *args, cwd=away)
    assert out.returncode == 0, out.stderr
    out = hpo_cli("launch", "--study", "remote", "--n-trials", "3", *args, cwd=away)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name="remote", storage=storage)
    assert len(study.trials) == 3


def test_read_commands_create_nothing(tmp_path):
    """In an empty folder with the default storage (sqlite:///hpo.db): one line, no file."""
    for args in READ_ONLY_COMMANDS:
        out = hpo_cli(*args, cwd=tmp_path)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert list(tmp_path.iterdir()) == [], (args, list(tmp_path.iterdir()))
        if args[0] not in ("studies", "ensembles"):
            assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, \
                (args, out.stderr)
    assert "no studies yet" in hpo_cli("studies", cwd=tmp_path).stdout
    assert json.loads(hpo_cli("studies", "-f", "json", cwd=tmp_path).stdout) == []


def test_read_commands_write_nothing_to_an_existing_database(tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    study = optuna.create_study(study_name="other", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = (tmp_path / "hpo.db").read_bytes()
    for args in (("status", "--study", "other"), ("best", "--study", "other"), ("studies",),
                 ("status", "--study", "smoke")):
        hpo_cli(*args, "--storage", storage, cwd=tmp_path)
    assert (tmp_path / "hpo.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpo.db"]


def test_a_plain_optuna_study_is_listed_and_shown(tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    study = optuna.create_study(study_name="plain", storage=storage, direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=4)
    study.enqueue_trial({"x": 0.0})
    listing = hpo_cli("studies", "--storage", storage)
    assert listing.returncode == 0 and "plain" in listing.stdout and "minimize" in listing.stdout
    status = hpo_cli("status", "--study", "plain", "--sort", "value", "--storage", storage)
    assert status.returncode == 0, status.stderr
    rows = [line for line in status.stdout.splitlines() if " COMPLETE " in line]
    values = [float(line.split()[2]) for line in rows]
    assert values == sorted(values) and len(values) == 4  # minimize: best (smallest) first
    assert "WAITING" in status.stdout and "value" in status.stdout.splitlines()[1]
    best = json.loads(hpo_cli("best", "--study", "plain", "-f", "json", "--storage",
                              storage).stdout)
    assert best["value"] == pytest.approx(study.best_value) and best["params"]["x"] == \
        pytest.approx(study.best_params["x"])


def test_status_prints_failure_reasons_whole(tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    study = optuna.create_study(study_name="fails", storage=storage)
    reason = "RuntimeError: " + "a long reason " * 20 + "END"
    trial = study.ask()
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)
    out = hpo_cli("status", "--study", "fails", "--storage", storage)
    assert out.returncode == 0, out.stderr
    assert reason in out.stdout


def test_version():
    # the module entry point itself, as a real process (`hpo launch` starts its workers so)
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("hpo, version ")


@pytest.mark.postgres
def test_reading_an_empty_postgres_database_creates_no_tables(postgres_url):
    import sqlalchemy

    with fresh_postgres_database(postgres_url, "hpo_empty") as empty:
        out = hpo_cli("studies", "--storage", empty)
        assert out.returncode == 0 and "no studies yet" in out.stdout, out.stderr
        out = hpo_cli("status", "--study", "smoke", "--storage", empty)
        assert out.returncode == 1 and "holds no studies yet" in out.stderr
        assert "Traceback" not in out.stderr
        engine = sqlalchemy.create_engine(empty, poolclass=sqlalchemy.pool.NullPool)
        assert sqlalchemy.inspect(engine).get_table_names() == []
        engine.dispose()
