"""End to end with the real engine and evaluator on the test-size zoo (build_zoo size="test"):
a small search fills every rung and promotes to full evaluation; the CLI survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from entry_point import automerge_cmd, cli_env
from search_helpers import check_invariants, zoo_space
from optuna.trial import TrialState

from automerge.search.study import SearchStudy

HERE = Path(__file__).resolve().parent


def test_search_end_to_end_on_the_test_zoo(test_zoo, tmp_path, capsys):
    from automerge.search_job import SearchOptions, run_search

    space = zoo_space(test_zoo, tmp_path / "space.yaml")
    results = tmp_path / "results"
    out = run_search(SearchOptions(space=space, results_dir=results, quiet=True, threads=1))
    printed = capsys.readouterr().out
    study_dir = results / "e2e"
    assert {p.name for p in study_dir.iterdir()} >= {"study.db", "space.yaml", "search.log"}
    study = SearchStudy.open("e2e", f"sqlite:///{study_dir / 'study.db'}", None)
    try:
        counts = check_invariants(study, samples=12)
        assert all(counts[r]["search"] > 0 for r in range(3)), counts  # every rung, full included
        for r in range(3):
            kinds = [t.user_attrs["kind"] for t in study.trials(r, [TrialState.COMPLETE])]
            assert kinds.count("baseline") == 5 and kinds.count("reference") == 1, (r, kinds)
        full = study.trials(2, [TrialState.COMPLETE])
        for t in full:
            assert set(t.user_attrs) >= {"score:code_body_ll", "score:ext_code_body_ll", "score:prose_ll",
                                         "score:ext_prose_ll"}
            assert t.user_attrs["n:code_body_ll"] == 60 and t.user_attrs["items"] == 60
        r0 = study.trials(0, [TrialState.COMPLETE])
        assert all(t.user_attrs["n:prose_ll"] == 8 for t in r0)
        finished = sum(counts[r]["complete"] + counts[r]["failed"] for r in range(3))
        log_lines = [ln for ln in (study_dir / "search.log").read_text().splitlines() if " #" in ln]
        assert len(log_lines) == finished  # one log line per finished trial
    finally:
        study.close()
    assert "Pareto front of e2e at full evaluation" in printed and "report:" in printed
    assert (study_dir / "report.html").is_file(), printed[-800:]  # automerge.report reads our format
    assert "mix" in printed and "code alone" in printed  # yardsticks shown with the front
    assert out.summary.rungs[-1].search_complete >= 1


def test_cli_kill_9_then_resume(test_zoo, tmp_path):
    space = zoo_space(test_zoo, tmp_path / "space.yaml", name="killcli", budget={"trials": 10})
    results = tmp_path / "results"
    env = cli_env()
    cmd = [*automerge_cmd(), "search", str(space), "--quiet", "--threads", "1", "--no-report",
           "--results-dir", str(results)]
    log = results / "killcli" / "search.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    try:
        t0 = time.time()
        while time.time() - t0 < 240:
            if log.exists() and sum(" #" in ln for ln in log.read_text().splitlines()) >= 8:
                break
            assert proc.poll() is None, "search ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    url = f"sqlite:///{results / 'killcli' / 'study.db'}"
    study = SearchStudy.open("killcli", url, None)
    before = {r: {t.number: t.values for t in study.trials(r, [TrialState.COMPLETE])} for r in range(3)}
    study.close()
    # `automerge search --study NAME` continues the killed run from storage alone
    res = subprocess.run([*automerge_cmd(module=True), "search", "--study", "killcli", "--quiet",
                          "--threads", "1", "--no-report", "--results-dir", str(results)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    study = SearchStudy.open("killcli", url, None)
    try:
        check_invariants(study, samples=10)
        for r in range(3):
            now = {t.number: t.values for t in study.trials(r, [TrialState.COMPLETE])}
            assert all(now.get(n) == v for n, v in before[r].items())
        assert study.trials(2, [TrialState.COMPLETE])
    finally:
        study.close()


def test_demo_space_samples_its_whole_budget_on_the_test_zoo(test_zoo, tmp_path):
    """The shipped demo space, pointed at the test-size zoo with a test-size trial budget: it
    validates, searches 11–13 dimensions in its per-group methods (3 in task arithmetic: the method
    and one scale per specialist), and samples every trial of its budget (the
    wall-time limit does not cut it)."""
    from automerge.search.run import SearchOptions, run_search
    from automerge.search.space import SearchSpace

    demo = yaml.safe_load((HERE.parents[1] / "search_spaces" / "demo.yaml").read_text())
    shipped = SearchSpace.from_dict(demo, source="demo.yaml")
    assert shipped.budget.trials and shipped.budget.wall_time and len(shipped.method_names) >= 3
    demo["base"] = str(test_zoo / "base")
    for entry in demo["specialists"] + demo["references"]:
        entry["path"] = str(test_zoo / entry["path"].removeprefix("zoo:"))
    demo["budget"] = dict(demo["budget"], trials=10)
    space = tmp_path / "demo.yaml"
    space.write_text(yaml.safe_dump(demo, sort_keys=False))
    out = run_search(SearchOptions(space=space, results_dir=tmp_path / "results", quiet=True, threads=1,
                                   report=False))
    assert out.summary.samples == 10
    study = SearchStudy.open("demo", f"sqlite:///{tmp_path / 'results' / 'demo' / 'study.db'}", None)
    try:
        check_invariants(study, samples=10)
        searched = [t for t in study.trials(0, [TrialState.COMPLETE]) if t.user_attrs["kind"] == "search"]
        assert len(searched) == 10
        dims = {len(t.params) for t in searched}
        assert min(dims) == 3 and max(dims) >= 11 and max(dims) <= 13, dims
        assert study.trials(2, [TrialState.COMPLETE])          # the front reached the full evaluation
    finally:
        study.close()
