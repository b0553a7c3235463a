"""The design's shape, checked: sizes, private names, who imports click and who runs ``fit``.

DESIGN.md "Boundaries" and "Borrowed habits" 5-7 as tests. Each check reports every offender
as ``path:line``, so one run lists all there is to fix. The layering between packages is
import-linter's job (``[tool.importlinter]`` in pyproject.toml); the last tests show its
contracts bite and hold.
"""
from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trainer

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "hpo", "bench")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# A function may run longer when it says why, on a comment line inside it: "# long: <why>".
LONG_REASON = re.compile(r"#\s*long:\s*\S")
# The one module that runs training for a study, and the benchmark that times training itself.
FIT_CALLERS = {"hpo/objective.py", "bench/throughput.py"}


@functools.cache
def _sources(package: str) -> tuple[tuple[str, str, ast.Module], ...]:
    """(path relative to the repository, text, syntax tree) of every module of ``package``."""
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        out.append((path.relative_to(REPO).as_posix(), text, ast.parse(text, filename=str(path))))
    return tuple(out)


def _all_sources():
    return [src for package in PACKAGES for src in _sources(package)]


def _report(offenders: list[str], rule: str) -> str:
    return f"{len(offenders)} offender(s) of: {rule}\n  " + "\n  ".join(offenders)


def _imported_modules(node: ast.AST) -> list[str]:
    """The absolute module names an import statement names (relative ones are skipped)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_under_500_lines(package):
    offenders = [f"{path}:{len(text.splitlines())}: {len(text.splitlines())} lines"
                 for path, text, _ in _sources(package)
                 if len(text.splitlines()) > MAX_MODULE_LINES]
    assert not offenders, _report(offenders, f"a module holds at most {MAX_MODULE_LINES} lines; "
                                             "split it along its concerns")


@pytest.mark.parametrize("package", PACKAGES)
def test_functions_read_in_one_screen(package):
    offenders = []
    for path, text, tree in _sources(package):
        lines = text.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = lines[node.lineno - 1:node.end_lineno]
            if len(body) > MAX_FUNCTION_LINES and not any(LONG_REASON.search(b) for b in body):
                offenders.append(f"{path}:{node.lineno}: {node.name} has {len(body)} lines")
    assert not offenders, _report(
        offenders, f"a function holds at most {MAX_FUNCTION_LINES} lines (def line to last "
                   "line) unless a '# long: <why>' comment inside it says why")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_a_private_name(package):
    offenders = []
    for path, _, tree in _sources(package):
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = "." * node.level + (node.module or "")
            offenders += [f"{path}:{node.lineno}: from {source} import {alias.name}"
                          for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not offenders, _report(offenders, "a name with a leading underscore is its module's "
                                             "own; make it public or move the caller in")


def test_only_the_cli_imports_click():
    offenders = [f"{path}:{node.lineno}: imports {module}"
                 for path, _, tree in _all_sources() if path != "hpo/cli.py"
                 for node in ast.walk(tree) for module in _imported_modules(node)
                 if _is_in(module, "click")]
    assert not offenders, _report(offenders, "only hpo/cli.py imports click; raise an HpoError "
                                             "and let the CLI turn it into a message")


def _trainer_names(tree: ast.Module) -> set[str]:
    """Local names bound to the trainer package or one of its modules by ``import``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_in(alias.name, "trainer"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def _dotted_root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_only_the_objective_runs_fit():
    offenders = []
    for path, _, tree in _all_sources():
        if path in FIT_CALLERS or path.startswith("trainer/"):
            continue
        bound = _trainer_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and _is_in(node.module,
                                                                          "trainer"):
                offenders += [f"{path}:{node.lineno}: from {node.module} import fit"
                              for alias in node.names if alias.name == "fit"]
            elif (isinstance(node, ast.Attribute) and node.attr == "fit"
                  and _dotted_root(node.value) in bound):
                offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, _report(offenders, "only hpo/objective.py runs trainer.fit (and "
                                             "bench/throughput.py, which times it)")


def test_hpo_uses_only_what_the_trainer_package_exports():
    exported = set(trainer.__all__)
    offenders = []
    for path, _, tree in _sources("hpo"):
        bound = _trainer_names(tree)
        for node in ast.walk(tree):
            offenders += [f"{path}:{node.lineno}: imports {module}"
                          for module in _imported_modules(node)
                          if module.startswith("trainer.")]
            if isinstance(node, ast.ImportFrom) and node.module == "trainer" and not node.level:
                offenders += [f"{path}:{node.lineno}: from trainer import {alias.name}"
                              for alias in node.names
                              if alias.name != "*" and alias.name not in exported]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in bound and node.attr not in exported):
                offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, _report(offenders, "hpo imports only names in trainer.__all__, from "
                                             "the package itself; export what hpo needs")


def _lint_imports_in(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.is_file() else [sys.executable, "-m", "importlinter.cli"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*command, "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _append(path: Path, line: str) -> int:
    """Append ``line`` to a module; returns its line number."""
    text = path.read_text(encoding="utf-8")
    text = text if text.endswith("\n") else text + "\n"
    path.write_text(text + line + "\n", encoding="utf-8")
    return len(text.splitlines()) + 1


def test_import_contracts_bite(tmp_path):
    """A copy of the packages with forbidden imports added fails lint-imports, naming them."""
    pytest.importorskip("importlinter")
    for package in ("trainer", "hpo"):
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    optuna_line = _append(tmp_path / "trainer" / "layout.py", "import optuna  # noqa")
    click_line = _append(tmp_path / "hpo" / "__init__.py", "import click  # noqa")
    engine_line = _append(tmp_path / "hpo" / "__init__.py", "import trainer.engine  # noqa")
    out = _lint_imports_in(tmp_path)
    report = out.stdout + out.stderr
    assert out.returncode != 0, report
    assert "trainer knows nothing of hpo, Optuna or click BROKEN" in report, report
    assert f"trainer.layout -> optuna (l.{optuna_line})" in report, report
    assert f"hpo -> click (l.{click_line})" in report, report
    assert f"hpo -> trainer.engine (l.{engine_line})" in report, report


def test_import_contracts_hold(capsys):
    """The repository itself keeps every contract in pyproject.toml."""
    cli = pytest.importorskip("importlinter.cli")
    code = cli.lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True,
                            no_logo=True)
    assert code == 0, capsys.readouterr().out
