"""Progress summary, log lines, `automerge status` and `run_search` wiring (fake runner)."""

from __future__ import annotations

import io

import pytest
from search_helpers import make_space, write_space
from search_fakes import FakeRunner

from automerge.search.progress import Progress, front_rows, summarize
from automerge.search.study import SearchStudy
from automerge.search.worker import Worker


@pytest.fixture
def finished_study(sqlite_url):
    study = SearchStudy.open("p1", sqlite_url, make_space(budget={"trials": 9}))
    Worker(study, FakeRunner(), poll_interval=0.05).run()
    yield study
    study.close()


def test_summary_counts_fronts_and_best(finished_study):
    snap = finished_study.snapshot()
    s = summarize(snap, budget=9)
    assert [r.name for r in s.rungs] == ["r0", "r1", "full"]
    assert s.samples == 9 and s.rungs[0].complete == 9 + 6 and s.rungs[0].search_complete == 9
    for r in s.rungs:
        assert r.front and r.hypervolume >= 0
        assert set(r.best) == {"code", "nl"}
    rung, rows = front_rows(snap)
    assert rung == 2
    kinds = {row["kind"] for row in rows}
    assert kinds == {"search", "baseline", "reference"}
    assert all(row["on_front"] for row in rows if row["kind"] == "search")


def test_progress_logs_one_line_per_finished_trial(sqlite_url, tmp_path):
    study = SearchStudy.open("p2", sqlite_url, make_space(budget={"trials": 4}, baselines=["ties"], references=[]))
    out = io.StringIO()
    progress = Progress(study, quiet=True, log_path=tmp_path / "search.log", stream=out)
    w = Worker(study, FakeRunner(fail_labels=("ties density 0.5",)), poll_interval=0.05, on_event=progress.on_event)
    progress.worker = w
    with progress:
        stats = w.run()
    lines = [ln for ln in out.getvalue().splitlines() if " #" in ln]
    assert len(lines) == stats.finished + stats.failed
    assert any("FAIL" in ln and "out of memory" in ln for ln in lines)
    assert (tmp_path / "search.log").read_text().count(" #") == len(lines)
    assert "sampled 4/4" in str(progress.render().renderables[1])
    study.close()


def test_run_search_and_status(tmp_path, capsys):
    from automerge.search.run import status
    from automerge.search_job import SearchOptions, run_search

    space = write_space(tmp_path / "myspace.yaml", budget={"trials": 6})
    results = tmp_path / "results"
    out = run_search(SearchOptions(space=space, results_dir=results, quiet=True, report=False), runner=FakeRunner(),
                     check_models=False)
    assert out.study.name == "myspace" and (results / "myspace" / "space.yaml").is_file()
    printed = capsys.readouterr().out
    assert "Pareto front of myspace" in printed and "report: automerge report myspace" in printed
    # continue by name only, with a bigger budget: samples 6 more
    out2 = run_search(SearchOptions(study="myspace", trials=12, results_dir=results, quiet=True, report=False), runner=FakeRunner(),
                     check_models=False)
    assert out2.summary.samples == 12
    buf = io.StringIO()
    s = status("myspace", results_dir=results, stream=buf)
    assert s.samples == 12 and "full" in buf.getvalue() and "hypervolume" in buf.getvalue()
