"""Kill sweep: `automerge search` killed with SIGKILL at 10 points across a run, then resumed.

Each point is a fresh study of the demo search (the shipped zoo), run by the real command line
(`automerge search SPACE --study NAME --quiet`). The script watches the run (its output and its
study storage) and sends SIGKILL when the point is reached:

    load        the first log line (study opened, nothing evaluated yet)
    rung0-*     a rung-0 trial mid-evaluation, after 0 / 3 / half / all-but-2 rung-0 completions
    promotion-* a rung-1 trial mid-evaluation (the first, after 2 rung-1 completions)
    full-*      a top-rung (full evaluation) trial mid-evaluation (the first, after 1 completion)
    report      the line printed just before the report is written

plus a seeded random delay (0–0.2 s) after the trigger, so the kill lands at a random moment
inside the phase; the phase actually hit is read back from the storage. Then
`automerge search --study NAME` resumes the study, and the script checks: it exits 0; every trial
completed before the kill is still there with the same values; no item is evaluated twice at a
rung (complete trials per (rung, key) ≤ 1); nothing is left RUNNING; the sample slots are 0..n-1;
report.html exists.

    python bench/kill_sweep.py              # 10 points on the demo space (write results/BENCHMARKS.md)
    python bench/kill_sweep.py --quick      # 3 points on a small space, print only (a check that it works)

Timing depends on the machine; the pass/fail of each point does not.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POINTS = ["load", "rung0-first", "rung0-3", "rung0-half", "rung0-late", "promotion-first", "promotion-2",
          "full-first", "full-1", "report"]
QUICK_POINTS = ["load", "rung0-3", "report"]


def quick_space(space: dict) -> dict:
    s = dict(space)
    s.update(rungs={"items": [4, 8], "eta": 2}, full_evaluation={"tasks": [], "limit": 8},
             baselines=["specialists"], references=[], budget={"trials": 6})
    return s


def env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
                PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "automerge.cli", *args]


class Watch:
    """Reads the run's output lines in a thread; `seen(prefix)` is an event, not a time window."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.lines, self.log = proc, [], log
        self.report_line = threading.Event()
        self.first_line = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with open(self.log, "w") as f:
            for line in self.proc.stdout:
                f.write(line)
                f.flush()
                self.lines.append(line)
                if line.split(" ", 1)[-1].startswith("study ") and " · storage " in line:
                    self.first_line.set()
                if line.startswith("study directory:"):
                    self.report_line.set()


def state(name: str, url: str):
    from optuna.trial import TrialState

    from automerge.search.study import SearchStudy

    study = SearchStudy.open(name, url, None)
    try:
        out = {}
        for r in range(study.num_rungs):
            ts = study.trials(r)
            out[r] = {"complete": {(t.user_attrs.get("key"), t.number): t.values for t in ts
                                   if t.state == TrialState.COMPLETE},
                      "running": [t.number for t in ts if t.state == TrialState.RUNNING],
                      "search_complete": sum(t.state == TrialState.COMPLETE and t.user_attrs.get("kind") == "search"
                                             for t in ts)}
        return study.num_rungs, out
    finally:
        study.close()


def reached(point: str, num_rungs: int, st: dict, trials: int) -> bool:
    top = num_rungs - 1

    def mid(r: int, done: int) -> bool:
        return r in st and bool(st[r]["running"]) and len(st[r]["complete"]) >= done

    return {
        "rung0-first": lambda: mid(0, 0),
        "rung0-3": lambda: mid(0, 3),
        "rung0-half": lambda: mid(0, 0) and st[0]["search_complete"] >= trials // 2,
        "rung0-late": lambda: mid(0, 0) and st[0]["search_complete"] >= max(0, trials - 2),
        "promotion-first": lambda: num_rungs > 2 and mid(1, 0),
        "promotion-2": lambda: num_rungs > 2 and mid(1, 2),
        "full-first": lambda: mid(top, 0),
        "full-1": lambda: mid(top, 1),
    }[point]()


def one_point(point: str, space_path: Path, work: Path, trials: int, rng: random.Random, timeout: float) -> dict:
    name = f"kill-{point}"
    results = work / "results"
    url = f"sqlite:///{results / name / 'study.db'}"
    args = ["--study", name, "--results-dir", str(results), "--quiet", "--threads", "1", "--timeout", "10h",
            "--trials", str(trials)]
    t0 = time.time()
    proc = subprocess.Popen(cli("search", str(space_path), *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env(), cwd=work)
    watch = Watch(proc, work / f"{name}.first.log")
    row: dict = {"point": point, "killed": False}
    try:
        while proc.poll() is None and time.time() - t0 < timeout:
            if point == "load":
                hit = watch.first_line.wait(0.2)
            elif point == "report":
                hit = watch.report_line.wait(0.2)
            else:
                try:
                    num_rungs, st = state(name, url)
                    hit = reached(point, num_rungs, st, trials)
                except Exception:  # noqa: BLE001 - the study may not exist yet
                    hit = False
                if not hit:
                    time.sleep(0.1)
            if hit:
                time.sleep(rng.uniform(0.0, 0.2))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    row["killed"] = True
                break
    finally:
        if proc.poll() is None and not row["killed"]:
            proc.kill()
        proc.wait()
    row["first_s"] = round(time.time() - t0, 1)
    if not row["killed"]:
        row.update(ok=False, why="the run ended before the point was reached")
        return row
    try:
        num_rungs, before = state(name, url)
    except Exception as err:  # noqa: BLE001 - killed before the study existed: resume must start it
        num_rungs, before = 0, {}
        row["at_kill"] = f"no study yet ({type(err).__name__})"
    else:
        row["at_kill"] = "; ".join(f"r{r}: {len(s['complete'])} done, running {s['running']}"
                                   for r, s in before.items())
    t1 = time.time()
    # resume: `automerge search --study NAME` (killed before the study existed: the first command again)
    cmd = cli("search", *args) if before else cli("search", str(space_path), *args)
    resume = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=work, timeout=timeout)
    row["resume_s"] = round(time.time() - t1, 1)
    (work / f"{name}.resume.log").write_text(resume.stdout + resume.stderr)
    problems = []
    if resume.returncode != 0:
        problems.append(f"resume exited {resume.returncode}: {(resume.stderr or resume.stdout)[-300:]}")
    else:
        problems += check(name, url, before, trials, results / name)
    row.update(ok=not problems, why="; ".join(problems) or "")
    return row


def check(name: str, url: str, before: dict, trials: int, study_dir: Path) -> list[str]:
    from optuna.trial import TrialState

    from automerge.search.study import SearchStudy

    out = []
    study = SearchStudy.open(name, url, None)
    try:
        for r in range(study.num_rungs):
            ts = study.trials(r)
            complete = {(t.user_attrs.get("key"), t.number): t.values for t in ts if t.state == TrialState.COMPLETE}
            for k, v in before.get(r, {}).get("complete", {}).items():
                if complete.get(k) != v:
                    out.append(f"r{r}: trial {k} completed before the kill is gone or changed")
            dupes = {k: n for k, n in Counter(k for k, _ in complete).items() if n > 1}
            if dupes:
                out.append(f"r{r}: evaluated twice: {dupes}")
            if any(t.state == TrialState.RUNNING for t in ts):
                out.append(f"r{r}: trials left RUNNING")
        slots = sorted(int(c.item[1:]) for c in study.claims.rows(name) if c.rung == 0 and c.item.startswith("s"))
        if slots != list(range(trials)):
            out.append(f"sample slots {slots} != 0..{trials - 1}")
    finally:
        study.close()
    if not (study_dir / "report.html").is_file():
        out.append("no report.html")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 points on a small space; print only")
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "demo.yaml")
    ap.add_argument("--points", default=None, help="comma-separated subset of " + ",".join(POINTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--keep", type=Path, default=None, help="keep the studies and logs in this directory")
    args = ap.parse_args(argv)
    space = yaml.safe_load(args.space.read_text())
    if args.quick:
        space = quick_space(space)
    trials = int(space["budget"]["trials"])
    points = args.points.split(",") if args.points else (QUICK_POINTS if args.quick else POINTS)
    work = args.keep or Path(tempfile.mkdtemp(prefix="automerge-kill-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    space_path = work / "space.yaml"
    space.pop("name", None)
    space_path.write_text(yaml.safe_dump(space, sort_keys=False))
    rng = random.Random(args.seed)
    rows = []
    t0 = time.time()
    try:
        for p in points:
            row = one_point(p, space_path, work, trials, rng, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    ok = sum(r["ok"] for r in rows)
    lines = [
        f"### Kill sweep: SIGKILL at {len(rows)} points of a search, then `automerge search --study NAME`",
        "",
        f"Machine: {machine()}; load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end. "
        f"Space: {args.space.name}{' (quick)' if args.quick else ''}, {trials} trials, seed {args.seed}; "
        f"{time.time() - t0:.0f} s in all. `python bench/kill_sweep.py{' --quick' if args.quick else ''}`",
        "",
        f"**{ok} of {len(rows)} points resumed cleanly** (every completed trial kept with its values, no item "
        "evaluated twice at a rung, nothing left running, all sample slots, report written).",
        "",
        "| point | state at the kill | first run s | resume s | result |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['point']} | {r.get('at_kill', '')} | {r.get('first_s', '')} | {r.get('resume_s', '')} | "
                     f"{'ok' if r['ok'] else 'FAIL: ' + r['why']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick and not args.points:
        print(f"-> {write_section('kill_sweep', text)}")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
