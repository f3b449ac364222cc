"""`automerge search` and `automerge status` (registered into the main typer app by the lead)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search(
        space: Optional[Path] = typer.Argument(
            None, help="Search space YAML (search_spaces/*.yaml). Omit with --study to continue a study; "
                       "omit both for the demo study on the shipped zoo."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name (default: the space's name or "
                                            "file stem; 'demo' for the demo). Running again continues it."),
        storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL shared by workers, e.g. "
                                              "postgresql://user@host/db (default: sqlite in results/<study>/)."),
        timeout: Optional[str] = typer.Option(None, "--timeout", help="Stop sampling after this wall time "
                                              "(90s, 10m, 8h); due promotions and the front's full evaluation follow."),
        trials: Optional[int] = typer.Option(None, "--trials", help="Total sampled trials in the study "
                                             "(baselines, references and promotions not counted)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Log lines only, no live display."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 … (default: the space's)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads for this worker "
                                              "(several workers on one machine: cores / workers)."),
        results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Where study directories live."),
        stale_after: float = typer.Option(600.0, "--stale-after", help="Seconds without a heartbeat after "
                                          "which another worker's trial counts as dead and is re-run."),
        heartbeat: float = typer.Option(15.0, "--heartbeat", help="Seconds between heartbeats."),
        finalize: Optional[bool] = typer.Option(None, "--finalize/--no-finalize", help="After the budget, "
                                                "evaluate each rung's Pareto front at the next rung."),
        report: bool = typer.Option(True, "--report/--no-report", help="Write results/<study>/report.html "
                                    "at the end."),
        warm_start: list[Path] = typer.Option([], "--warm-start", help="An earlier recipe (automerge or "
                                              "mergekit YAML) evaluated first; repeatable."),
    ) -> None:
        """Search merge recipes: multi-objective, multi-fidelity (MO-ASHA), resumable, distributed."""
        from automerge.search_job import SearchOptions, run_search

        run_search(SearchOptions(space=space, study=study, storage=storage, timeout=timeout, trials=trials,
                                 quiet=quiet, device=device, threads=threads, results_dir=results_dir,
                                 stale_after=stale_after, heartbeat=heartbeat, finalize=finalize,
                                 report=report, warm_start=list(warm_start)))

    @app.command("status")
    def status(
        study: Optional[str] = typer.Argument(None, help="Study name (default: demo)."),
        storage: Optional[str] = typer.Option(None, "--storage", help="Storage URL (default: "
                                              "results/<study>/study.db)."),
        results_dir: Path = typer.Option(Path("results"), "--results-dir"),
    ) -> None:
        """Show a study: trials per rung, fronts, hypervolume, running workers."""
        from automerge.search.run import status as show

        show(study, storage=storage, results_dir=results_dir)
