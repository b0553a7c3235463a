"""Huge and ambiguous study files are refused while parsing, before any storage is touched: a
file over MAX_STUDY_BYTES, an over-long string, a key given twice in one mapping."""
from __future__ import annotations

import pytest

from hpo.errors import SpecError
from hpo.studyfile.files import (
    MAX_DESCRIPTION_CHARS,
    MAX_STRING_CHARS,
    MAX_STUDY_BYTES,
    list_studies,
    load_study_spec,
    parse_study_text,
)
from tests.conftest import REPO, hpo_cli

DOC = (REPO / "docs" / "errors.md").read_text().replace("\\|", "|")
LR = "space:\n  optim.lr: {type: float, low: 0.001, high: 0.1}\n"
TOO_BIG = (f"bytes, but a study file may be at most {MAX_STUDY_BYTES:,} bytes (256 KiB); shorten "
           "it (a study needs a few KiB: keep long notes out of the file)")


def _refusal(path) -> str:
    with pytest.raises(SpecError) as info:
        load_study_spec(str(path))
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_file_over_the_limit_is_refused_before_parsing(tmp_path):
    study = tmp_path / "huge.yaml"
    study.write_text("n_trials: 3\ndescription: " + "x" * 2_000_000 + "\n" + LR)
    size = study.stat().st_size
    assert _refusal(study) == f"{study} is {size:,} {TOO_BIG}"
    assert TOO_BIG in DOC
    # the same bound holds for a study text recorded in a storage
    with pytest.raises(SpecError, match=f"^stored is {size:,} bytes, but a study file may be"):
        parse_study_text(study.read_text(), name="huge", path="stored")


def test_the_size_limit_is_exact_and_counts_bytes(tmp_path):
    head = "n_trials: 3\n" + LR
    comment = "# " + "\u00e9" * 40 + "\n"  # 83 bytes, 43 characters
    body = comment * ((MAX_STUDY_BYTES - len(head) - 2) // len(comment.encode()))
    pad = MAX_STUDY_BYTES - len(head.encode()) - len(body.encode())
    text = head + body + "#" * (pad - 1) + "\n"
    study = tmp_path / "full.yaml"
    study.write_text(text, encoding="utf-8")
    assert study.stat().st_size == MAX_STUDY_BYTES
    assert load_study_spec(str(study)).n_trials == 3  # at the limit: fine
    study.write_text(text + "\n", encoding="utf-8")
    assert _refusal(study) == f"{study} is {MAX_STUDY_BYTES + 1:,} {TOO_BIG}"


def test_a_long_description_within_the_file_limit(tmp_path):
    study = tmp_path / "notes.yaml"
    study.write_text("n_trials: 3\ndescription: " + "d" * MAX_DESCRIPTION_CHARS + "\n" + LR)
    assert load_study_spec(str(study)).description == "d" * MAX_DESCRIPTION_CHARS
    study.write_text("n_trials: 3\ndescription: " + "d" * 20_000 + "\n" + LR)
    message = _refusal(study)
    assert message == (f"{study}: description: the value at line 2 is 20,000 characters long, "
                       "but the description may be at most 10,000 characters; shorten it")
    assert message.replace(f"{tmp_path}/notes.yaml", "bad.yaml") in DOC


def test_other_strings_are_bounded_too(tmp_path):
    study = tmp_path / "long.yaml"
    name = "m" * (MAX_STRING_CHARS + 1)
    study.write_text(f"n_trials: 3\nspace:\n  model.name: {{type: categorical, choices: "
                     f"[resnet18, {name}]}}\n")
    assert _refusal(study) == (
        f"{study}: space: model.name: choices[1]: the value at line 3 is 1,001 characters "
        "long, but a value other than the description may be at most 1,000 characters; "
        "shorten it")
    study.write_text("n_trials: 3\n" + LR + "fixed:\n  ? " + "k" * 1500 + "\n  : 1\n")
    assert _refusal(study) == (
        f"{study}: fixed: the key '{'k' * 28}...{'k' * 28}' at line 5 is 1,500 characters long, "
        "but a key may be at most 1,000 characters; shorten it")


@pytest.mark.parametrize(("text", "message"), [
    ("n_trials: 3\n" + LR + "n_trials: 5\n",
     "key 'n_trials' is given twice (lines 1 and 4)"),
    ("n_trials: 3\nspace:\n  optim.lr: {type: float, low: 0.001, high: 0.1}\n"
     "  optim.lr: {type: float, low: 0.01, high: 0.1}\n",
     "space: key 'optim.lr' is given twice (lines 3 and 4)"),
    ("n_trials: 3\nspace:\n  optim.lr: {type: float, low: 0.001, low: 0.01, high: 0.1}\n",
     "space: optim.lr: key 'low' is given twice (both on line 3)"),
    ("n_trials: 3\n" + LR + "fixed:\n  data: {img_size: [64, 48]}\n  epochs: 2\n"
     "  data: {img_size: [32, 24]}\n", "fixed: key 'data' is given twice (lines 5 and 7)"),
    ("n_trials: 3\n" + LR + '"n_trials": 4\n', "key 'n_trials' is given twice (lines 1 and 4)"),
])
def test_a_key_given_twice_is_refused(text, message, tmp_path):
    study = tmp_path / "dup.yaml"
    study.write_text(text)
    assert _refusal(study) == (f"{study}: {message}; YAML would keep only the last silently, "
                               "so keep one of them")
    with pytest.raises(SpecError, match="is given twice"):  # a recorded text, the same
        parse_study_text(text, name="dup", path="stored")


def test_anchors_are_still_refused(tmp_path):
    study = tmp_path / "anchor.yaml"
    study.write_text("n_trials: 3\nspace: &s\n  optim.lr: {type: float, low: 0.001, high: 0.1}\n")
    assert "uses the YAML anchor &s at line 2" in _refusal(study)


def test_every_shipped_study_still_loads(tmp_path):
    shipped = sorted((REPO / "studies").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"smoke", "effnet"}
    assert {p.stem for p in shipped} <= set(list_studies(studies_dir=REPO / "studies"))
    for path in shipped:
        spec = load_study_spec(str(path))
        assert spec.text == path.read_text()
        # what a storage recorded parses to the same study
        assert parse_study_text(spec.text, name=path.stem, path=spec.path) == spec


def test_windows_line_ends_read_as_before(tmp_path):
    study = tmp_path / "crlf.yaml"
    study.write_bytes(("n_trials: 3\n" + LR).replace("\n", "\r\n").encode())
    spec = load_study_spec(str(study))
    assert spec.text == study.read_text() == "n_trials: 3\n" + LR


@pytest.mark.parametrize("case", ["duplicate key", "huge file"])
def test_launch_refuses_before_creating_the_database(case, tmp_path):
    study = tmp_path / "bad.yaml"
    if case == "duplicate key":
        study.write_text("n_trials: 3\n" + LR + "n_trials: 5\n")
        message = ("bad.yaml: key 'n_trials' is given twice (lines 1 and 4); YAML would keep "
                   "only the last silently, so keep one of them")
    else:
        study.write_text("n_trials: 3\ndescription: " + "x" * 2_000_000 + "\n" + LR)
        message = f"bad.yaml is {study.stat().st_size:,} {TOO_BIG}"
    db = tmp_path / "hpo.db"
    out = hpo_cli("launch", "--study", str(study), "--storage", f"sqlite:///{db}", cwd=tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stderr.strip().splitlines() == [f"Error: {message}"]
    assert "Traceback" not in out.stderr
    assert not db.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
    assert (message if case == "duplicate key" else TOO_BIG) in DOC
