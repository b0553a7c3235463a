"""Promotion: greedy/top-k selection on built probability matrices, and `hpo promote` on a real
study (SQLite file, trials trained by run_worker on the tiny dataset, real checkpoints)."""
from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.ensemble.promote import (
    greedy_select,
    macro_f1,
    person_halves,
    pick_weights,
    promote,
    topk_select,
)
from hpo.errors import EnsembleError
from hpo.run.budget import Budget
from hpo.run.study import create_or_resume, load
from hpo.run.worker import run_worker
from hpo.store.artifacts import ArtifactPaths, file_sha256
from hpo.store.manifest import list_ensembles, load_manifest
from hpo.studyfile.files import load_study_spec
from tests.conftest import REPO, copy_sqlite, hpo_cli
from trainer import classification_metrics, load_checkpoint

# ---------------------------------------------------------------------------------------------
# a real study, trained once per test session (test_predict.py shares it)


@dataclass(frozen=True)
class StudyRun:
    """A finished study: its file, storage URL and artifact folder."""

    study_file: Path
    name: str
    storage: str
    artifacts: Path
    root: Path

    def study(self) -> optuna.Study:
        return load(self.name, storage=self.storage)

    def args(self, artifacts: Path | None = None) -> list[str]:
        return ["--storage", self.storage, "--artifacts", str(artifacts or self.artifacts)]


_RUNS: dict[str, StudyRun] = {}


def write_study_file(folder: Path, name: str) -> Path:
    """The shipped smoke study, 2 epochs, no pruning (so every trial completes)."""
    raw = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())
    raw["pruner"] = {"name": "none"}
    raw["n_trials"] = 3
    raw["fixed"]["epochs"] = 2
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def shared_study_run(tiny_data: Path, tmp_path_factory, cache_dir: Path) -> StudyRun:
    """Train the study's 3 trials once per session, whichever test module asks first."""
    key = str(tiny_data)
    if key not in _RUNS:
        root = tmp_path_factory.mktemp("ensemble-study")
        study_file = write_study_file(root, "ens")
        storage = f"sqlite:///{root}/hpo.db"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HPO_CACHE_DIR", str(cache_dir))
            run_worker(load_study_spec(study_file), storage=storage,
                       artifacts=str(root / "artifacts"), train_dir=str(tiny_data / "train"),
                       budget=Budget(3, None), heartbeat_interval=None)
        _RUNS[key] = StudyRun(study_file, "ens", storage, root / "artifacts", root)
    return _RUNS[key]


def assert_one_line_error(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert out.stderr == f"Error: {message}\n"


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory, _session_cache) -> StudyRun:
    return shared_study_run(tiny_data, tmp_path_factory, _session_cache)


# ---------------------------------------------------------------------------------------------
# selection on built probability matrices


def _rows(target: np.ndarray, conf: float) -> np.ndarray:
    """Probability rows with ``conf`` on ``target`` and the rest spread over the 17 others."""
    p = np.full((len(target), 18), (1 - conf) / 17)
    p[np.arange(len(target)), target] = conf
    return p


def _complementary() -> tuple[list[np.ndarray], np.ndarray]:
    """C: 70% right everywhere (best single); D: like C with more of the same errors;
    A: sure and right on classes 0-8, wrong elsewhere; B: the mirror image on 9-17."""
    labels = np.repeat(np.arange(18), 10)
    j = np.tile(np.arange(10), 18)
    nxt = (labels + 1) % 18
    c = _rows(np.where(j < 7, labels, nxt), 0.6)
    d = _rows(np.where(j < 6, labels, nxt), 0.55)
    a = np.where((labels < 9)[:, None], _rows(labels, 0.9), _rows(nxt, 0.07))
    b = np.where((labels >= 9)[:, None], _rows(labels, 0.9), _rows(nxt, 0.07))
    return [c, d, a, b], labels


def test_greedy_finds_the_complementary_pair_that_topk_misses():
    probs, labels = _complementary()
    singles = [macro_f1(p, labels) for p in probs]
    assert singles[0] > singles[1] > singles[2] == singles[3]
    assert singles[0] == pytest.approx(0.7) and singles[2] < 0.5

    picks = greedy_select(probs, labels, max_members=3)
    assert picks[0] == 0  # starts from the best single model
    assert set(picks) == {0, 2, 3}  # C plus the pair A, B; D repeats C's errors
    greedy_f1 = macro_f1(sum(probs[i] for i in picks) / len(picks), labels)
    assert greedy_f1 == pytest.approx(1.0)

    top = topk_select(probs, labels, k=3)
    assert top == [0, 1, 2]
    top_f1 = macro_f1(sum(probs[i] for i in top) / 3, labels)
    assert top_f1 < greedy_f1 - 0.2


def _margins() -> tuple[list[np.ndarray], np.ndarray]:
    """Two classes; X right on 6 of 10, Y on 4; X+Y gets 8 right, 2X+Y gets 9 (symmetric in
    the classes, so macro-F1 equals accuracy)."""
    # (margin of X, margin of Y, samples per class): margin = p(true) - p(other)
    kinds = [(0.4, -0.25, 4), (-0.2, 0.7, 3), (0.3, -0.4, 2), (-0.1, 0.15, 1)]
    x, y, labels = [], [], []
    for label in (0, 1):
        for mx, my, n in kinds:
            for _ in range(n):
                for m, out in ((mx, x), (my, y)):
                    p = np.zeros(18)
                    p[label], p[1 - label] = (1 + m) / 2, (1 - m) / 2
                    out.append(p)
                labels.append(label)
    return [np.array(x), np.array(y)], np.array(labels)


def test_greedy_picks_with_replacement_and_weights_sum_to_one():
    probs, labels = _margins()
    assert [macro_f1(p, labels) for p in probs] == pytest.approx([0.6, 0.4])
    picks = greedy_select(probs, labels, max_members=2)
    assert picks == [0, 1, 0]
    weights = pick_weights(picks)
    assert weights == pytest.approx({0: 2 / 3, 1: 1 / 3})
    assert sum(weights.values()) == pytest.approx(1.0)
    mixed = sum(w * probs[i] for i, w in weights.items())
    assert macro_f1(mixed, labels) == pytest.approx(0.9)


def test_greedy_limits_members_and_picks():
    probs, labels = _complementary()
    picks = greedy_select(probs, labels, max_members=2)
    assert len(set(picks)) <= 2 and picks[0] == 0
    assert greedy_select(probs, labels, max_members=3, max_picks=2) == picks[:2]
    assert greedy_select(probs, labels, max_members=1) == [0]
    assert greedy_select([probs[1]], labels, max_members=5) == [0]
    with pytest.raises(EnsembleError, match="max_members is 0, but must be >= 1"):
        greedy_select(probs, labels, max_members=0)
    with pytest.raises(EnsembleError, match="different shapes"):
        greedy_select([probs[0], probs[0][:5]], labels, max_members=2)
    with pytest.raises(EnsembleError, match="at least one completed trial"):
        topk_select([], labels, k=1)


def test_person_halves_keep_people_together():
    a, b = person_halves(30)
    assert list(a) == [*range(7), *range(14, 21), 28, 29]
    assert list(b) == list(range(7, 14)) + list(range(21, 28))
    assert set(a) | set(b) == set(range(30)) and not set(a) & set(b)
    with pytest.raises(EnsembleError) as err:
        person_halves(7)
    assert str(err.value) == (
        "the validation set has 7 images, fewer than 2 people; promotion selects on one half "
        "of the people and reports on the other: raise data.val_fraction in the study file")


# ---------------------------------------------------------------------------------------------
# promote on the real study


def test_promote_writes_a_manifest_that_round_trips(run):
    study = run.study()
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 2, [t.user_attrs.get("fail_reason") for t in study.trials]
    result = promote(study, name="round-trip", method="topk", max_members=2, top=3,
                     artifacts=run.artifacts)
    path = run.artifacts / "ensembles" / "round-trip.json"
    assert result.manifest_path == path.resolve() and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file
    manifest = load_manifest("round-trip", artifacts=run.artifacts)
    assert manifest == result.manifest == json.loads(path.read_text())
    assert load_manifest(path) == manifest

    assert manifest["name"] == "round-trip" and manifest["study"] == "ens"
    assert manifest["storage"] == run.storage  # the study's own storage (no secret in it)
    assert manifest["method"] == "topk" and len(manifest["members"]) == 2
    assert manifest["created"][:4].isdigit() and "T" in manifest["created"]
    assert manifest["versions"]["optuna"] == optuna.__version__
    assert sum(m["weight"] for m in manifest["members"]) == pytest.approx(1.0)

    store = ArtifactPaths(run.artifacts)
    trials = {t.number: t for t in done}
    labels = np.load(store.stored_path(done[0], "val_labels.npy"))
    mixed = 0
    for m in manifest["members"]:
        trial = trials[m["trial"]]
        stored = store.stored_path(trial, "best.pt")
        assert m["checkpoint"] == str(stored.resolve()) and Path(m["checkpoint"]).is_absolute()
        assert m["sha256"] == file_sha256(stored) and len(m["sha256"]) == 64
        ckpt = load_checkpoint(stored)
        assert m["preprocessing"] == {"img_size": [64, 48], "crop": None,
                                      "mean": list(ckpt["mean"]), "std": list(ckpt["std"])}
        assert m["model"] == "test_efficientnet" and m["params"] == trial.params
        assert m["metrics"]["f1"] == trial.system_attrs["hpo:metrics"]["f1"]
        mixed = mixed + m["weight"] * np.load(store.stored_path(trial, "val_probs.npy"))
    # the reported figures are the trainer's own macro-F1 of the weighted probabilities
    assert manifest["f1"]["all"] == pytest.approx(classification_metrics(mixed, labels)["f1"])
    a, b = person_halves(len(labels))
    assert manifest["f1"]["report"] == pytest.approx(
        classification_metrics(mixed[b], labels[b])["f1"])
    assert manifest["split"]["select_images"] + manifest["split"]["report_images"] == len(labels)

    table = result.table()
    assert "ensemble round-trip of study ens: topk, 2 member(s)" in table
    for m in manifest["members"]:
        assert f"{m['trial']:>5}  test_efficientnet" in table
    assert "ensemble gain on B" in table

    summary = run.study().user_attrs["ensemble:round-trip"]
    assert summary["method"] == "topk" and summary["manifest"] == str(path.resolve())
    assert [t for t, _ in summary["members"]] == [m["trial"] for m in manifest["members"]]

    lines = list_ensembles(artifacts=run.artifacts)
    line = next(x for x in lines if x.startswith("round-trip "))
    assert "study ens" in line and "members 2" in line and "f1 B" in line


def test_promote_leaves_out_trials_validated_elsewhere(run, tmp_path, caplog):
    storage = copy_sqlite(Path(run.storage.removeprefix("sqlite:///")), tmp_path / "copy.db")
    study = optuna.load_study(study_name=run.name, storage=storage)
    ranked = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    # a trial from another validation split (same files otherwise), ranked last
    worst = ranked[-1]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=worst.value - 0.01, params=worst.params,
        distributions=worst.distributions,
        user_attrs={**worst.user_attrs, "val_hash": "0000000000000000"}))
    other = study.trials[-1]
    with caplog.at_level(logging.WARNING, logger="hpo"):
        result = promote(study, name="same-images", method="topk", max_members=5, top=10,
                         artifacts=run.artifacts)
    assert other.number not in result.manifest["candidate_trials"]
    assert result.manifest["candidates"] == len(ranked)
    assert f"trial {other.number} left out of the ensemble: it validated on other images" \
        in caplog.text


def test_load_manifest_of_an_unknown_name_lists_the_known_ones(run):
    promote(run.study(), name="known", method="greedy", max_members=2, top=3,
            artifacts=run.artifacts)
    with pytest.raises(EnsembleError) as err:
        load_manifest("nope", artifacts=run.artifacts)
    message = str(err.value)
    assert message.startswith(f"no ensemble named 'nope' in {run.artifacts / 'ensembles'}; "
                              "available: ")
    assert "known" in message and "\n" not in message
    with pytest.raises(EnsembleError, match="none yet"):
        load_manifest("nope", artifacts=run.root / "empty")
    assert list_ensembles(artifacts=run.root / "empty") == []


def test_promote_rejects_bad_names(run):
    with pytest.raises(EnsembleError, match="ensemble name '../x' is not allowed"):
        promote(run.study(), name="../x", artifacts=run.artifacts)


def test_promote_without_a_completed_trial(tiny_data, tmp_path):
    study_file = write_study_file(tmp_path, "nothing-done")
    storage = f"sqlite:///{tmp_path}/empty.db"
    # created (with its enqueued first trial WAITING) but never run
    create_or_resume(load_study_spec(study_file), storage=storage,
                     train_dir=str(tiny_data / "train"), heartbeat_interval=None)
    message = ("study nothing-done has no completed trial; run hpo launch --study nothing-done "
               "first")
    with pytest.raises(EnsembleError) as err:
        promote(optuna.load_study(study_name="nothing-done", storage=storage),
                name="x", artifacts=tmp_path / "artifacts")
    assert str(err.value) == message

    out = hpo_cli("promote", "--study", str(study_file), "--storage", storage, "--artifacts",
                  str(tmp_path / "artifacts"))
    assert_one_line_error(out, message)
    assert not (tmp_path / "artifacts" / "ensembles").exists()
