"""`automerge search` and `automerge status` without the command line: resolve the space, the
study and its storage, check every model before loading any, run a worker, print the front."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from automerge.errors import SpaceError
from automerge.search.space import SearchSpace, parse_duration
from automerge.search.study import SearchStudy, check_search_storage, default_storage_url, stored_space
from automerge.study_format import open_storage, redact

DEMO_STUDY = "demo"


def demo_space_path() -> Path:
    """search_spaces/demo.yaml: in a source checkout the file beside the package (so an edit there
    counts at once), else the copy installed with it as package data (`automerge.spaces`)."""
    import automerge

    checkout = Path(automerge.__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
    if checkout.is_file():
        return checkout
    from importlib.resources import files

    try:
        return Path(str(files("automerge.spaces") / "demo.yaml"))
    except ModuleNotFoundError:  # neither a checkout nor an installed wheel: named in resolve()'s error
        return checkout


@dataclass
class SearchOptions:
    space: Path | None = None
    study: str | None = None
    storage: str | None = None
    timeout: str | float | None = None
    trials: int | None = None
    quiet: bool = False
    device: str | None = None
    threads: int | None = None
    results_dir: Path = Path("results")
    stale_after: float = 600.0
    heartbeat: float = 15.0
    poll_interval: float = 2.0
    finalize: bool | None = None
    report: bool = True  # write results/<study>/report.html at the end (the CLI layer does: automerge.search_job)
    warm_start: list[Path] = field(default_factory=list)  # earlier recipes, evaluated first


@dataclass
class SearchOutcome:
    study: SearchStudy
    study_dir: Path
    stats: Any
    summary: Any
    console: Any = None  # where the run printed (rich Console): the CLI layer prints the report line there


def resolve(opts: SearchOptions) -> tuple[str, str, SearchSpace | None]:
    """(study name, storage URL, space given on the command line or the demo's)."""
    if opts.storage is not None:
        check_search_storage(opts.storage)  # before the space is read and checked
    space_path = opts.space
    if space_path is None and opts.study is None:
        space_path = demo_space_path()
        if not space_path.is_file():
            raise SpaceError(f"the demo search space {space_path} is missing; give a search space file")
    space = SearchSpace.load(space_path) if space_path is not None else None
    name = opts.study or (space.name if space is not None and space.name else None)
    if name is None:
        name = DEMO_STUDY if opts.space is None else Path(opts.space).stem
    if any(c in name for c in "/:\\") or not name.strip():
        raise SpaceError(f"study name {name!r}: use letters, digits, '-', '_' and '.' (no '/' or ':')")
    url = opts.storage or (space.storage if space is not None and space.storage else None) \
        or default_storage_url(name, opts.results_dir)
    check_search_storage(url)
    if space is None and url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if not db.is_file():
            raise SpaceError(f"no study {name!r} at {db}; give a search space file to start it "
                             f"(automerge search SPACE --study {name}) or pass --storage URL")
    return name, url, space


def prepare(opts: SearchOptions, *, check_models: bool = True) -> tuple[SearchStudy, Path]:
    """Validate everything (models: headers only), then open or create the study."""
    name, url, space = resolve(opts)
    if space is not None:
        space = _with_overrides(space, opts)
        if check_models:
            _check_device(space.device)
            space.check_models()  # fails before any model loads or anything is written
        from automerge.search.fisher import check_sources

        check_sources(space)  # method fisher: estimate files and data exist (before anything is written)
    else:
        storage = open_storage(url, read_only=False)
        try:
            stored = stored_space(storage, name)
        finally:
            storage.engine.dispose()
        if stored is None:
            raise SpaceError(f"no study {name!r} in {url}; give a search space file to start it")
        if check_models:
            _check_device(opts.device or stored.device)
            stored.check_models()
    study = SearchStudy.open(name, url, space)
    if space is None:
        study.space = _with_overrides(study.space, opts)
    study_dir = Path(opts.results_dir) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    from automerge.recipe import write_text_atomic

    write_text_atomic(study_dir / "space.yaml", study.space.to_yaml())
    return study, study_dir


def _check_device(device: str) -> None:
    """The device parses and exists here (the engine would fail on it only after the study is created)."""
    from automerge.engine import pick_device
    from automerge.errors import RecipeError

    try:
        pick_device(device)
    except RecipeError as err:
        raise SpaceError(str(err)) from None


def _with_overrides(space: SearchSpace, opts: SearchOptions) -> SearchSpace:
    budget = space.budget
    update: dict[str, Any] = {}
    if opts.threads is not None and opts.threads < 1:
        raise SpaceError(f"--threads {opts.threads}: give at least 1 (cores / workers on a shared machine)")
    if opts.trials is not None:
        if opts.trials < 0:
            raise SpaceError("--trials must be >= 0")
        update["trials"] = opts.trials
    if opts.timeout is not None:
        try:
            update["wall_time"] = parse_duration(opts.timeout)
        except ValueError as err:
            raise SpaceError(f"--timeout: {err}") from None
    if opts.finalize is not None:
        update["finalize"] = opts.finalize
    new_budget = budget.model_copy(update=update)
    if new_budget.trials is None and new_budget.wall_time is None:
        raise SpaceError("budget: no trials and no wall_time; the search would never stop — set budget.trials "
                         "or budget.wall_time in the space, or pass --trials / --timeout")
    out = space.model_copy(update={"budget": new_budget, **({"device": opts.device} if opts.device else {})})
    out._source = space._source
    return out


def run_search(
    opts: SearchOptions,
    *,
    runner: Any = None,
    stream: TextIO | None = None,
    on_event: Callable[[Any], None] | None = None,
    check_models: bool = True,
) -> SearchOutcome:
    """Run one worker of a search to its end. `runner` replaces the real engine + evaluator
    (tests); `check_models=False` skips opening the checkpoints (only with such a runner)."""
    from automerge.search.progress import Progress, front_table, summarize
    from automerge.search.runner import EngineRunner
    from automerge.search.worker import Worker

    study, study_dir = prepare(opts, check_models=check_models)
    try:
        space = study.space
        threads = opts.threads
        if runner is None:
            runner = EngineRunner(space, device=opts.device, threads=threads)
        progress = Progress(study, quiet=opts.quiet, log_path=study_dir / "search.log", stream=stream)
        _prepare_fisher(study, study_dir, progress, device=opts.device or space.device)

        def events(e: Any) -> None:
            progress.on_event(e)
            if on_event is not None:
                on_event(e)

        from automerge.search.space import warm_start_trials

        worker = Worker(study, runner, stale_after=opts.stale_after, heartbeat_interval=opts.heartbeat,
                        poll_interval=opts.poll_interval, on_event=events,
                        warm_starts=warm_start_trials(space, opts.warm_start))
        progress.worker = worker
        budget = space.budget
        progress.log(f"study {study.name} · storage {redact(study.url)} · worker {worker.me} · "
                     f"budget {budget.trials if budget.trials is not None else '∞'} trials"
                     + (f", {budget.wall_time:.0f}s" if budget.wall_time else "")
                     + f" · torch threads {threads or str(_torch_threads()) + ' (default; --threads N with several workers)'}")
        with progress:
            try:
                stats = worker.run()
            except KeyboardInterrupt:
                progress.log("interrupted: the running trial is marked FAIL and will re-run on resume")
                raise
        snap = study.snapshot()
        summary = summarize(snap, worker.budget)
        progress.console.print()
        progress.console.print(front_table(snap))
        progress.console.print(
            f"study {study.name}: {summary.samples} sampled trials; "
            + ", ".join(f"{r.name}: {r.complete} done" + (f"/{r.failed} failed" if r.failed else "")
                        for r in summary.rungs))
        progress.console.print(f"study directory: {study_dir}  (storage {redact(study.url)})")
        return SearchOutcome(study=study, study_dir=study_dir, stats=stats, summary=summary,
                             console=progress.console)
    finally:
        study.close()


def _prepare_fisher(study: SearchStudy, study_dir: Path, progress: Any, *, device: str) -> None:
    """Method fisher: every specialist's estimate, once per study, before sampling (progress bar);
    the space's recipes then name the files (automerge.search.fisher)."""
    from automerge.methods import METHODS

    if not any(METHODS[m].needs_fisher for m in study.space.method_names):
        return
    from transformers.utils import logging as hf_logging

    from automerge.engine import pick_device
    from automerge.search.fisher import study_fisher

    hf_logging.disable_progress_bar()  # our own bar below; the worker's runner turns it off anyway
    dev = str(pick_device(device))
    if progress.quiet:
        seen: set[str] = set()

        def report(name: str, done: int, total: int) -> None:
            if name not in seen:
                seen.add(name)
                progress.log(f"estimating the Fisher of {name} ({total} examples, {dev})")
        files = study_fisher(study, study_dir, device=dev, progress=report)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        with Bar(TextColumn("Fisher {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                 console=progress.console, transient=False) as bar:
            tasks: dict[str, Any] = {}

            def report(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done)
            files = study_fisher(study, study_dir, device=dev, progress=report)
    study.space._fisher = {n: str(p) for n, p in files.items()}
    progress.log("Fisher estimates: " + ", ".join(f"{n} {p}" for n, p in files.items()))


def status(study_name: str | None, *, storage: str | None = None, results_dir: Path = Path("results"),
           stream: TextIO | None = None) -> Any:
    from rich.console import Console
    from rich.table import Table

    from automerge.search.progress import front_table, summarize

    name = study_name or DEMO_STUDY
    url = storage or default_storage_url(name, results_dir)
    check_search_storage(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SpaceError(f"no study {name!r} at {url.removeprefix('sqlite:///')}; pass --storage URL?")
    study = SearchStudy.open(name, url, None, read_only=True)  # no torch: `automerge status` answers at once
    try:
        snap = study.snapshot()
        s = summarize(snap, study.space.budget.trials)
        console = Console(file=stream, highlight=False, width=None if stream is None else 140)
        table = Table(title=f"study {name} ({redact(url)})")
        for col in ("rung", "items/task", "done", "running", "failed", "front", "hypervolume", "best"):
            table.add_column(col, justify="right")
        for r in s.rungs:
            best = ", ".join(f"{k} {v:.4f} (#{n})" for k, (v, n) in r.best.items())
            table.add_row(r.name, "all" if r.items is None else str(r.items), str(r.complete), str(r.running),
                          str(r.failed), str(len(r.front)), f"{r.hypervolume:.4g}", best)
        console.print(table)
        running = snap.running()
        if running:
            console.print("running: " + ", ".join(f"{c.item}@r{c.rung} by {c.worker}" for c in running))
        console.print(f"sampled {s.samples}" + (f"/{s.budget}" if s.budget is not None else ""))
        if any(r.complete for r in s.rungs):
            console.print(front_table(snap))
        return s
    finally:
        study.close()


def _torch_threads() -> int:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # noqa: BLE001
        return max(1, os.cpu_count() or 1)
