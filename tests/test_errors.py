"""Every bad input of docs/errors.md through the CLI: one line, exit 1, nothing lost.

Refusals run the click command in-process (``hpo_cli``, ``trainer_cli``: the same output, exit
code and strictness as a process); the checks that no password reaches the screen keep a real
process, whose every byte of output they see.

Each case's message must also appear in docs/errors.md, so the table stays true.
"""
from __future__ import annotations

import os
import re
import shutil

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.run.budget import Budget
from hpo.run.study import create_or_resume
from hpo.run.worker import run_worker
from hpo.studyfile.files import load_study_spec
from tests.conftest import REPO, cli, hpo_cli, tiny_raw, trainer_cli

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")  # table escapes
LR = "space:\n  optim.lr: {type: float, low: 0.001, high: 0.1}\n"

STUDY_CASES = {
    "malformed YAML": ("n_trials: [1, 2\n" + LR,
                       r"bad.yaml is not valid YAML at line 2, column 6: expected ',' or ']'"),
    "unknown key": ("n_trial: 3\n" + LR,
                    r"bad.yaml: unknown top-level key 'n_trial' (did you mean 'n_trials'?)"),
    "wrong type": ("n_trials: ten\n" + LR,
                   r"bad.yaml: n_trials: 'ten' is not an integer >= 1"),
    "data.holdout searched": (
        "n_trials: 3\nspace:\n  data.holdout: {type: categorical, choices: [true, false]}\n",
        r"bad.yaml: space: data.holdout cannot be set in a study: a trial needs validation "
        r"people to report its metric; hpo refit --full trains the models of every person"),
    "low > high": ("n_trials: 3\nspace:\n  optim.lr: {type: float, low: 0.1, high: 0.001}\n",
                   r"bad.yaml: space: optim.lr: low (0.1) is greater than high (0.001)"),
    "unknown timm model": (
        "n_trials: 3\nspace:\n  model.name: {type: categorical, choices: [efficientnet_v2_rw_t]}"
        "\n", r"bad.yaml: space: model.name: model.name is 'efficientnet_v2_rw_t', which is not "
              r"a timm model (did you mean efficientnetv2_rw_t"),
    "unknown loss": ("n_trials: 3\nfixed: {loss: {weights: {focall: 1.0}}}\n" + LR,
                     r"bad.yaml: fixed: unknown loss 'focall'; valid losses: ce, f1, focal"),
    "duplicate key": ("n_trials: 3\n" + LR + "n_trials: 5\n",
                      "bad.yaml: key 'n_trials' is given twice (lines 1 and 4); YAML would keep "
                      "only the last silently, so keep one of them"),
}


def _assert_one_line(out, message: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0], (message, lines[0])


def _in_doc(message: str) -> None:
    fragment = re.sub(r"/\S+/", "", message)  # the doc shows names without temp folders
    assert fragment in DOC, f"docs/errors.md lacks: {fragment}"


@pytest.mark.parametrize("case", list(STUDY_CASES))
def test_bad_study_files(case, tmp_path):
    text, message = STUDY_CASES[case]
    (tmp_path / "bad.yaml").write_text(text)
    db = tmp_path / "hpo.db"
    out = hpo_cli("launch", "--study", str(tmp_path / "bad.yaml"), "--storage",
                  f"sqlite:///{db}", cwd=tmp_path)
    _assert_one_line(out, message)
    assert not db.exists()  # refused before touching the storage
    _in_doc(message)


def test_missing_data_dir(tmp_path):
    out = hpo_cli("launch", "--study", "smoke", "--data", str(tmp_path / "nope"),
                  "--storage", f"sqlite:///{tmp_path}/hpo.db")
    message = "nope does not exist; set data.train_dir (or --data) to the competition's train"
    _assert_one_line(out, message)
    _in_doc(message)


def test_data_dir_without_person_folders(tmp_path):
    (tmp_path / "train" / "images" / "holiday_photos").mkdir(parents=True)
    out = hpo_cli("launch", "--study", "smoke", "--data", str(tmp_path / "train"),
                  "--storage", f"sqlite:///{tmp_path}/hpo.db")
    message = "folder name 'holiday_photos' in "
    _assert_one_line(out, message)
    assert "does not parse; rename it as <id>_<male|female>_<race>_<age>" in out.stderr
    _in_doc("does not parse; rename it as <id>_<male|female>_<race>_<age>")
    (tmp_path / "train" / "images" / "holiday_photos").rmdir()
    out = hpo_cli("launch", "--study", "smoke", "--data", str(tmp_path / "train"),
                  "--storage", f"sqlite:///{tmp_path}/hpo.db")
    _assert_one_line(out, "no person folders in")
    _in_doc("no person folders in")


def _run_trainer(tmp_path, train_dir):
    raw = tiny_raw(train_dir, tmp_path / "run", tmp_path / "cache")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    return trainer_cli(str(tmp_path / "cfg.yaml"))


def test_truncated_and_empty_images_are_skipped_with_a_warning(tiny_data, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(tiny_data / "train", train)
    people = sorted((train / "images").iterdir())
    truncated = next(people[0].glob("mask1.*"))
    truncated.write_bytes(truncated.read_bytes()[:200])
    next(people[1].glob("normal.*")).write_bytes(b"")
    out = _run_trainer(tmp_path, train)
    assert out.returncode == 0, out.stderr
    assert "WARNING: skipping 2 unreadable images of 126" in out.stderr
    assert "Traceback" not in out.stderr
    _in_doc("skipping 2 unreadable images of 126")


def test_png_rgba_and_grayscale_train(tmp_path):
    from trainer.synth import make_dataset

    root = make_dataset(tmp_path / "v", people=9, eval_people=0, size=(40, 30), variants=True)
    out = _run_trainer(tmp_path, root / "train")
    assert out.returncode == 0, out.stderr
    assert "unreadable" not in out.stderr


@pytest.fixture(scope="module")
def one_trial(tiny_data, tmp_path_factory):
    """One real trial of a 1-epoch copy of the smoke study, for the predict/promote errors."""
    root = tmp_path_factory.mktemp("errors")
    raw = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    raw.update(n_trials=1, pruner={"name": "none"})
    raw["fixed"]["epochs"] = 1
    study = root / "one.yaml"
    study.write_text(yaml.safe_dump(raw, sort_keys=False))
    storage = f"sqlite:///{root}/hpo.db"
    run_worker(load_study_spec(str(study)), storage=storage, artifacts=str(root / "art"),
               train_dir=str(tiny_data / "train"), budget=Budget(1, None),
               heartbeat_interval=None)
    trial = optuna.load_study(study_name="one", storage=storage).trials[0]
    assert trial.state == TrialState.COMPLETE
    args = ["--storage", storage, "--artifacts", str(root / "art")]
    return {"root": root, "study": str(study), "args": args, "trial": trial}


def _predict(one_trial, eval_dir, out_csv):
    return hpo_cli("predict", "--study", one_trial["study"], "--trial", "0", "--data",
                   str(eval_dir), "--out", str(out_csv), "--device", "cpu", *one_trial["args"])


def test_missing_eval_image(one_trial, tiny_data, tmp_path):
    ev = tmp_path / "eval"
    shutil.copytree(tiny_data / "eval", ev)
    victim = sorted((ev / "images").iterdir())[0]
    victim.unlink()
    out = _predict(one_trial, ev, tmp_path / "sub.csv")
    _assert_one_line(out, f"eval image {victim} is missing (1 of 28 listed in info.csv are "
                          "missing); restore it or remove its row")
    assert not (tmp_path / "sub.csv").exists()
    _in_doc("is missing (1 of 28 listed in info.csv are missing); restore it or remove its row")


def test_duplicate_image_id(one_trial, tiny_data, tmp_path):
    ev = tmp_path / "eval"
    shutil.copytree(tiny_data / "eval", ev)
    info = pd.read_csv(ev / "info.csv")
    pd.concat([info, info.iloc[:1]]).to_csv(ev / "info.csv", index=False)
    out = _predict(one_trial, ev, tmp_path / "sub.csv")
    _assert_one_line(out, f"lists ImageID {info['ImageID'][0]} more than once (1 duplicates); "
                          "remove them")
    assert not (tmp_path / "sub.csv").exists()
    _in_doc("more than once (1 duplicates); remove them")


def test_changed_checkpoint(one_trial, tiny_data, tmp_path):
    promoted = hpo_cli("promote", "--study", one_trial["study"], "--name", "errs",
                       *one_trial["args"])
    assert promoted.returncode == 0, promoted.stderr
    art = tmp_path / "art"
    shutil.copytree(one_trial["root"] / "art", art)
    trial = one_trial["trial"]
    ckpt = art / "store" / trial.system_attrs["hpo:artifacts"]["best.pt"]
    with open(ckpt, "ab") as f:
        f.write(b"\0")
    out = hpo_cli("predict", "--ensemble", "errs", "--data", str(tiny_data / "eval"), "--out",
                  str(tmp_path / "sub.csv"), "--artifacts", str(art), "--device", "cpu")
    _assert_one_line(out, "changed since promotion")
    assert not (tmp_path / "sub.csv").exists()
    _in_doc("changed since promotion")


def test_promote_without_completed_trials(tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    create_or_resume(load_study_spec("smoke"), storage=storage, heartbeat_interval=None)
    out = hpo_cli("promote", "--study", "smoke", "--storage", storage, "--artifacts",
                  str(tmp_path / "art"))
    _assert_one_line(out, "study smoke has no completed trial; run hpo launch --study smoke")
    _in_doc("has no completed trial; run hpo launch --study")


def test_unreachable_database():
    out = cli("status", "--study", "smoke", "--storage",
              "postgresql://hpo:hunter2@127.0.0.1:1/hpo")
    _assert_one_line(out, "cannot reach the study database at 127.0.0.1:1 "
                          "(postgresql+psycopg://hpo:***@127.0.0.1:1/hpo)")
    assert "hunter2" not in out.stderr
    _in_doc("start the database or fix --storage / HPO_STORAGE")


def test_refused_login_is_masked(postgres_url):
    from sqlalchemy.engine import make_url

    bad = make_url(postgres_url).set(username="nobody", password="hunter2")
    out = cli("status", "--study", "smoke", "--storage",
              bad.render_as_string(hide_password=False))
    _assert_one_line(out, "refused the login")
    assert "hunter2" not in out.stderr and "nobody:***@" in out.stderr
    _in_doc("refused the login")


def test_reading_without_a_database_creates_nothing(tmp_path):
    for args in (("status", "--study", "smoke"), ("best", "--study", "smoke"),
                 ("promote", "--study", "smoke"), ("dashboard", "--port", "1")):
        out = hpo_cli(*args, cwd=tmp_path)
        _assert_one_line(out, "no study database at hpo.db (storage sqlite:///hpo.db), so no")
        assert list(tmp_path.iterdir()) == []
    _in_doc("so no study 'smoke' there; start one with: hpo launch --study smoke")


def test_an_unwritable_artifact_folder_stops_before_anything_is_created(tiny_data, tmp_path):
    for target, why in (("/sys/hpo-artifacts", "Permission denied"),
                        (str(tmp_path / "afile" / "art"), "Not a directory")):
        (tmp_path / "afile").write_text("not a folder")
        if why == "Permission denied" and os.access("/sys", os.W_OK):
            continue  # this machine lets us write to /sys: nothing to test there
        out = hpo_cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"),
                      "--storage", f"sqlite:///{tmp_path}/hpo.db", "--artifacts", target)
        _assert_one_line(out, f"cannot write to the artifact folder {target}")
        assert why in out.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    _in_doc("); make it writable or point --artifacts / HPO_ARTIFACTS elsewhere")


def test_room_for_a_trial_is_twice_the_largest_checkpoint(tmp_path):
    from hpo.run.diskcheck import FIRST_TRIAL_BYTES, check_room, room_needed

    assert room_needed(tmp_path) == FIRST_TRIAL_BYTES
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "ckpt").write_bytes(b"\0" * (FIRST_TRIAL_BYTES // 2 + 10))
    assert room_needed(tmp_path) == FIRST_TRIAL_BYTES + 20
    check_room(tmp_path)  # this disk has that much room
    huge = tmp_path / "store" / "huge"
    with open(huge, "wb") as f:  # a sparse file: large on paper, nothing on disk
        f.truncate(shutil.disk_usage(tmp_path).free)
    with pytest.raises(HpoError, match=r"free, but a trial needs about \d+ MiB"):
        check_room(tmp_path)
    _in_doc("(two checkpoints); free some space ...")
