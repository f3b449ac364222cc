"""`automerge search` end to end: the search (`automerge.search.run`), then its HTML report and
the verdict in words (`automerge.report`).

This is the CLI layer: it is the one place that calls both. The search itself never imports the
report, so dependencies run one way (cli → search, report → the study format below both; see
tests/test_layers.py).

    out = run_search(SearchOptions(space=Path("search_spaces/demo.yaml")))   # search + report
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from automerge.search.run import SearchOptions, SearchOutcome
from automerge.search.run import run_search as run_search_only

__all__ = ["SearchOptions", "SearchOutcome", "run_search"]


def run_search(opts: SearchOptions, **kwargs: Any) -> SearchOutcome:
    """`automerge.search.run.run_search` (same arguments), then the report line and the verdict
    printed where the search printed."""
    out = run_search_only(opts, **kwargs)
    report_line, report_path = _write_report(out.study, opts)
    out.console.print(report_line)
    for line in _verdict(out.study, opts, report_path):
        out.console.print(line, highlight=False)
    return out


def _write_report(study: Any, opts: SearchOptions) -> tuple[str, str | None]:
    """Write the HTML report if the report package can; else say how to make it.
    Returns (the line to print, the report's path or None)."""
    hint = f"automerge report {study.name}"
    if not opts.report:
        return f"report: {hint}  →  {Path(opts.results_dir) / study.name / 'report.html'}", None
    try:
        from automerge.report import load_study
        from automerge.report.html import write_report

        path = write_report(load_study(study.name, storage=study.url, results_dir=opts.results_dir))
        return f"report: {path}  (again any time: {hint})", str(path)
    except Exception as err:  # noqa: BLE001 - the search is done; the report is a convenience
        return f"report: run `{hint}` (could not write it now: {type(err).__name__}: {err})", None


def _verdict(study: Any, opts: SearchOptions, report_path: str | None) -> list[str]:
    """The end-of-run verdict in words (automerge.report.errorbars.verdict_lines)."""
    try:
        from automerge.report import load_study
        from automerge.report.errorbars import verdict_lines

        data = load_study(study.name, storage=study.url, results_dir=opts.results_dir)
        return ["", *verdict_lines(data, report=report_path or f"automerge report {study.name}")]
    except Exception as err:  # noqa: BLE001 - the search is done; the verdict is a convenience
        return [f"verdict: could not be computed ({type(err).__name__}: {err}); see automerge pareto {study.name}"]
