"""`automerge --help` (and every command's --help) loads no heavy library: torch alone costs seconds,
and every command pays the start-up before it can say anything. Checked by the modules a fresh
interpreter holds afterwards, not by a timing (the machine's load would make that flaky)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Loaded only where a command does the work: tensors, models, data frames, studies. (pydantic is
# not listed: typer itself imports it to parse `Annotated` options.)
HEAVY = ("torch", "transformers", "safetensors", "pandas", "optuna", "sqlalchemy", "matplotlib", "plotly",
         "lm_eval", "numpy")

_PROBE = r"""
import json, sys
import typer
from typer.testing import CliRunner
from automerge.cli import app

def paths(cmd, prefix=()):
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield (*prefix, name)
        yield from paths(sub, (*prefix, name))

runner = CliRunner()
codes = {}
for argv in [(), *paths(typer.main.get_command(app))]:
    codes[" ".join(argv) or "automerge"] = runner.invoke(app, [*argv, "--help"]).exit_code
print(json.dumps({"codes": codes, "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def test_help_imports_no_heavy_library(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"automerge", "search", "status", "merge", "fisher", "eval", "zoo"} <= set(out["codes"])
    assert set(out["codes"].values()) == {0}, out["codes"]
    loaded = sorted(set(HEAVY) & set(out["modules"]))
    assert not loaded, (f"--help imported {loaded}: move the import into the function that needs it "
                        f"(or use automerge._lazy.LazyModule), see python -X importtime -m automerge --help")


# `automerge status` reads a study: optuna, SQLAlchemy and numpy, but no model or tensor library.
STATUS_HEAVY = ("torch", "transformers", "safetensors", "pandas", "matplotlib", "plotly", "lm_eval")

_STATUS_PROBE = r"""
import json, sys
from typer.testing import CliRunner
from automerge.cli import app

res = CliRunner().invoke(app, ["status", "small", "--results-dir", sys.argv[1]])
print(json.dumps({"code": res.exit_code, "output": res.output, "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def test_status_of_a_sqlite_study_imports_no_torch(tmp_path):
    """The stored space is read without the checks that import the merge methods and the
    evaluation stack (they ran when the study was made)."""
    sys.path.insert(0, str(ROOT / "tests" / "search"))
    from search_fakes import FakeRunner
    from search_helpers import write_space

    from automerge.search.run import SearchOptions, run_search

    results = tmp_path / "results"
    run_search(SearchOptions(space=write_space(tmp_path / "small.yaml", budget={"trials": 3}), results_dir=results,
                             quiet=True), runner=FakeRunner(), check_models=False).study.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    res = subprocess.run([sys.executable, "-c", _STATUS_PROBE, str(results)], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["code"] == 0 and "sampled 3/3" in out["output"] and "full" in out["output"], out["output"]
    loaded = sorted(set(STATUS_HEAVY) & set(out["modules"]))
    assert not loaded, f"automerge status imported {loaded}; see python -X importtime -m automerge status STUDY"
