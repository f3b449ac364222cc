"""The `automerge` entry point: user errors print one clear line and exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "automerge.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_missing_recipe_is_a_clear_error(tmp_path):
    result = run("merge", str(tmp_path / "nope.yaml"), str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_lists_commands(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "merge" in result.stdout
