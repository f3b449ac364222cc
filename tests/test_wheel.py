"""It installs like a package: the wheel holds every shipped file (zoo models and data, evaluation
data, the search spaces as `automerge.spaces`), and installed outside the checkout, `automerge search`
with no argument finds its demo space and runs a couple of trials; `python -m automerge` works.

The wheel is built offline from a copy of the sources (no build/ or egg-info left in the checkout),
and installed with --no-deps into a fresh venv whose .pth line points at this interpreter's
site-packages, so torch & co. are reused, not reinstalled. That site-packages directory holds only
the editable install's finder, which a .pth line does not run: `automerge` resolves to the wheel's copy.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("pyproject.toml", "setup.py", "README.md", "automerge", "search_spaces")


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _shipped_files() -> set[str]:
    """Wheel paths the checkout must ship: every file under automerge/ and the search spaces."""
    out = {p.relative_to(ROOT).as_posix() for p in (ROOT / "automerge").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    out |= {f"automerge/spaces/{p.name}" for p in (ROOT / "search_spaces").glob("*.yaml")}
    return out


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_runs_the_demo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist"), str(src)], cwd=tmp_path, env=clean)
    (wheel,) = (tmp_path / "dist").glob("automerge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_shipped_files() - names)
    assert not missing, f"not in the wheel (see package-data in pyproject.toml): {missing[:20]}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=clean)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=tmp_path, env=clean).stdout.strip())
    (purelib / "reuse-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: the checkout's editable install is visible through the .pth line; leave it be.
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
         cwd=tmp_path, env=clean)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(clean, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", COLUMNS="200", NO_COLOR="1")
    where = _run([str(py), "-c", "import automerge.search.run as r, automerge; "
                  "print(automerge.__file__); print(r.demo_space_path())"], cwd=work, env=env).stdout.split()
    assert all(Path(p).is_relative_to(purelib) for p in where), where  # the wheel's files, not the checkout's
    assert "Usage: python -m automerge" in _run([str(py), "-m", "automerge", "--help"], cwd=work, env=env).stdout

    _run([str(venv / "bin" / "automerge"), "search", "--trials", "2", "--no-finalize", "--quiet",
          "--threads", "1"], cwd=work, env=env, timeout=1500)
    study = work / "results" / "demo"
    assert (study / "study.db").is_file() and (study / "report.html").is_file()
    status = _run([str(venv / "bin" / "automerge"), "status"], cwd=work, env=env).stdout
    assert "sampled 2/2" in status, status
