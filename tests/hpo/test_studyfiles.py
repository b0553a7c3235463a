"""Study files: finding them by name or path, reading them safely, and rebuilding a spec from
the text a study recorded."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo.errors import SpecError
from hpo.studyfile.files import (
    check_study_name,
    find_study_file,
    list_studies,
    load_study_spec,
    parse_study_text,
)

REPO_STUDIES = Path(__file__).resolve().parents[2] / "studies"
BASE: dict[str, Any] = {
    "n_trials": 5,
    "fixed": {"model": {"name": "test_resnet", "pretrained": False},
              "data": {"img_size": [64, 48]}},
    "space": {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
}


def write(tmp_path: Path, content: Any, name: str = "study") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def test_shipped_studies_are_listed():
    assert {"effnet", "vit", "resnet", "smoke"} <= set(list_studies())


@pytest.mark.parametrize("name", list_studies(studies_dir=REPO_STUDIES))
def test_study_text_round_trip(name):
    """By name, by path and from its recorded text: the same spec, the file's text kept."""
    spec = load_study_spec(name)
    assert spec.text == (REPO_STUDIES / f"{name}.yaml").read_text(encoding="utf-8")
    assert load_study_spec(REPO_STUDIES / f"{name}.yaml").text == spec.text
    assert load_study_spec(name, studies_dir=REPO_STUDIES) == spec
    assert parse_study_text(spec.text, name=spec.name, path=spec.path) == spec


def test_parse_study_text_names_its_source():
    spec = parse_study_text(yaml.safe_dump(BASE), name="mine", path="sqlite:///hpo.db:mine")
    assert spec.name == "mine" and spec.path == "sqlite:///hpo.db:mine" and spec.n_trials == 5
    with pytest.raises(SpecError, match=r"^sqlite:///hpo.db:mine is not valid YAML at line 2"):
        parse_study_text("n_trials: [1, 2\n", name="mine", path="sqlite:///hpo.db:mine")
    with pytest.raises(SpecError, match=r"^stored: unknown top-level key 'n_trial'"):
        parse_study_text("n_trial: 3\n", name="mine", path="stored")
    with pytest.raises(SpecError, match=r"^stored: the study text is a bytes, but must be a str"):
        parse_study_text(b"n_trials: 3\n", name="mine", path="stored")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Finding files


def test_find_by_path_name_and_env(tmp_path, monkeypatch):
    path = write(tmp_path, BASE, "mine")
    assert find_study_file(path) == path
    assert find_study_file("mine", studies_dir=tmp_path) == tmp_path / "mine.yaml"
    assert find_study_file("mine.yaml", studies_dir=tmp_path) == tmp_path / "mine.yaml"
    monkeypatch.setenv("HPO_STUDIES_DIR", str(tmp_path))
    assert find_study_file("mine") == tmp_path / "mine.yaml"
    assert "mine" in list_studies()
    spec = load_study_spec("mine")
    assert spec.name == "mine" and spec.n_trials == 5


def test_studies_dir_comes_first(tmp_path):
    write(tmp_path, {**BASE, "n_trials": 3}, "smoke")
    assert load_study_spec("smoke", studies_dir=tmp_path).n_trials == 3
    assert load_study_spec("smoke").n_trials == 6


def test_missing_study_lists_available(tmp_path):
    write(tmp_path, BASE, "mine")
    with pytest.raises(SpecError, match=r"study 'mien' not found \(did you mean 'mine'\?\); "
                                        r"available studies: .*mine.*smoke"):
        find_study_file("mien", studies_dir=tmp_path)
    with pytest.raises(SpecError, match=r"study file .*nowhere.yaml not found.*looked in"):
        load_study_spec(tmp_path / "nowhere.yaml")


def test_wrong_suffix(tmp_path):
    path = tmp_path / "study.txt"
    path.write_text("n_trials: 1\n")
    with pytest.raises(SpecError, match=r"must end in \.yaml or \.yml"):
        find_study_file(path)


# ---------------------------------------------------------------------------------------------
# Reading: YAML errors


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "n_trials: 4\nspace:\n  optim.lr: {type: float, low: 1\n")
    with pytest.raises(SpecError, match=rf"{re.escape(str(path.name))} is not valid YAML at "
                                        r"line \d+, column \d+"):
        load_study_spec(path)
    path = write(tmp_path, "n_trials: 4\n  metric: f1\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line 2, column 9"):
        load_study_spec(path)


@pytest.mark.parametrize(("text", "pattern"), [
    ("", r"is empty"),
    ("- 1\n- 2\n", r"must be a mapping of study keys .* but holds a list"),
    ("42\n", r"but holds the value 42"),
    ("n_trials: 1\nspace: {optim.lr: {type: float, low: .nan, high: 1}}\n",
     r"space: optim.lr: low: nan is not a finite number"),
    ("n_trials: 1\n1: 2\n", r"key 1 is not a string \(it is a int\); quote it"),
    ("n_trials: 1\ndescription: 2021-02-30\n", r"not valid YAML"),
    ("n_trials: 1\ndescription: 2021-02-03\n", r"description: datetime.date.* quote it"),
    ("n_trials: 100000000000000000000000\n", r"n_trials: 1000.* is too large"),
    ("n_trials: 1\nspace: " + "[" * 100 + "]" * 100 + "\n", r"nested more than \d+ levels"),
    ("n_trials: 1\nspace: {batch_size: {type: categorical, choices: [&a [*a]]}}\n",
     r"uses the YAML anchor &a at line 2, column 51, but study files may not use anchors or "
     r"aliases .*; write the values out in full$"),
    ("n_trials: 1\x07\n", r"not valid YAML: special characters are not allowed"),
])
def test_odd_documents(tmp_path, text, pattern):
    with pytest.raises(SpecError, match=pattern):
        load_study_spec(write(tmp_path, text))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"n_trials: 1\ndescription: \xff\n")
    with pytest.raises(SpecError, match=r"is not UTF-8 text"):
        load_study_spec(path)



BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]"
       for i in range(8)]
    + ["n_trials: 1"]
)


@pytest.mark.parametrize(("text", "pattern"), [
    (BILLION_LAUGHS, r"uses the YAML anchor &a at line 1, column 4"),
    ("n_trials: 1\nspace: *undefined\n", r"uses the YAML alias \*undefined at line 2, column 8"),
    ("base: &base {n_trials: 1}\nother:\n  <<: *base\n", r"uses the YAML anchor &base"),
    ("&top\nn_trials: 1\n", r"uses the YAML anchor &top at line 1, column 1"),
])
def test_anchors_and_aliases_are_refused(tmp_path, text, pattern):
    """A "billion laughs" document fails at its first anchor, before anything expands."""
    path = write(tmp_path, text)
    start = time.perf_counter()
    with pytest.raises(SpecError, match=pattern) as info:
        load_study_spec(path)
    assert time.perf_counter() - start < 2.0
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match=pattern):
        parse_study_text(text, name="laughs", path="stored")


# ---------------------------------------------------------------------------------------------
# Study names: a name becomes a folder (trials/<name>/), so it is kept to a safe set.

DOC = (REPO_STUDIES.parent / "docs" / "errors.md").read_text()
RULE = (r"is not allowed: a study name must match \[A-Za-z0-9\]\[A-Za-z0-9\._-\]\*, at most "
        r"100 characters \(not '\.' or '\.\.'\); ")


@pytest.mark.parametrize("name", ["smoke", "effnet_b0", "vit-2.1", "0", "A" * 100])
def test_safe_study_names_pass(name):
    assert check_study_name(name) == name


@pytest.mark.parametrize(("name", "suggestion"), [
    (".", "study"), ("..", "study"), ("", "study"), ("../evil", "evil"), ("a/b", "a-b"),
    (".hidden", "hidden"), ("-x", "x"), ("my study", "my-study"), ("x\n", "x"),
    ("café", "caf"), ("A" * 101, "A" * 100), (3, "study"),
])
def test_unsafe_study_names_fail(name, suggestion):
    with pytest.raises(SpecError, match=rf"^study name .* {RULE}rename it, e.g. to "
                                        rf"'{re.escape(suggestion)}'$") as info:
        check_study_name(name)
    assert "\n" not in str(info.value)


def _dot_message(path: Path) -> str:
    return (f"{path}: study name '.' is not allowed: a study name must match "
            "[A-Za-z0-9][A-Za-z0-9._-]*, at most 100 characters (not '.' or '..'); rename the "
            "file, e.g. to study.yaml")


def test_dot_dot_yaml_is_refused_everywhere(tmp_path):
    """``..yaml`` would put its trials in trials/./, i.e. beside the other studies."""
    path = write(tmp_path, BASE, ".")
    assert path.name == "..yaml"
    before = set(tmp_path.rglob("*"))
    for load in (find_study_file, load_study_spec):
        with pytest.raises(SpecError) as info:
            load(path)
        assert str(info.value) == _dot_message(path)
    with pytest.raises(SpecError, match=rf"^study name '\.' {RULE}rename it, e.g. to 'study'$"):
        find_study_file("..yaml", studies_dir=tmp_path)
    with pytest.raises(SpecError, match=rf"^stored: study name '\.\./x' {RULE}"):
        parse_study_text(yaml.safe_dump(BASE), name="../x", path="stored")
    assert set(tmp_path.rglob("*")) == before
    assert _dot_message(path).replace(f"{tmp_path}/", "") in DOC


def test_unsafe_file_stem_suggests_a_rename(tmp_path):
    path = write(tmp_path, BASE, "my study")
    with pytest.raises(SpecError, match=r"study name 'my study' .*rename the file, e.g. to "
                                        r"my-study\.yaml$"):
        load_study_spec(path)
    with pytest.raises(SpecError, match=r"^study name 'my study' .*e.g. to 'my-study'$"):
        load_study_spec("my study", studies_dir=tmp_path)
    renamed = path.rename(tmp_path / "my-study.yaml")
    assert load_study_spec(renamed).name == "my-study"


def test_cli_refuses_an_unsafe_study_name_before_writing(tmp_path):
    from tests.conftest import hpo_cli

    path = write(tmp_path, BASE, ".")
    out = hpo_cli("launch", "--study", str(path), "--storage", f"sqlite:///{tmp_path}/hpo.db",
                  "--artifacts", str(tmp_path / "artifacts"), "--data", str(tmp_path / "data"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [f"Error: {_dot_message(path)}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..yaml"]
