"""The wheel: built from the sources, installed (not editable) into a fresh venv outside the
repository, it holds every module and the shipped studies, and ``hpo launch`` runs a trial.

The fresh venv gets the dependencies without a download: a ``.pth`` file adds this interpreter's
site-packages. Python does not process ``.pth`` files inside a directory added that way, so the
editable ``hpo`` of the development venv stays invisible; only the wheel's is imported.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO

pytestmark = pytest.mark.slow
SOURCES = ("pyproject.toml", "README.md", "hpo", "trainer", "studies")


def build_args() -> list[str]:
    """Build with the setuptools installed here when it can make wheels, else in isolation.

    A fresh ``python -m venv`` of Python 3.11 holds setuptools 65 and no ``wheel``; pip then
    fetches ``setuptools>=68`` from its configured index, as ``pip install -e .`` does.
    """
    try:
        version = tuple(int(v) for v in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return []
    builtin_wheel = version >= (70, 1)  # setuptools ships bdist_wheel since 70.1
    if builtin_wheel or (version >= (68, 0) and importlib.util.find_spec("wheel") is not None):
        return ["--no-build-isolation", "--no-index"]
    return []


def run(args: list[str], *, cwd: Path, env: dict[str, str],
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path | dict[str, str]]:
    """Build the wheel from a copy of the sources and install it into a fresh venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HPO_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(HPO_CACHE_DIR=str(tmp / "cache"), HF_HUB_OFFLINE="1")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    # pip wheel needs no `build` package
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *build_args(), "-q",
         "-w", str(tmp / "dist"), str(src)], cwd=tmp, env=env)
    wheel = next((tmp / "dist").glob("hpo-*.whl"))

    root = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    # install before the .pth exists, so pip sees no `hpo` there (the dev venv's editable one)
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], cwd=tmp, env=env)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=tmp, env=env).stdout.strip()
    Path(purelib, "_hpo_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return {"tmp": tmp, "wheel": wheel, "root": root, "python": python, "env": env}


def test_wheel_holds_every_module_and_the_studies(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for package in ("hpo", "trainer"):
        for path in (REPO / package).rglob("*.py"):
            if "__pycache__" not in path.parts:
                rel = path.relative_to(REPO).as_posix()
                assert rel in names, f"{rel} is not in the wheel; list its package in pyproject"
    for path in (REPO / "studies").glob("*.yaml"):
        assert f"hpo/studies/{path.name}" in names


def test_installed_package_and_studies_are_found(installed):
    tmp, python, env = installed["tmp"], installed["python"], installed["env"]
    root = Path(installed["root"]).resolve()
    out = run([str(python), "-c", "import hpo; print(hpo.__file__)"], cwd=tmp, env=env)
    assert Path(out.stdout.strip()).resolve().is_relative_to(root), out.stdout
    code = ("from hpo.studyfile.files import find_study_file, list_studies, load_study_spec; "
            "print(find_study_file('smoke')); print(','.join(list_studies())); "
            "print(load_study_spec('smoke').n_trials)")
    found, names, n_trials = run([str(python), "-c", code], cwd=tmp, env=env).stdout.split()
    assert Path(found).resolve().is_relative_to(root), found  # not the checkout's studies/
    assert found.endswith("site-packages/hpo/studies/smoke.yaml"), found
    assert {"effnet", "resnet", "smoke", "vit"} <= set(names.split(","))
    assert n_trials == "6"


def test_installed_hpo_launch_runs_a_trial(installed):
    tmp, python, env = installed["tmp"], installed["python"], installed["env"]
    run([str(python), "-m", "trainer.synth", "--out", str(tmp / "demo"), "--people", "18",
         "--eval-people", "4", "--height", "64", "--width", "48"], cwd=tmp, env=env)
    storage = f"sqlite:///{tmp / 'hpo.db'}"
    hpo = Path(installed["root"]) / "bin" / "hpo"
    run([str(hpo), "launch", "--study", "smoke", "--data", str(tmp / "demo" / "train"),
         "--n-trials", "1", "--storage", storage, "--artifacts", str(tmp / "artifacts")],
        cwd=tmp, env=env, timeout=600)
    study = optuna.load_study(study_name="smoke", storage=storage)
    states = [t.state for t in study.trials]
    assert states and states[0] in (TrialState.COMPLETE, TrialState.PRUNED), states
