"""Prediction: voting, one-member ensembles equal their trial, and `hpo promote` + `hpo predict`
through the CLI (in-process, as strict as a process) with every error as one line, exit code 1,
no file left."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpo.ensemble.predict import combine, predict_submission
from hpo.ensemble.promote import promote
from hpo.errors import EnsembleError
from hpo.store.artifacts import ArtifactPaths, file_sha256
from hpo.store.manifest import load_manifest
from tests.conftest import hpo_cli
from tests.hpo.test_ensemble import StudyRun, assert_one_line_error, shared_study_run
from trainer import predict, read_eval


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory, _session_cache) -> StudyRun:
    return shared_study_run(tiny_data, tmp_path_factory, _session_cache)


@pytest.fixture(scope="module")
def pair(run) -> dict:
    """A two-member ensemble (top-k) of the study, promoted in-process."""
    result = promote(run.study(), name="pair", method="topk", max_members=2, top=3,
                     artifacts=run.artifacts)
    assert len(result.manifest["members"]) == 2
    return result.manifest


def _no_files_left(folder: Path) -> None:
    assert list(folder.iterdir()) == [], list(folder.iterdir())


# ---------------------------------------------------------------------------------------------
# voting


def test_soft_and_hard_voting_with_weights():
    def onehot(classes, conf=0.6):
        p = np.full((len(classes), 18), (1 - conf) / 17)
        p[np.arange(len(classes)), classes] = conf
        return p

    a = onehot([1, 1, 2])
    b = onehot([3, 1, 4], conf=0.9)
    c = onehot([3, 2, 5], conf=0.5)
    # soft: the weighted mean; b's confidence outweighs a
    assert combine([a, b], [0.5, 0.5], vote="soft").tolist() == [3, 1, 4]
    assert combine([a, b], [0.9, 0.1], vote="soft").tolist() == [1, 1, 2]
    # hard: weighted majority of the argmaxes
    assert combine([a, b, c], [0.6, 0.2, 0.2], vote="hard").tolist() == [1, 1, 2]
    assert combine([a, b, c], [0.2, 0.4, 0.4], vote="hard").tolist() == [3, 1, 4]
    # hard tie (1 against 3, one vote each): the tied class with the higher mean probability
    assert combine([a, b], [1, 1], vote="hard").tolist() == [3, 1, 4]
    # weights need not sum to 1
    assert combine([a, b, c], [3, 1, 1], vote="hard").tolist() == [1, 1, 2]
    with pytest.raises(EnsembleError, match="vote is 'median', but must be soft or hard"):
        combine([a], [1], vote="median")
    with pytest.raises(EnsembleError, match="one weight per member"):
        combine([a, b], [1])


# ---------------------------------------------------------------------------------------------
# the real study


def test_one_member_ensemble_equals_its_trial(run, tiny_data, tmp_path):
    result = promote(run.study(), name="solo", method="topk", max_members=1, top=3,
                     artifacts=run.artifacts)
    (member,) = result.manifest["members"]
    assert member["weight"] == 1.0
    eval_dir = tiny_data / "eval"
    by_manifest = predict_submission(ensemble="solo", eval_dir=eval_dir,
                                     out=tmp_path / "ens.csv", device="cpu",
                                     artifacts=run.artifacts)
    by_trial = predict_submission(study=str(run.study_file), trial=member["trial"],
                                  eval_dir=eval_dir, out=tmp_path / "trial.csv", device="cpu",
                                  storage=run.storage, artifacts=run.artifacts)
    pd.testing.assert_frame_equal(by_manifest, by_trial)
    assert (tmp_path / "ens.csv").read_bytes() == (tmp_path / "trial.csv").read_bytes()

    frame = read_eval(eval_dir)
    probs = predict(member["checkpoint"], list(frame["path"]), device="cpu")
    assert probs.shape == (len(frame), 18)
    assert by_manifest["ans"].tolist() == probs.argmax(axis=1).tolist()
    assert by_manifest["ImageID"].tolist() == frame["ImageID"].tolist()
    hard = predict_submission(ensemble="solo", eval_dir=eval_dir, out=tmp_path / "hard.csv",
                              vote="hard", device="cpu", artifacts=run.artifacts)
    assert hard["ans"].tolist() == by_manifest["ans"].tolist()


def test_two_members_are_the_weighted_mean_of_their_predictions(run, pair, tiny_data,
                                                                tmp_path):
    eval_dir = tiny_data / "eval"
    paths = list(read_eval(eval_dir)["path"])
    mixed = sum(m["weight"] * predict(m["checkpoint"], paths, tta_flip=True, device="cpu")
                for m in pair["members"])
    frame = predict_submission(ensemble="pair", eval_dir=eval_dir, out=tmp_path / "s.csv",
                               tta=True, batch_size=5, device="cpu", artifacts=run.artifacts)
    assert frame["ans"].tolist() == mixed.argmax(axis=1).tolist()


def test_predict_a_trial_that_is_not_there(run, tiny_data, tmp_path):
    with pytest.raises(EnsembleError) as err:
        predict_submission(study=str(run.study_file), trial=99, eval_dir=tiny_data / "eval",
                           out=tmp_path / "s.csv", storage=run.storage,
                           artifacts=run.artifacts)
    assert str(err.value).startswith("study ens has no trial 99 (trials: 0..")
    with pytest.raises(EnsembleError, match="give either an ensemble, or a study and a trial"):
        predict_submission(eval_dir=tiny_data / "eval", out=tmp_path / "s.csv")
    _no_files_left(tmp_path)


# ---------------------------------------------------------------------------------------------
# the CLI, as users run it


@pytest.mark.slow
def test_cli_promote_then_predict(run, tiny_data, tmp_path):
    out = hpo_cli("promote", "--study", str(run.study_file), "--name", "cli-greedy",
                  "--max-members", "3", *run.args())
    assert out.returncode == 0, out.stderr
    manifest = run.artifacts / "ensembles" / "cli-greedy.json"
    assert out.stdout.startswith("ensemble cli-greedy of study ens: greedy")
    assert "ensemble gain on B" in out.stdout
    assert out.stdout.strip().endswith(f"manifest: {manifest.resolve()}")
    assert load_manifest("cli-greedy", artifacts=run.artifacts)["method"] == "greedy"

    listed = hpo_cli("ensembles", "--artifacts", str(run.artifacts))
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("cli-greedy ") and "study ens" in line
               for line in listed.stdout.splitlines())

    sub = tmp_path / "sub" / "submission.csv"
    out = hpo_cli("predict", "--ensemble", "cli-greedy", "--data", str(tiny_data / "eval"),
                  "--out", str(sub), "--tta", "flip", "--device", "cpu", *run.args())
    assert out.returncode == 0, out.stderr
    info = pd.read_csv(tiny_data / "eval" / "info.csv", dtype={"ImageID": str})
    assert out.stdout.strip() == f"wrote {len(info)} predictions to {sub}"
    assert "images/s" in out.stderr  # a progress line per member
    frame = pd.read_csv(sub, dtype={"ImageID": str})
    assert list(frame.columns) == ["ImageID", "ans"]
    assert frame["ImageID"].tolist() == info["ImageID"].tolist()
    assert frame["ans"].between(0, 17).all() and frame["ans"].dtype.kind == "i"
    assert sorted(p.name for p in sub.parent.iterdir()) == ["submission.csv"]


@pytest.mark.slow
def test_cli_missing_eval_image(run, pair, tiny_data, tmp_path):
    eval_dir = tmp_path / "eval"
    shutil.copytree(tiny_data / "eval", eval_dir)
    info = pd.read_csv(eval_dir / "info.csv", dtype={"ImageID": str})
    gone = eval_dir / "images" / info["ImageID"].iloc[3]
    gone.unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = hpo_cli("predict", "--ensemble", "pair", "--data", str(eval_dir), "--out",
                  str(out_dir / "s.csv"), "--device", "cpu", *run.args())
    assert_one_line_error(out, f"eval image {gone} is missing (1 of {len(info)} listed in "
                               "info.csv are missing); restore it or remove its row")
    _no_files_left(out_dir)


@pytest.mark.slow
def test_cli_empty_info_csv(run, pair, tmp_path):
    eval_dir = tmp_path / "eval"
    (eval_dir / "images").mkdir(parents=True)
    (eval_dir / "info.csv").write_text("")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = hpo_cli("predict", "--ensemble", "pair", "--data", str(eval_dir), "--out",
                  str(out_dir / "s.csv"), "--device", "cpu", *run.args())
    assert_one_line_error(out, f"{eval_dir / 'info.csv'} is empty; it must list ImageID,ans "
                               "with one row per image")
    _no_files_left(out_dir)


@pytest.mark.slow
def test_cli_checkpoint_altered_since_promotion(run, pair, tiny_data, tmp_path):
    # a copy of the artifact folder: the shared one stays intact for the other tests
    artifacts = tmp_path / "artifacts"
    shutil.copytree(run.artifacts, artifacts)
    member = pair["members"][-1]
    altered = artifacts / member["artifact"]
    with open(altered, "ab") as f:
        f.write(b"\0")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = hpo_cli("predict", "--ensemble", "pair", "--data", str(tiny_data / "eval"), "--out",
                  str(out_dir / "s.csv"), "--device", "cpu", *run.args(artifacts))
    assert_one_line_error(out, f"checkpoint {altered} of trial {member['trial']} changed since "
                               f"promotion (sha256 {file_sha256(altered)[:16]}, manifest "
                               f"{member['sha256'][:16]}); re-run hpo promote")
    _no_files_left(out_dir)
    # the original folder still predicts
    assert file_sha256(ArtifactPaths(run.artifacts).root / member["artifact"]) == \
        member["sha256"]
