"""The installed entry point: the `automerge` console script and `python -m automerge` list every
command each sub-package registers, and every command's and sub-command's --help exits 0.

The expected commands are found independently of automerge/cli.py: every module of the package
that defines `register(app)` is imported and registered on a fresh app. Dropping one
`*.register(app)` line from automerge/cli.py (or the console script, or __main__.py) fails here.
"""

from __future__ import annotations

import importlib
import re
import subprocess

import pytest
import typer
from entry_point import ROOT, automerge_cmd, cli_env


def _modules_with_register() -> list[str]:
    mods = []
    for path in sorted((ROOT / "automerge").rglob("*.py")):
        if re.search(r"^def register\(app\b", path.read_text(encoding="utf-8"), re.M):
            rel = path.relative_to(ROOT).with_suffix("")
            mods.append(".".join(rel.parts))
    return mods


def _command_paths(cmd, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command under `cmd`, as argv prefixes (("zoo",), ("zoo", "build"), ...)."""
    out = []
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance check)
        for name, sub in sorted(cmd.commands.items()):
            out.append((*prefix, name))
            out.extend(_command_paths(sub, (*prefix, name)))
    return out


def expected_paths() -> list[tuple[str, ...]]:
    """The commands the sub-packages register, each on its own fresh app."""
    mods = _modules_with_register()
    assert len(mods) >= 6, mods  # search, report, merge, eval, fisher, zoo at least
    paths: set[tuple[str, ...]] = set()
    for mod in mods:
        app = typer.Typer()
        app.callback()(lambda: None)  # a group, so a single command keeps its name
        importlib.import_module(mod).register(app)
        paths.update(_command_paths(typer.main.get_command(app)))
    return sorted(paths)


def listed_commands(help_text: str) -> set[str]:
    """The command names of a --help page's Commands panel."""
    panel = help_text.split("Commands", 1)[1]
    return set(re.findall(r"^[│|]\s(\w[\w-]*)\s", panel, re.M))


def run(args: list[str], *, module: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([*automerge_cmd(module), *args], capture_output=True, text=True, env=cli_env(),
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("module", [False, True], ids=["console-script", "python-m"])
def test_help_lists_every_registered_command(module):
    res = run(["--help"], module=module)
    assert res.returncode == 0, res.stderr[-2000:]
    top = {p[0] for p in expected_paths()}
    assert top >= {"search", "status", "pareto", "report", "export", "merge", "eval", "fisher", "zoo"}
    assert listed_commands(res.stdout) == top, res.stdout


def test_readme_commands_exist():
    """Every `automerge NAME` the README shows is a command of the real app."""
    from automerge.cli import app

    real = {p[0] for p in _command_paths(typer.main.get_command(app))}
    shown = set(re.findall(r"^\s*automerge (\w[\w-]*)", (ROOT / "README.md").read_text(), re.M))
    assert shown and shown <= real, shown - real


def test_every_command_help_exits_0():
    """`automerge CMD [SUB] --help` for every command and sub-command (e.g. `zoo build`), all at
    once as parallel subprocesses of the console script."""
    paths = expected_paths()
    assert ("zoo", "build") in paths
    procs = {p: subprocess.Popen([*automerge_cmd(), *p, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=cli_env(), cwd=ROOT) for p in paths}
    bad = {}
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "Usage:" not in out or p[-1] not in out.split("Usage:", 1)[1].splitlines()[0]:
            bad[" ".join(p)] = (proc.returncode, err[-500:] or out[-500:])
    assert not bad, bad
