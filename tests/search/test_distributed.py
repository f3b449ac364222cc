"""Several worker processes on one study (SQLite file and PostgreSQL), and kill -9 mid-trial.

The workers run tests/search/worker_main.py (the real Worker, a fake runner); the checks are the
exactly-once / nothing-lost invariants of the storage. Overlap and the kill are events (a
rendezvous of both workers mid-trial, a worker holding mid-trial until killed), not time windows.
(test_real_workers.py runs the real `automerge search` command instead of the fake runner.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from search_helpers import check_invariants, unique_name, write_space
from optuna.trial import TrialState

from automerge.search.study import SearchStudy

HERE = Path(__file__).parent


def start_worker(url: str, study: str, space: Path, *, delay: float = 0.0, stale_after: float = 600,
                 log: Path | None = None, gates: tuple[str, ...] = ()) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, str(HERE / "worker_main.py"), url, study, str(space), "--delay", str(delay),
         "--stale-after", str(stale_after), "--heartbeat", "0.5", *gates],
        stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> str:
    """Block until `path` exists (an event the worker writes); bounded, and fails early if the
    worker exits first."""
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"worker exited ({proc.returncode}) before {path.name} appeared"
        assert time.monotonic() - t0 < timeout, f"{path.name} did not appear within {timeout:.0f} s"
        time.sleep(0.05)
    return path.read_text()


def two_workers(url: str, name: str, space: Path, tmp_path: Path, trials: int) -> dict:
    meet = ("--rendezvous", str(tmp_path / "rendezvous"))  # both mid-trial at once: each finishes >= 1
    procs = [start_worker(url, name, space, delay=0.01, log=tmp_path / f"w{i}.log", gates=meet) for i in range(2)]
    try:
        for p in procs:
            assert p.wait(timeout=300) == 0, (tmp_path / "w0.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    finished = [sum(line.startswith("finish ") for line in log.splitlines()) for log in logs]
    assert all(n > 0 for n in finished), f"both workers must have evaluated trials: {finished}"
    study = SearchStudy.open(name, url, None)
    try:
        counts = check_invariants(study, samples=trials)
        assert counts[0]["search"] == trials and counts[2]["search"] >= 1
        return counts
    finally:
        study.close()


def test_two_workers_share_a_sqlite_study(tmp_path):
    space = write_space(tmp_path / "space.yaml", budget={"trials": 14})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    two_workers(url, "shared", space, tmp_path, 14)


def test_two_workers_share_a_postgresql_study(tmp_path, pg_url):
    url, names = pg_url
    name = unique_name("pg2")
    names.append(name)
    space = write_space(tmp_path / "space.yaml", budget={"trials": 14})
    two_workers(url, name, space, tmp_path, 14)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_mid_trial_then_resume(tmp_path, backend, request):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'study.db'}"
        name = "killed"
    else:
        url, names = request.getfixturevalue("pg_url")
        name = unique_name("kill")
        names.append(name)
    trials = 8
    space = write_space(tmp_path / "space.yaml", budget={"trials": trials}, baselines=["ties"], references=[])
    hold = tmp_path / "holding"
    proc = start_worker(url, name, space, log=tmp_path / "first.log",
                        gates=("--hold-after", "2", "--hold-file", str(hold)))
    try:
        # the worker holds mid-evaluation of a search trial, with completed work to keep, until killed
        rung, number = map(int, wait_for_file(hold, proc).split())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    study = SearchStudy.open(name, url, None)
    before = {r: {t.number: t.values for t in study.trials(r, [TrialState.COMPLETE])} for r in range(3)}
    killed = [t.number for r in range(3) for t in study.trials(r, [TrialState.RUNNING])]
    assert killed == [number] and number in {t.number for t in study.trials(rung, [TrialState.RUNNING])}
    assert sum(len(v) for v in before.values()) >= 1
    study.close()
    # restart: the same command continues the study
    again = start_worker(url, name, space, delay=0.0, log=tmp_path / "second.log")
    try:
        assert again.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()
    log = (tmp_path / "second.log").read_text()
    assert "takeover" in log
    study = SearchStudy.open(name, url, None)
    try:
        check_invariants(study, samples=trials)
        for r in range(3):  # every trial completed before the kill is still there, unchanged
            now = {t.number: t.values for t in study.trials(r, [TrialState.COMPLETE])}
            assert all(now.get(n) == v for n, v in before[r].items())
        fails = [t for r in range(3) for t in study.trials(r, [TrialState.FAIL])]
        assert sorted(t.number for t in fails if "stale" in t.user_attrs["fail_reason"]) == sorted(killed)
    finally:
        study.close()
