"""Two and four workers on one PostgreSQL study, one of them killed with SIGKILL mid-trial: the
others take its trial over once its heartbeat is stale and finish the study, with every trial
completed before the kill kept unchanged and nothing evaluated twice at a rung (issue 10, item 5;
the 10-point kill sweep of a real search is bench/kill_sweep.py)."""

from __future__ import annotations

import os
import signal

import pytest
from optuna.trial import TrialState
from search_helpers import check_invariants, unique_name, write_space
from test_distributed import _wait_running_trial, start_worker

from automerge.search.study import SearchStudy


@pytest.mark.parametrize("workers", [2, 4])
def test_one_of_several_postgresql_workers_killed_mid_run(tmp_path, pg_url, workers):
    url, names = pg_url
    name = unique_name(f"kill{workers}")
    names.append(name)
    trials = 10
    space = write_space(tmp_path / "space.yaml", budget={"trials": trials}, baselines=["ties"], references=[])
    procs = [start_worker(url, name, space, delay=0.4, stale_after=4, log=tmp_path / f"w{i}.log")
             for i in range(workers)]
    try:
        victim = procs[0]
        _wait_running_trial(url, name, victim, min_complete=2)
        study = SearchStudy.open(name, url, None)
        try:
            # the victim's own running trial: its claim names its worker id, which the log does not;
            # any RUNNING trial at the kill must end up FAILED as stale or completed by a survivor
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
        stale = [t for r in range(study.num_rungs) for t in study.trials(r, [TrialState.FAIL])
                 if "stale" in t.user_attrs.get("fail_reason", "")]
        assert stale, "the killed worker's trial must be failed as stale and re-run"
    finally:
        study.close()
