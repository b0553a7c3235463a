"""Sealed ensemble manifests: hpo promote records a digest of the manifest and of each field and
member key; an edit after that (a member's weight or trial, an added member, the preprocessing,
any field) is refused by every reader with one line that names the field, through the library
and through the real CLI. Unedited and older (unsealed) manifests keep working."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from hpo.ensemble.predict import predict_submission
from hpo.ensemble.promote import PromoteResult, promote
from hpo.errors import EnsembleError
from hpo.store.manifest import (
    ensemble_rows,
    list_ensembles,
    load_manifest,
    seal_manifest,
    verify_manifest,
)
from tests.conftest import REPO, hpo_cli
from tests.hpo.test_ensemble import StudyRun, shared_study_run

NAME = "top2"
FIX = f"; promote it again with: hpo promote --study ens --name {NAME}"
DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")


def _refusal(what: str) -> str:
    return f"ensemble {NAME}'s manifest was edited after hpo promote wrote it: {what}{FIX}"


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory, _session_cache) -> StudyRun:
    return shared_study_run(tiny_data, tmp_path_factory, _session_cache)


@pytest.fixture(scope="module")
def sealed(run) -> PromoteResult:
    """A two-member ensemble (top-k) of the study, promoted in-process."""
    result = promote(run.study(), name=NAME, method="topk", max_members=2, top=3,
                     artifacts=run.artifacts)
    assert len(result.manifest["members"]) == 2
    return result


def _copy(sealed: PromoteResult, folder: Path,
          edit: Callable[[dict], None] | None = None) -> Path:
    """The manifest in ``folder``/ensembles (edited by ``edit``); returns the artifact root.

    The copy's checkpoints resolve through their absolute paths, so the study's folder is
    never touched."""
    manifest = json.loads(sealed.manifest_path.read_text())
    if edit is not None:
        edit(manifest)
    path = folder / "ensembles" / f"{NAME}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def _canonical_sha(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# what promote writes


def test_promote_seals_the_manifest_it_writes(sealed):
    on_disk = json.loads(sealed.manifest_path.read_text())
    assert on_disk == sealed.manifest == load_manifest(sealed.manifest_path)
    body = {k: v for k, v in on_disk.items() if k not in ("digest", "digests")}
    assert on_disk["digest"] == _canonical_sha(body)  # sha256 of every other field
    digests = on_disk["digests"]
    assert {"format", "split", "f1", "members[0].weight", "members[1].trial",
            "members[0].preprocessing"} <= set(digests)
    assert digests["members[1].weight"] == _canonical_sha(body["members"][1]["weight"])[:16]
    assert on_disk["format"] == 1  # a sealed manifest is still format 1: old readers read it


def test_an_unedited_manifest_loads_and_predicts_even_reformatted(sealed, run, tiny_data,
                                                                   tmp_path):
    eval_dir = tiny_data / "eval"
    first = predict_submission(ensemble=NAME, eval_dir=eval_dir, out=tmp_path / "a.csv",
                               device="cpu", artifacts=run.artifacts)
    art = _copy(sealed, tmp_path / "art")
    path = art / "ensembles" / f"{NAME}.json"
    # key order and layout are not content: the digest is over canonical JSON
    path.write_text(json.dumps(json.loads(path.read_text()), sort_keys=True))
    assert load_manifest(NAME, artifacts=art) == sealed.manifest
    again = predict_submission(ensemble=NAME, eval_dir=eval_dir, out=tmp_path / "b.csv",
                               device="cpu", artifacts=art)
    assert again.equals(first)


# ---------------------------------------------------------------------------------------------
# edits, refused with the field named


def _weight(m: dict) -> None:
    m["members"][1]["weight"] = 0.9


def _trial(m: dict) -> None:
    m["members"][0]["trial"] = 99


def _added(m: dict) -> None:
    m["members"].append(copy.deepcopy(m["members"][0]))


def _preprocessing(m: dict) -> None:
    pre = m["members"][0]["preprocessing"]
    pre["img_size"] = [2 * side for side in pre["img_size"]]  # 64x48 -> 128x96


def _split(m: dict) -> None:
    m["split"]["select_images"] += 1


def _digest(m: dict) -> None:
    del m["digest"]


EDITS = {
    "weight": (_weight, "members[1].weight changed"),
    "trial": (_trial, "members[0].trial changed"),
    "added member": (_added, "a member was added (3 members now, hpo promote wrote 2)"),
    "preprocessing": (_preprocessing, "members[0].preprocessing changed"),
    "top-level field": (_split, "field 'split' changed"),
    "digest removed": (_digest, "field 'digest' was removed"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_an_edited_manifest_is_refused_naming_the_field(case, sealed, tiny_data, tmp_path):
    edit, what = EDITS[case]
    art = _copy(sealed, tmp_path / "art", edit)
    path = art / "ensembles" / f"{NAME}.json"
    before = path.read_bytes()
    out = tmp_path / "out" / "submission.csv"
    with pytest.raises(EnsembleError) as caught:
        predict_submission(ensemble=NAME, eval_dir=tiny_data / "eval", out=out, device="cpu",
                           artifacts=art)
    assert str(caught.value) == _refusal(what)
    with pytest.raises(EnsembleError) as again:
        load_manifest(path)
    assert str(again.value) == _refusal(what)
    assert not out.exists() and not out.parent.exists()
    assert path.read_bytes() == before  # nothing stored is lost or rewritten


def test_several_edits_name_the_first_three(sealed, tmp_path):
    def many(m: dict) -> None:
        _weight(m)
        _trial(m)
        _split(m)
        m["note"] = "hand-tuned"

    art = _copy(sealed, tmp_path / "art", many)
    with pytest.raises(EnsembleError) as caught:
        load_manifest(NAME, artifacts=art)
    message = str(caught.value)
    assert "\n" not in message
    assert message == _refusal("field 'split' changed, members[0].trial changed, "
                               "members[1].weight changed and 1 more")


def test_an_edited_seal_is_named_and_edited_part_digests_alone_are_harmless(sealed, tmp_path):
    def seal(m: dict) -> None:
        m["digest"] = "0" * 64

    art = _copy(sealed, tmp_path / "seal", seal)
    with pytest.raises(EnsembleError, match=re.escape(_refusal("field 'digest' changed"))):
        load_manifest(NAME, artifacts=art)

    def part(m: dict) -> None:  # the part digests only say where; the content is as sealed
        m["digests"]["members[0].weight"] = "0" * 16

    art = _copy(sealed, tmp_path / "part", part)
    assert load_manifest(NAME, artifacts=art)["members"] == sealed.manifest["members"]


def test_a_removed_member_is_named(tmp_path):
    manifest = seal_manifest({"study": "s", "members": [{"trial": 1, "weight": 0.5},
                                                        {"trial": 2, "weight": 0.5}]})
    manifest["members"].pop()
    with pytest.raises(EnsembleError) as caught:
        verify_manifest(manifest, name="e", path=tmp_path / "e.json")
    assert str(caught.value) == ("ensemble e's manifest was edited after hpo promote wrote it: "
                                 "a member was removed (1 member now, hpo promote wrote 2); "
                                 "promote it again with: hpo promote --study s --name e")


# ---------------------------------------------------------------------------------------------
# older manifests, listings, the CLI


def _unsealed(m: dict) -> None:
    del m["digest"], m["digests"]


def test_an_old_manifest_without_a_digest_still_loads_with_a_warning(sealed, tiny_data,
                                                                     tmp_path, caplog):
    art = _copy(sealed, tmp_path / "art", _unsealed)
    with caplog.at_level(logging.WARNING, logger="hpo"):
        manifest = load_manifest(NAME, artifacts=art)
        load_manifest(NAME, artifacts=art)
    assert "digest" not in manifest and manifest["members"] == sealed.manifest["members"]
    warned = [r.getMessage() for r in caplog.records if "has no digest" in r.getMessage()]
    assert len(warned) == 1, warned  # once per file, not on every read
    assert "promote it again to seal it" in warned[0]
    frame = predict_submission(ensemble=NAME, eval_dir=tiny_data / "eval",
                               out=tmp_path / "s.csv", device="cpu", artifacts=art)
    assert (tmp_path / "s.csv").is_file() and len(frame) > 0


def test_a_listing_marks_an_edited_manifest_and_lists_the_rest(sealed, tmp_path):
    art = _copy(sealed, tmp_path / "art", _weight)
    shutil.copy(sealed.manifest_path, art / "ensembles" / "intact.json")
    rows = {r["name"]: r for r in ensemble_rows(artifacts=art)}
    assert rows[NAME]["error"] == _refusal("members[1].weight changed")
    assert "error" not in rows["intact"] and len(rows["intact"]["members"]) == 2
    lines = list_ensembles(artifacts=art)
    assert lines[1].startswith(NAME) and f"(unusable: ensemble {NAME}'s manifest was " \
        "edited after hpo promote wrote it: members[1].weight changed" in lines[1]


@pytest.mark.slow
def test_cli_predict_refuses_an_edited_manifest_in_one_line(sealed, tiny_data, tmp_path):
    art = _copy(sealed, tmp_path / "art", _weight)
    out = tmp_path / "sub" / "submission.csv"
    done = hpo_cli("predict", "--ensemble", NAME, "--data", str(tiny_data / "eval"),
                   "--out", str(out), "--device", "cpu", "--artifacts", str(art))
    message = _refusal("members[1].weight changed")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stderr == f"Error: {message}\n"
    assert not out.exists() and not out.parent.exists()
    assert message in DOC, "docs/errors.md lacks the message"
