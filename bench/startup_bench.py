"""Start-up time of `automerge --help` and `automerge status STUDY` (a small SQLite study).

Each command runs REPEAT times in a fresh interpreter; the table gives the median wall time and
the median CPU time (user + sys) of the process. CPU time is the figure to compare on a loaded
machine (wall time there is mostly waiting for a core); the load average is recorded with it.

    python bench/startup_bench.py                          # this checkout (writes results/BENCHMARKS.md)
    python bench/startup_bench.py --compare ../before --compare-label "before"   # adds that checkout's rows
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _small_study(out: Path) -> Path:
    """A 6-trial study made with the tests' fake runner (no model is loaded): its results dir."""
    sys.path.insert(0, str(ROOT / "tests" / "search"))
    from search_fakes import FakeRunner
    from search_helpers import write_space

    from automerge.search.run import SearchOptions, run_search

    results = out / "results"
    run_search(SearchOptions(space=write_space(out / "small.yaml", budget={"trials": 6}), results_dir=results,
                             quiet=True), runner=FakeRunner(), check_models=False, stream=open(os.devnull, "w")).study.close()
    return results


def _time(code_root: Path, argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `python -m automerge ARGV` run."""
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "automerge", *argv], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compare", type=Path, help="another checkout (e.g. the code before a change)")
    ap.add_argument("--compare-label", default="compared checkout", help="its name in the table")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = _small_study(Path(tmp))
        roots = [("this checkout", ROOT)] + ([(a.compare_label, a.compare)] if a.compare else [])
        rows = []
        load0 = os.getloadavg()[0]
        for label, root in roots:
            for argv in (["--help"], ["status", "small", "--results-dir", str(results)]):
                runs = [_time(root, argv, Path(tmp)) for _ in range(a.repeat)]
                rows.append((label, " ".join(argv[:2]), statistics.median(w for w, _ in runs),
                             statistics.median(c for _, c in runs)))
        load1 = os.getloadavg()[0]
    lines = ["## Command start-up (bench/startup_bench.py)", "",
             f"Median of {a.repeat} runs per row, each a fresh `python -m automerge`; load average "
             f"{load0:.1f} → {load1:.1f} on {os.cpu_count()} cores while it ran (wall time on a loaded machine "
             "is mostly waiting for a core: compare CPU time).", "",
             "| code | command | wall s | CPU s (user+sys) |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {label} | `automerge {cmd}` | {wall:.2f} | {cpu:.2f} |" for label, cmd, wall, cpu in rows]
    text = "\n".join(lines)
    print(text)
    sys.path.insert(0, str(ROOT / "bench"))
    from _report import machine, write_section

    write_section("startup", text + f"\n\nMachine: {machine()}.")


if __name__ == "__main__":
    main()
