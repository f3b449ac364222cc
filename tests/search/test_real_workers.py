"""Two real `automerge search` processes (the installed command: real engine, real evaluator,
test-size zoo) share one study on SQLite and on PostgreSQL; one is killed with SIGKILL the
moment its first trial is stored. The other finishes the study: no item evaluated twice at any
rung, no sample slot lost, and every score equal to a single-worker run of the same seed.

The random sampler is seeded per sample slot (make_sampler), so slot k gets the same recipe
whichever worker asks for it: rung 0 (every trial) is the same whatever the interleaving. Which
trials are promoted depends on what had finished when a worker looked (asynchronous
successive halving), so above rung 0 the test compares the trials both runs evaluated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from entry_point import automerge_cmd, cli_env
from optuna.trial import TrialState
from search_helpers import check_invariants, unique_name, zoo_space

from automerge.search.study import SearchStudy

TRIALS = 6
SPACE = dict(sampler="random", methods=["task_arithmetic", "ties", "linear"], baselines=["ties"], references=[],
             budget={"trials": TRIALS}, rungs={"items": [8, 24], "eta": 3}, full_evaluation={"tasks": [], "limit": 40})


def scores(url: str, name: str) -> dict[int, dict[str, tuple]]:
    """{rung: {rung-0 item key: objective values}} of the COMPLETE trials. Trial numbers above
    rung 0 depend on the order of promotions, so a promoted trial is named by the rung-0 item
    it started as (following `parent` down the rungs)."""
    study = SearchStudy.open(name, url, None)
    try:
        out, origin = {}, {}
        for r in range(study.num_rungs):
            out[r], here = {}, {}
            for t in study.trials(r, [TrialState.COMPLETE]):
                root = t.user_attrs["key"] if r == 0 else origin[t.user_attrs["parent"]]
                out[r][root], here[t.number] = tuple(t.values), root
            origin = here
        return out
    finally:
        study.close()


def front(values: dict[str, tuple]) -> set[str]:
    """Keys of the non-dominated points (every objective maximised)."""
    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and a != b
    return {k for k, v in values.items() if not any(dominates(w, v) for w in values.values())}


@pytest.fixture(scope="module")
def single_worker(test_zoo, tmp_path_factory) -> dict[int, dict[str, tuple]]:
    """The same space and seed, one worker, in-process."""
    from automerge.search.run import SearchOptions, run_search

    root = tmp_path_factory.mktemp("single")
    space = zoo_space(test_zoo, root / "space.yaml", name="single", **SPACE)
    run_search(SearchOptions(space=space, results_dir=root / "results", quiet=True, threads=1, report=False))
    return scores(f"sqlite:///{root / 'results' / 'single' / 'study.db'}", "single")


def first_complete_of(url: str, name: str, pid: int, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    """Block until worker `pid` has stored a COMPLETE trial (an event in storage; bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for p in procs:
            assert p.poll() is None, f"a worker exited ({p.returncode}) before the kill"
        try:
            study = SearchStudy.open(name, url, None)
        except Exception:  # noqa: BLE001 - the first worker has not created the study yet
            time.sleep(0.2)
            continue
        try:
            done = [t for r in range(study.num_rungs) for t in study.trials(r, [TrialState.COMPLETE])]
        finally:
            study.close()
        if any(t.user_attrs.get("worker", "").split(":")[1:2] == [str(pid)] for t in done):
            return
        time.sleep(0.2)
    raise AssertionError(f"worker {pid} stored no trial within {timeout:.0f} s")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_real_workers_one_killed(backend, test_zoo, tmp_path, single_worker, request):
    name = unique_name("real")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        url, names = request.getfixturevalue("pg_url")
        names.append(name)
    space = zoo_space(test_zoo, tmp_path / "space.yaml", name="single", **SPACE)
    cmd = [*automerge_cmd(), "search", str(space), "--study", name, "--storage", url, "--quiet", "--threads", "1",
           "--no-report", "--results-dir", str(tmp_path / "results")]
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cli_env()) for log in logs]
    try:
        first_complete_of(url, name, procs[0].pid, procs)
        os.kill(procs[0].pid, signal.SIGKILL)
        assert procs[0].wait(timeout=60) == -signal.SIGKILL
        assert procs[1].wait(timeout=600) == 0, (tmp_path / "w1.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()

    study = SearchStudy.open(name, url, None)
    try:
        check_invariants(study, samples=TRIALS)  # no duplicate at any rung, nothing lost, nothing left RUNNING
        by_worker = {}
        for r in range(study.num_rungs):
            for t in study.trials(r, [TrialState.COMPLETE]):
                pid = int(t.user_attrs["worker"].split(":")[1])
                by_worker[pid] = by_worker.get(pid, 0) + 1
        assert by_worker.get(procs[0].pid, 0) >= 1 and by_worker.get(procs[1].pid, 0) >= 1, by_worker
        assert study.trials(study.num_rungs - 1, [TrialState.COMPLETE])  # reached the full evaluation
    finally:
        study.close()

    got = scores(url, name)
    assert got[0].keys() == single_worker[0].keys()
    for key, values in single_worker[0].items():  # rung 0: every trial, same recipe, same scores
        assert got[0][key] == pytest.approx(values, rel=1e-6, abs=1e-9), key
    assert front(got[0]) == front(single_worker[0])
    for r in range(1, len(got)):  # promoted trials both runs evaluated score the same
        both = got[r].keys() & single_worker[r].keys()
        assert both, (r, sorted(got[r]), sorted(single_worker[r]))
        for key in both:
            assert got[r][key] == pytest.approx(single_worker[r][key], rel=1e-6, abs=1e-9), (r, key)
