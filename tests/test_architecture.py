"""The design's shape, checked: sizes, private names, who imports click and who runs ``fit``.

docs/architecture.md ("Packages and the one-way flow", "Habits") as tests. Each check
reports every offender as ``path:line``, so one run lists all there is to fix. The import graph
of hpo and trainer (every import, those inside functions too) has no cycle and no import runs
up a layer; import-linter checks the same contracts (``[tool.importlinter]`` in
pyproject.toml), and the last tests show its contracts bite and hold.
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
FIT_CALLERS = {"hpo/run/objective.py", "bench/throughput.py"}


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


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of ``node`` that hold code: docstrings, comments and blank lines do not count."""
    skip: set[int] = set()
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if (isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for number in range(node.lineno, node.end_lineno + 1)
               if number not in skip and lines[number - 1].strip()
               and not lines[number - 1].strip().startswith("#"))


@pytest.mark.parametrize("package", PACKAGES)
def test_functions_read_in_one_screen(package):
    offenders = []
    for path, text, tree in _sources(package):
        lines = text.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = lines[node.lineno - 1:node.end_lineno]
            code = _code_lines(node, lines)
            if code > MAX_FUNCTION_LINES and not any(LONG_REASON.search(b) for b in body):
                offenders.append(f"{path}:{node.lineno}: {node.name} has {code} code lines")
    assert not offenders, _report(
        offenders, f"a function holds at most {MAX_FUNCTION_LINES} lines of code (docstrings, "
                   "comments and blank lines aside) unless a '# long: <why>' comment says why")


def test_the_size_rule_counts_code_not_prose():
    text = ('def f():\n    """Doc.\n\n    More doc.\n    """\n    # why\n\n    x = 1\n'
            '    return x\n')
    tree = ast.parse(text)
    assert _code_lines(tree.body[0], text.splitlines()) == 3


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
                 for path, _, tree in _all_sources() if not path.startswith("hpo/cli/")
                 for node in ast.walk(tree) for module in _imported_modules(node)
                 if _is_in(module, "click")]
    assert not offenders, _report(offenders, "only hpo/cli/ imports click; raise an HpoError "
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
    assert not offenders, _report(offenders, "only hpo/run/objective.py runs trainer.fit (and "
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


def _copy_packages(tmp_path: Path) -> None:
    """The packages and pyproject.toml, copied for lint-imports to check an edited copy."""
    pytest.importorskip("importlinter")
    for package in ("trainer", "hpo"):
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")


def test_import_contracts_bite(tmp_path):
    """A copy of the packages with forbidden imports added fails lint-imports, naming them."""
    _copy_packages(tmp_path)
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


# The layers of hpo, top to bottom (pyproject.toml's "layers" contract says the same).
LAYERS = ("hpo.cli", "hpo.ops", "hpo.ensemble", "hpo.run", "hpo.studyfile", "hpo.store",
          "hpo.errors")


def _module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import between modules of hpo and trainer, in functions too (TYPE_CHECKING aside),
    relative ones resolved; an edge to a package's ``__init__`` names the package."""
    modules = {_module_name(path): (path, tree)
               for package in ("hpo", "trainer") for path, _, tree in _sources(package)}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, tree) in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test)
                       for child in node.body for n in ast.walk(child)}
        targets = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            targets.update(t for t in map(resolve, names) if t and t != module)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges to a package's ``__init__`` dropped: a package that gathers its modules is not
    a cycle with them (the import system loads the package first either way)."""
    packages = {m for m in graph if any(other.startswith(m + ".") for other in graph)}
    return {m: {t for t in targets if t not in packages} for m, targets in graph.items()}


def test_no_import_cycles():
    cycles = _cycles(_without_package_edges(_import_graph()))
    assert not cycles, _report([" <-> ".join(c) for c in cycles],
                               "no import cycles (function-level imports count too); move the "
                               "shared name down to the layer both use")


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if _is_in(module, layer)), None)


def test_nothing_imports_upward_across_the_layers():
    offenders = []
    for module, targets in _import_graph().items():
        own = _layer(module)
        if own is None:
            continue
        offenders += [f"{module} -> {target}" for target in sorted(targets)
                      if (_layer(target) is not None and _layer(target) < own)]
    assert not offenders, _report(offenders, "imports flow down: " + " > ".join(LAYERS))


def test_every_hpo_module_sits_in_a_layer():
    loose = [m for m in _import_graph() if _is_in(m, "hpo") and m != "hpo" and _layer(m) is None]
    assert not loose, _report(loose, "every module of hpo belongs to one of " + ", ".join(LAYERS))


def test_the_layers_contract_bites(tmp_path):
    """An upward import (the store reaching for the run layer) breaks the layers contract."""
    _copy_packages(tmp_path)
    line = _append(tmp_path / "hpo" / "store" / "records.py", "import hpo.run.study  # noqa")
    out = _lint_imports_in(tmp_path)
    report = out.stdout + out.stderr
    assert out.returncode != 0, report
    assert "hpo in layers: cli > ops > ensemble > run > studyfile > store > errors BROKEN" \
        in report, report
    assert f"hpo.store.records -> hpo.run.study (l.{line})" in report, report
