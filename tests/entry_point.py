"""The installed `automerge` command for subprocess tests (a plain module, shared by test dirs).

The console script is the one `pip install -e .` writes next to the interpreter; PYTHONPATH puts
this checkout first, so the script imports the tree under test (in CI the editable install
points at the clone itself, so both are the same).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def console_script() -> Path:
    """The `automerge` script of this interpreter's environment; a missing one is a failed install."""
    script = Path(sys.executable).parent / "automerge"
    assert script.is_file(), (f"{script} does not exist: install the package (`make venv`, i.e. "
                              f"pip install -e '.[dev]') so the `automerge` console script is there")
    return script


def automerge_cmd(module: bool = False) -> list[str]:
    """The command line that runs automerge: the console script, or `python -m automerge`."""
    return [sys.executable, "-m", "automerge"] if module else [str(console_script())]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for an `automerge` subprocess: offline, one thread, this checkout first."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1", TERM="dumb",
                **extra)
