"""Two and four workers on one PostgreSQL study, one of them killed with SIGKILL mid-trial: the
others take its trial over once its heartbeat is stale and finish the study, with every trial
completed before the kill kept unchanged and nothing evaluated twice at a rung (issue 10, item 5;
the 10-point kill sweep of a real search is bench/kill_sweep.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from search_helpers import check_invariants, unique_name, write_space

from automerge.search.study import RUNNING, SearchStudy

HERE = Path(__file__).parent


def _worker(url: str, name: str, space: Path, log: Path, *hold: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(HERE / "worker_main.py"), url, name, str(space),
                             "--delay", "0.3", "--stale-after", "4", "--heartbeat", "0.5", *hold],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True, env=env)


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the worker exited before it held a trial"
        assert time.time() - t0 < timeout, "the worker never held a trial"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [2, 4])
def test_one_of_several_postgresql_workers_killed_mid_run(tmp_path, pg_url, workers):
    url, names = pg_url
    name = unique_name(f"kill{workers}")
    names.append(name)
    trials = 10
    space = write_space(tmp_path / "space.yaml", budget={"trials": trials}, baselines=["ties"], references=[])
    hold = tmp_path / "holding"
    procs = [_worker(url, name, space, tmp_path / "w0.log", "--hold-after", "2", "--hold-file", str(hold))]
    procs += [_worker(url, name, space, tmp_path / f"w{i}.log") for i in range(1, workers)]
    try:
        victim = procs[0]
        _wait_file(hold, victim)          # the victim is mid-trial, holding its claim
        study = SearchStudy.open(name, url, None)
        try:
            # its claim names it (the worker id holds its pid); survivors on this host take a dead
            # worker's claim over at once, so read it before the kill
            held = [(c.rung, c.item) for c in study.claims.rows(name)
                    if c.state == RUNNING and f":{victim.pid}:" in c.worker]
            assert len(held) == 1, held
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
            before = {r: {t.number: t.values for t in study.trials(r, [TrialState.COMPLETE])}
                      for r in range(study.num_rungs)}
        finally:
            study.close()
        for i, p in enumerate(procs[1:], start=1):
            assert p.wait(timeout=600) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(1, workers))
    assert "takeover" in logs, "no survivor took over the killed worker's trial"
    study = SearchStudy.open(name, url, None)
    try:
        check_invariants(study, samples=trials)
        for r in range(study.num_rungs):     # every trial completed before the kill is still there, unchanged
            now = {t.number: t.values for t in study.trials(r, [TrialState.COMPLETE])}
            assert all(now.get(n) == v for n, v in before[r].items())
        stale = [(r, t.user_attrs.get("key")) for r in range(study.num_rungs) for t in study.trials(r, [TrialState.FAIL])
                 if "stale" in t.user_attrs.get("fail_reason", "")]
        assert sorted(stale) == sorted(held), "the killed worker's trial is failed as stale, then re-run"
    finally:
        study.close()
