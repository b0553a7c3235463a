"""``hpo refit``: a study's best configurations trained again on k person-level folds, as trials
of the companion study ``NAME-refit``; ``hpo promote`` on it selects on out-of-fold
probabilities and ``hpo predict`` averages each member's fold models. The CLI in-process
(``hpo_cli``; its launches start real worker processes) and, for the interrupted refit, as a
real process sent SIGINT; a real SQLite file, real timm models and JPEG files.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from hpo.store.artifacts import ArtifactPaths, file_sha256
from hpo.store.manifest import seal_manifest
from hpo.store.records import FOLD_ATTR, REFIT_ATTR, SOURCE_ATTR
from tests.conftest import REPO, copy_launch, copy_sqlite, hpo_cli

PEOPLE = 18  # tiny_data
DOC = (REPO / "docs" / "errors.md").read_text()


def _one_line(out, *fragments: str) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    shown = re.sub(r"/\S+/", "", lines[0][len("Error: "):])  # docs show no temp folders
    assert shown in DOC, f"docs/errors.md lacks: {shown}"
    return lines[0]


def _names(storage: str) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


@pytest.fixture(scope="module")
def searched(smoke_launch, tmp_path_factory):
    """The shipped smoke study, 3 trials (the session's launch, copied), then a refit of its
    top 2 on 2 folds."""
    launch = smoke_launch["out"]
    assert launch.returncode == 0, launch.stderr
    study = copy_launch(smoke_launch, tmp_path_factory.mktemp("refit"))
    refit = hpo_cli("refit", "--study", "smoke", "--top", "2", "--folds", "2", *study["args"])
    return {**study, "refit": refit}


def _folds(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="smoke-refit", storage=storage).trials


@pytest.mark.slow
def test_refit_trains_each_configuration_on_every_fold(searched):
    out = searched["refit"]
    assert out.returncode == 0, out.stderr
    assert "refit of smoke: trial(s) " in out.stdout and "x 2 folds" in out.stdout
    assert "next: hpo promote --study smoke-refit" in out.stdout
    source = optuna.load_study(study_name="smoke", storage=searched["storage"])
    ranked = sorted((t for t in source.trials if t.state == TrialState.COMPLETE),
                    key=lambda t: (-t.value, t.number))
    top = [ranked[0].number] + [t.number for t in ranked[1:] if t.params != ranked[0].params][:1]
    trials = _folds(searched["storage"])
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 * len(top)
    pairs = sorted((t.user_attrs[SOURCE_ATTR], t.user_attrs[FOLD_ATTR]) for t in trials)
    assert pairs == sorted((n, f) for n in top for f in (0, 1))
    for t in trials:  # the source's settings, the fold added
        params = dict(t.params)
        assert params.pop("data.fold") == t.user_attrs[FOLD_ATTR]
        assert params == source.trials[t.user_attrs[SOURCE_ATTR]].params
    record = optuna.load_study(study_name="smoke-refit",
                               storage=searched["storage"]).user_attrs[REFIT_ATTR]
    assert record["of"] == "smoke" and record["folds"] == 2


@pytest.mark.slow
def test_the_folds_validate_every_training_person_once(searched):
    store = ArtifactPaths(searched["root"] / "artifacts")
    by_source: dict[int, list] = {}
    for t in _folds(searched["storage"]):
        by_source.setdefault(t.user_attrs[SOURCE_ATTR], []).append(t)
    hashes = []
    for group in by_source.values():
        group.sort(key=lambda t: t.user_attrs[FOLD_ATTR])
        rows = [len(np.load(store.stored_path(t, "val_labels.npy"))) for t in group]
        assert sum(rows) == PEOPLE * 7  # out of fold: all 126 images, each once
        hashes.append([t.user_attrs["val_hash"] for t in group])
    assert all(h == hashes[0] for h in hashes)  # every configuration: the same folds
    assert len(set(hashes[0])) == 2


@pytest.mark.slow
def test_promote_selects_on_out_of_fold_and_predict_averages_the_folds(searched, tiny_data,
                                                                      tmp_path):
    promote = hpo_cli("promote", "--study", "smoke-refit", "--name", "kfold", *searched["args"])
    assert promote.returncode == 0, promote.stderr
    assert "out of fold (2 folds, 126 images): ensemble f1 " in promote.stdout
    assert "best member trial " in promote.stdout
    manifest = json.loads((searched["root"] / "artifacts" / "ensembles" /
                           "kfold.json").read_text())
    assert manifest["refit"]["of"] == "smoke" and manifest["refit"]["oof_images"] == 126
    folds = {t.number: t for t in _folds(searched["storage"])}
    for member in manifest["members"]:
        assert len(member["folds"]) == 2 and "data.fold" not in member["params"]
        for part in member["folds"]:  # lineage: fold, refit trial, checkpoint and its sha256
            trial = folds[part["trial"]]
            assert trial.user_attrs[SOURCE_ATTR] == member["trial"]
            assert trial.user_attrs[FOLD_ATTR] == part["fold"]
            assert file_sha256(part["checkpoint"]) == part["sha256"]
    out = tmp_path / "sub.csv"
    predict = hpo_cli("predict", "--ensemble", "kfold", "--data", str(tiny_data / "eval"),
                      "--out", str(out), "--device", "cpu", *searched["args"][2:])
    assert predict.returncode == 0, predict.stderr
    assert predict.stderr.count(" fold ") == 2 * len(manifest["members"])
    submission = pd.read_csv(out)
    assert len(submission) == len(pd.read_csv(tiny_data / "eval" / "info.csv"))


@pytest.mark.slow
def test_each_member_predicts_with_all_its_fold_models(searched, tiny_data):
    from hpo.ensemble.predict import member_probs, resolve_members
    from trainer import read_eval

    root = searched["root"] / "artifacts"
    manifest = json.loads((root / "ensembles" / "kfold.json").read_text())
    models = resolve_members(ensemble="kfold", artifacts=root)
    assert len(models) == 2 * len(manifest["members"])
    for member in manifest["members"]:
        mine = [m for m in models if m.trial == member["trial"]]
        assert sorted(m.fold for m in mine) == [0, 1]
        assert len({m.checkpoint for m in mine}) == 2  # two models, not one twice
        assert all(m.weight == pytest.approx(member["weight"] / 2) for m in mine)
    paths = list(read_eval(tiny_data / "eval")["path"])
    with open("/dev/null", "w") as quiet:
        probs = member_probs(models[:2], paths, device="cpu", stream=quiet)
    assert not np.allclose(probs[0], probs[1])


@pytest.mark.slow
def test_refit_again_resumes_and_adds_nothing(searched):
    before = len(_folds(searched["storage"]))
    again = hpo_cli("refit", "--study", "smoke", "--top", "2", "--folds", "2", *searched["args"])
    assert again.returncode == 0, again.stderr
    assert "budget met" in again.stdout
    assert len(_folds(searched["storage"])) == before


@pytest.mark.slow
def test_another_plan_for_the_same_refit_study_is_refused(searched):
    out = hpo_cli("refit", "--study", "smoke", "--top", "2", "--folds", "3", *searched["args"])
    _one_line(out, "study smoke-refit already refits trials 0, 1 on 2 folds, not trials 0, 1 "
                   "on 3; finish it with the same --top/--ensemble and --folds, or hpo delete "
                   "--study smoke-refit first")


@pytest.mark.slow
def test_refit_of_a_refit_study_is_refused(searched):
    out = hpo_cli("refit", "--study", "smoke-refit", "--folds", "2", *searched["args"])
    _one_line(out, "study smoke-refit is itself a refit; refit its source study smoke")


@pytest.mark.slow
@pytest.mark.parametrize(("folds", "fragments"), [
    ("1", ("--folds is 1, but must be >= 2",)),
    ("40", ("--folds 40 is more than the ", "people of the smallest gender x age group",
            "use --folds")),
])
def test_a_bad_fold_count_is_one_line_and_creates_nothing(folds, fragments, tiny_data,
                                                           tmp_path, searched):
    storage = copy_sqlite(searched["root"] / "hpo.db", tmp_path / "copy.db")
    names = _names(storage)
    out = hpo_cli("refit", "--study", "smoke", "--folds", folds, "--storage", storage,
                  "--artifacts", str(tmp_path / "art"))
    _one_line(out, *fragments)
    assert _names(storage) == names


@pytest.mark.slow
def test_an_ensemble_whose_trials_are_gone_is_one_line(searched, tmp_path):
    promote = hpo_cli("promote", "--study", "smoke", "--name", "plain", *searched["args"])
    assert promote.returncode == 0, promote.stderr
    path = searched["root"] / "artifacts" / "ensembles" / "plain.json"
    manifest = json.loads(path.read_text())
    manifest["members"][0]["trial"] = 99  # as if that trial had been deleted since
    broken = searched["root"] / "artifacts" / "ensembles" / "gone.json"
    broken.write_text(json.dumps(seal_manifest(manifest)))  # a sound manifest, a trial gone
    names = _names(searched["storage"])
    out = hpo_cli("refit", "--study", "smoke", "--ensemble", "gone", "--folds", "2",
                  *searched["args"])
    _one_line(out, "ensemble gone names trial(s) 99 that study smoke no longer has",
              "promote again, or refit with --top N")
    assert _names(searched["storage"]) == names


def test_a_study_without_a_completed_trial_is_one_line(tmp_path):
    from hpo.run.study import create_or_resume
    from hpo.studyfile.files import load_study_spec

    storage = f"sqlite:///{tmp_path}/hpo.db"
    create_or_resume(load_study_spec("smoke"), storage=storage, train_dir=str(tmp_path))
    out = hpo_cli("refit", "--study", "smoke", "--storage", storage,
                  "--artifacts", str(tmp_path / "art"))
    _one_line(out, "study smoke has no completed trial to refit; run hpo launch --study smoke")
    assert _names(storage) == ["smoke"]


@pytest.mark.slow
def test_an_interrupted_refit_resumes_where_it_stopped(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/hpo.db"
    args = ["--storage", storage, "--artifacts", str(tmp_path / "artifacts")]
    launch = hpo_cli("launch", "--study", "smoke", "--data", str(tiny_data / "train"),
                     "--n-trials", "1", *args)
    assert launch.returncode == 0, launch.stderr
    proc = subprocess.Popen([sys.executable, "-m", "hpo.cli", "refit", "--study", "smoke",
                             "--top", "1", "--folds", "3", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    done: list[int] = []
    while not done and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            done = [t.number for t in _folds(storage) if t.state == TrialState.COMPLETE]
        except KeyError:
            continue
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), err
    kept = {t.number: t.state for t in _folds(storage)}
    resumed = hpo_cli("refit", "--study", "smoke", "--top", "1", "--folds", "3", *args)
    assert resumed.returncode == 0, resumed.stderr
    trials = _folds(storage)
    assert all(trials[n].state == s for n, s in kept.items() if s == TrialState.COMPLETE)
    complete = {t.user_attrs[FOLD_ATTR] for t in trials if t.state == TrialState.COMPLETE}
    assert complete == {0, 1, 2}
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3  # no fold trained twice


@pytest.mark.slow
def test_promote_before_any_configuration_has_all_folds_is_one_line(searched, tmp_path,
                                                                   tiny_data):
    from hpo.run.refit_plan import choose_configs, enqueue_folds, plan_of, refit_spec
    from hpo.run.study import create_or_resume, load, record_of

    storage = copy_sqlite(searched["root"] / "hpo.db", tmp_path / "copy.db")
    optuna.delete_study(study_name="smoke-refit", storage=storage)
    source = load("smoke", storage=storage)
    plan = plan_of("smoke", choose_configs(source, top=1), 2)
    study = create_or_resume(refit_spec(record_of(source).text, plan), storage=storage,
                             train_dir=str(tiny_data / "train"))
    assert enqueue_folds(study, plan) == 2
    assert enqueue_folds(study, plan) == 0  # a rerun adds nothing
    out = hpo_cli("promote", "--study", "smoke-refit", "--storage", storage,
                  "--artifacts", str(tmp_path / "art"))
    _one_line(out, "study smoke-refit has no configuration with all 2 folds COMPLETE yet")


@pytest.mark.parametrize(("section", "message"), [
    ({"of": "smoke", "folds": 1}, "refit.folds: is 1, but must be an integer >= 2"),
    ({"of": "smoke"}, "refit: must be a mapping with exactly 'of'"),
    ({"of": "../x", "folds": 2}, "refit.of"),
])
def test_a_bad_refit_section_is_one_spec_error(section, message):
    from hpo.errors import SpecError
    from hpo.studyfile.files import parse_study_text

    text = ("n_trials: 4\ndata: {n_folds: 2}\nspace:\n  optim.lr: {type: float, low: 0.001, "
            "high: 0.1}\n" + yaml.safe_dump({"refit": section}))
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_study_text(text, name="x-refit", path="x.yaml")


def test_a_refit_section_adds_the_fold_as_the_last_searched_key():
    from hpo.studyfile.files import parse_study_text

    text = ("n_trials: 4\ndata: {n_folds: 3}\nrefit: {of: smoke, folds: 3}\nspace:\n"
            "  optim.lr: {type: float, low: 0.001, high: 0.1}\n")
    spec = parse_study_text(text, name="smoke-refit", path="x.yaml")
    assert spec.refit == {"of": "smoke", "folds": 3}
    fold = spec.space[-1]
    assert (fold.key, fold.type, fold.low, fold.high) == ("data.fold", "int", 0, 2)


@pytest.fixture(scope="module")
def full(searched, tmp_path_factory):
    """``hpo refit --full`` on a copy of the searched study: the fold models are there, the
    full models (every person, the folds' median best epoch) are trained next."""
    import shutil

    root = tmp_path_factory.mktemp("full")
    storage = copy_sqlite(searched["root"] / "hpo.db", root / "hpo.db")
    shutil.copytree(searched["root"] / "artifacts", root / "artifacts")
    args = ["--storage", storage, "--artifacts", str(root / "artifacts")]
    out = hpo_cli("refit", "--study", "smoke", "--top", "2", "--folds", "2", "--full", *args)
    return {"storage": storage, "args": args, "root": root, "refit": out}


@pytest.mark.slow
def test_full_models_train_every_person_for_the_folds_best_epoch(full, tiny_data):
    from hpo.store.records import EPOCHS_ATTR, VALUE_ATTR
    from trainer import load_checkpoint

    out = full["refit"]
    assert out.returncode == 0, out.stderr
    assert "full models (every person): 2 enqueued" in out.stdout
    trials = _folds(full["storage"])
    fulls = [t for t in trials if t.user_attrs[FOLD_ATTR] == "all"]
    assert len(fulls) == 2 and all(t.state == TrialState.COMPLETE for t in fulls)
    store = ArtifactPaths(full["root"] / "artifacts")
    for t in fulls:
        group = [f for f in trials if f.user_attrs[SOURCE_ATTR] == t.user_attrs[SOURCE_ATTR]
                 and f.user_attrs[FOLD_ATTR] != "all"]
        bests = [f.user_attrs["best_epoch"] for f in group]
        assert t.user_attrs[EPOCHS_ATTR] == int(np.floor(np.median(bests) + 0.5))
        assert t.value == pytest.approx(np.mean([f.value for f in group]))
        assert t.user_attrs[VALUE_ATTR] == pytest.approx(t.value)
        assert "val_hash" not in t.user_attrs and "f1" not in t.user_attrs
        cfg = load_checkpoint(store.stored_path(t, "best.pt"))["config"]
        assert cfg["data"]["holdout"] is False and cfg["epochs"] == t.user_attrs[EPOCHS_ATTR]
        assert len(np.load(store.stored_path(t, "val_labels.npy"))) == 0
        assert t.params == group[0].params | {"data.fold": 0}
    again = hpo_cli("refit", "--study", "smoke", "--top", "2", "--folds", "2", "--full",
                    *full["args"])
    assert again.returncode == 0, again.stderr
    assert "full models (every person): 0 enqueued" in again.stdout
    assert len(_folds(full["storage"])) == len(trials)


@pytest.mark.slow
def test_predict_averages_fold_and_full_models_and_gc_keeps_them(full, tiny_data, tmp_path):
    from hpo.ensemble.predict import resolve_members

    promote = hpo_cli("promote", "--study", "smoke-refit", "--name", "full", *full["args"])
    assert promote.returncode == 0, promote.stderr
    root = full["root"] / "artifacts"
    manifest = json.loads((root / "ensembles" / "full.json").read_text())
    trials = {t.number: t for t in _folds(full["storage"])}
    for member in manifest["members"]:  # lineage: the full model's trial and checkpoint
        part = member["full"]
        assert trials[part["trial"]].user_attrs[FOLD_ATTR] == "all"
        assert trials[part["trial"]].user_attrs[SOURCE_ATTR] == member["trial"]
        assert file_sha256(part["checkpoint"]) == part["sha256"]
    models = resolve_members(ensemble="full", artifacts=root)
    assert len(models) == 3 * len(manifest["members"])  # two folds and the full model each
    for member in manifest["members"]:
        mine = [m for m in models if m.trial == member["trial"]]
        assert sorted(map(str, (m.fold for m in mine))) == ["0", "1", "all"]
        assert all(m.weight == pytest.approx(member["weight"] / 3) for m in mine)
    gc = hpo_cli("gc", "--study", "smoke-refit", "--keep-top", "1", *full["args"])
    assert gc.returncode == 0, gc.stderr
    out = tmp_path / "sub.csv"
    predict = hpo_cli("predict", "--ensemble", "full", "--data", str(tiny_data / "eval"),
                      "--out", str(out), "--device", "cpu", "--artifacts", str(root))
    assert predict.returncode == 0, predict.stderr  # gc left every model the ensemble names
    assert predict.stderr.count(" fold all") == len(manifest["members"])
    assert len(pd.read_csv(out)) == len(pd.read_csv(tiny_data / "eval" / "info.csv"))
