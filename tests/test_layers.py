"""Dependencies run one way: cli → search, report → engine, eval → methods, checkpoints, recipe.

Every module's imports (top level and inside functions, absolute and relative) are read with
`ast` — nothing is imported — and each must point to a layer its own layer may use. search and
report sit side by side: what both need (the study format, Pareto and error-bar statistics)
lives below them. The core never imports `automerge.zoo`; only the CLI layer may.

A new module belongs to the layer of its package; a new top-level module must be given a layer
in `TOP_LEVEL` below (the test says so by name).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "automerge"

# layer -> the layers it may import (its own included)
ALLOWED = {
    "base": {"base"},
    "model": {"base", "model"},
    "format": {"base", "model", "format"},
    "engine": {"base", "model", "engine"},
    "eval": {"base", "model", "eval"},
    "search": {"base", "model", "format", "engine", "eval", "search"},
    "report": {"base", "model", "format", "engine", "eval", "report"},
    "zoo": {"base", "model", "format", "engine", "eval", "zoo"},
    "cli": {"base", "model", "format", "engine", "eval", "search", "report", "zoo", "cli"},
}
# top-level modules and packages of automerge -> their layer
TOP_LEVEL = {
    "": "base",  # the package itself (__version__)
    "errors": "base", "files": "base", "layers": "base", "_lazy": "base", "pysource": "base", "jsonl": "base", "names": "base",
    "spaces": "base",  # the shipped search spaces (data)
    "methods": "model", "checkpoints": "model", "recipe": "model", "mergekit_config": "model",
    "fisher": "model", "specialists": "model", "task_vectors": "model",
    "study_format": "format", "pareto": "format", "noise": "format",
    "engine": "engine", "heal": "engine", "resident": "engine", "stream": "engine",
    "eval": "eval",
    "search": "search",
    "report": "report",
    "zoo": "zoo",
    "cli": "cli", "__main__": "cli", "merge_cli": "cli", "search_job": "cli", "analyze_cli": "cli",
    "heal_cli": "cli",
}
CLI_SUBMODULES = {"cli"}  # search.cli, report.cli, eval.cli: the command line of their package


def layer_of(module: str) -> str:
    """The layer of a dotted module name under automerge ("automerge.search.cli" -> "cli")."""
    parts = module.split(".")[1:]
    if len(parts) >= 2 and parts[-1] in CLI_SUBMODULES:
        return "cli"
    top = parts[0] if parts else ""
    if top not in TOP_LEVEL:
        raise AssertionError(f"automerge.{top} has no layer; give it one in TOP_LEVEL of {Path(__file__).name}")
    return TOP_LEVEL[top]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every automerge import in the file; `from automerge.search import
    worker` counts as an import of the module automerge.search.worker."""
    module = module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}", root)]
            out += [(node.lineno, t) for t in subs or [target]]
    return [(line, t) for line, t in out if t == "automerge" or t.startswith("automerge.")]


def _is_module(dotted: str, root: Path) -> bool:
    path = root.parent / Path(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import against the direction, as `file:line: module (layer) imports target (layer)`."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        mine = layer_of(module)
        for line, target in imports_of(path, root):
            theirs = layer_of(target)
            if theirs not in ALLOWED[mine]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {module} ({mine}) imports {target} ({theirs})")
    return bad


def test_imports_run_one_way():
    bad = violations()
    assert not bad, "imports against cli → search, report → engine, eval → methods, checkpoints, recipe:\n" \
        + "\n".join(bad)


def test_core_never_imports_the_zoo():
    bad = [v for v in violations() if v.endswith("(zoo)")]
    assert not bad, "\n".join(bad)
    assert "zoo" not in ALLOWED["search"] | ALLOWED["report"] | ALLOWED["eval"] | ALLOWED["engine"]


PLOTS = "automerge.report.plots (report) imports"


@pytest.mark.parametrize("source, culprit", [
    ("from automerge.search.pareto import hypervolume\n", f"{PLOTS} automerge.search.pareto"),
    ("def f():\n    from automerge.search import worker\n", f"{PLOTS} automerge.search.worker"),
    ("from ..search import run\n", f"{PLOTS} automerge.search.run"),
    ("import automerge.zoo.build\n", f"{PLOTS} automerge.zoo.build (zoo)"),
])
def test_the_check_catches_an_import_against_the_direction(tmp_path, source, culprit):
    """The check itself can fail: a report module importing search (the old code did: report/
    pareto_table.py imported search.pareto, search/run.py imported report) or the zoo."""
    pkg = tmp_path / "automerge"
    for sub in ("", "report", "search", "zoo"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    for name in ("pareto", "worker", "run"):
        (pkg / "search" / f"{name}.py").write_text("")
    (pkg / "zoo" / "build.py").write_text("")
    (pkg / "report" / "plots.py").write_text(source)
    bad = violations(pkg)
    assert len(bad) == 1 and culprit in bad[0], bad


def test_the_cli_layer_may_import_anything(tmp_path):
    pkg = tmp_path / "automerge"
    for sub in ("", "report", "search"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "search" / "run.py").write_text("")
    (pkg / "report" / "html.py").write_text("")
    (pkg / "search" / "cli.py").write_text("from automerge.report import html\nfrom . import run\n")
    (pkg / "search_job.py").write_text("from automerge.report.html import x\nfrom automerge.search.run import y\n")
    assert violations(pkg) == []
