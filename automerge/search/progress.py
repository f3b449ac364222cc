"""What a running (or finished) search looks like: per-rung counts, fronts, hypervolume, ETA.

`summarize(snapshot)` is pure over a storage snapshot (also used by `automerge status`);
`Progress` is the live rich display plus one log line per finished trial (to the console and
results/<study>/search.log); with quiet=True only the log lines are printed.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from automerge.pareto import hypervolume, non_dominated_sort, reference_point, to_minimization
from automerge.search.scheduler import SEARCH
from automerge.study_format import Attr, rung_name, stored_recipe


@dataclass
class RungSummary:
    name: str
    items: int | None
    complete: int = 0
    running: int = 0
    failed: int = 0
    search_complete: int = 0
    front: list[int] = field(default_factory=list)  # trial numbers of the search front
    hypervolume: float = 0.0
    best: dict[str, tuple[float, int]] = field(default_factory=dict)  # objective -> (value, trial)


@dataclass
class Summary:
    study: str
    objectives: list[str]
    directions: list[str]
    rungs: list[RungSummary]
    samples: int
    budget: int | None

    @property
    def top_with_results(self) -> RungSummary | None:
        for r in reversed(self.rungs):
            if r.search_complete:
                return r
        return None


def hv_reference(results: list[tuple[tuple[float, ...], str]], directions: list[str]) -> np.ndarray | None:
    """Reference point (minimisation form) for a rung's hypervolume: the worst yardstick
    (baseline/reference model) per objective — volume counts only where a merge beats them —
    or, with no yardstick, just beyond the worst trial."""
    yard = [v for v, k in results if k != SEARCH]
    pts = yard or [v for v, _ in results]
    if not pts:
        return None
    Y = to_minimization(pts, directions)
    return Y.max(axis=0) if yard else reference_point(Y)


def summarize(snapshot: Any, budget: int | None = None) -> Summary:
    from optuna.trial import TrialState

    study = snapshot.study
    space = study.space
    directions = space.directions
    names = space.objective_names
    rungs: list[RungSummary] = []
    for r in range(study.num_rungs):
        trials = snapshot.trials[r]
        rs = RungSummary(name=rung_name(r, study.num_rungs), items=space.rung_limit(r))
        results: list[tuple[tuple[float, ...], str]] = []
        search: list[tuple[int, tuple[float, ...]]] = []
        for t in trials:
            if t.state == TrialState.COMPLETE and t.values is not None:
                rs.complete += 1
                kind = t.user_attrs.get(Attr.KIND, SEARCH)
                results.append((tuple(t.values), kind))
                if kind == SEARCH and all(math.isfinite(v) for v in t.values):
                    search.append((t.number, tuple(t.values)))
            elif t.state == TrialState.RUNNING:
                rs.running += 1
            elif t.state == TrialState.FAIL:
                rs.failed += 1
        rs.search_complete = len(search)
        if search:
            Y = to_minimization([v for _, v in search], directions)
            front = non_dominated_sort(Y)[0]
            rs.front = sorted(search[i][0] for i in front)
            ref = hv_reference(results, directions)
            rs.hypervolume = hypervolume(Y, ref) if ref is not None else 0.0
            for j, (name, d) in enumerate(zip(names, directions)):
                pick = max if d == "maximize" else min
                num, vals = pick(search, key=lambda x: x[1][j])
                rs.best[name] = (vals[j], num)
        rungs.append(rs)
    return Summary(study=study.name, objectives=names, directions=directions, rungs=rungs,
                   samples=snapshot.samples_claimed(), budget=budget)


def front_rows(snapshot: Any, rung: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    """The front at a rung (default: the highest rung with search results) with every baseline
    and reference model at that rung: rows of {number, kind, label, method, values, on_front}."""
    from optuna.trial import TrialState

    study = snapshot.study
    space = study.space
    if rung is None:
        rung = 0
        for r in reversed(range(study.num_rungs)):
            if any(t.state == TrialState.COMPLETE and t.user_attrs.get(Attr.KIND, SEARCH) == SEARCH
                   for t in snapshot.trials[r]):
                rung = r
                break
    done = [t for t in snapshot.trials[rung] if t.state == TrialState.COMPLETE and t.values is not None]
    search = [t for t in done if t.user_attrs.get(Attr.KIND, SEARCH) == SEARCH]
    on_front: set[int] = set()
    if search:
        Y = to_minimization([t.values for t in search], space.directions)
        on_front = {search[i].number for i in non_dominated_sort(Y)[0]}
    rows = []
    for t in done:
        kind = t.user_attrs.get(Attr.KIND, SEARCH)
        if kind == SEARCH and t.number not in on_front:
            continue
        recipe = stored_recipe(t.user_attrs)
        method = recipe.method if recipe is not None else ""
        rows.append({"number": t.number, "kind": kind, "label": t.user_attrs.get(Attr.LABEL, ""),
                     "method": method or ("model" if kind == "reference" else ""), "values": list(t.values),
                     "origin": t.user_attrs.get(Attr.ORIGIN), "on_front": t.number in on_front,
                     "losses": _losses(space, rung, t)})
    rows.sort(key=lambda x: (x["kind"] != SEARCH, -x["values"][0] if space.directions[0] == "maximize"
                             else x["values"][0]))
    return rung, rows


def _losses(space: Any, rung: int, trial: Any) -> list[tuple[float, float] | None]:
    """Per objective: (loss in nats/token, 95 % half-width) from the trial's per-item scores,
    for objectives of log-likelihood tasks; None otherwise (or without item data)."""
    from automerge.noise import items_from_attrs, objective_loss, objective_se

    items = items_from_attrs(trial.user_attrs)
    out: list[tuple[float, float] | None] = []
    for o in space.objectives:
        tasks = o.full if space.is_full(rung) else o.tasks
        loss = objective_loss(items, tasks) if items else None
        out.append(None if loss is None else (loss, 1.96 * objective_se(items, tasks, "units")))
    return out


def front_table(snapshot: Any, title: str | None = None) -> Any:
    from rich.table import Table

    space = snapshot.study.space
    rung, rows = front_rows(snapshot)
    R = snapshot.study.num_rungs
    rname = "full evaluation" if rung == R - 1 else f"rung r{rung} ({space.rung_limit(rung)} items/task)"
    table = Table(title=title or f"Pareto front of {snapshot.study.name} at {rname}", show_lines=False)
    table.add_column("trial", justify="right")
    table.add_column("kind")
    table.add_column("label / method")
    # objectives of log-likelihood tasks: a loss in nats/token ± 95 % (when every row has item data)
    as_loss = [bool(rows) and all(r["losses"][k] is not None for r in rows) for k in range(len(space.objectives))]
    for k, (name, d) in enumerate(zip(space.objective_names, space.directions)):
        header = f"{name} loss ↓ (nats/tok ±95%)" if as_loss[k] else f"{name} {'↑' if d == 'maximize' else '↓'}"
        table.add_column(header, justify="right")
    for row in rows:
        style = None if row["kind"] == SEARCH else "dim"
        label = row["method"] if row["kind"] == SEARCH else row["label"]
        if row["kind"] == SEARCH and row["origin"] is not None:
            label += f" (r0 #{row['origin']})"
        cells = [f"{row['losses'][k][0]:.4f} ± {row['losses'][k][1]:.3f}" if as_loss[k] else f"{v:.4f}"
                 for k, v in enumerate(row["values"])]
        table.add_row(str(row["number"]), row["kind"], label, *cells, style=style)
    if any(as_loss):
        table.caption = ("± : each trial's own 95 % error bar over the items (mostly item difficulty, shared by "
                         "every trial); differences between trials are judged paired, item by item, which is far "
                         "tighter: see the verdict and `automerge pareto`.")
    return table


def _fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    """Live display + per-trial log lines for one worker."""

    def __init__(self, study: Any, *, quiet: bool = False, log_path: Path | None = None,
                 stream: TextIO | None = None):
        from rich.console import Console

        self.study = study
        self.quiet = quiet
        self.console = Console(file=stream or sys.stdout, highlight=False)
        self.log_file = open(log_path, "a", encoding="utf-8") if log_path is not None else None
        self.worker: Any = None
        self.summary: Summary | None = None
        self.started = time.time()
        self.samples_at_start: int | None = None
        self._live: Any = None

    # -- logging ---------------------------------------------------------------------------

    def log(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if self.log_file is not None:
            self.log_file.write(f"{time.strftime('%Y-%m-%d')} {line}\n")
            self.log_file.flush()
        if self.quiet:
            print(line, file=self.console.file, flush=True)
        else:
            self.console.print(line, markup=False)

    def on_event(self, event: Any) -> None:
        if event.kind in ("finish", "fail", "takeover", "giveup"):
            prefix = {"finish": "", "fail": "", "takeover": "re-run: ", "giveup": "gave up: "}[event.kind]
            self.log(prefix + event.message)
            self.refresh()
        elif event.kind == "start" and self.summary is None:
            self.refresh()

    def refresh(self) -> None:
        try:
            snap = self.study.snapshot()
        except Exception:  # noqa: BLE001 - display only
            return
        budget = self.worker.budget if self.worker is not None else self.study.space.budget.trials
        self.summary = summarize(snap, budget)
        if self.samples_at_start is None:
            self.samples_at_start = self.summary.samples
        if self._live is not None:
            self._live.update(self.render())

    # -- rendering -------------------------------------------------------------------------

    def eta(self) -> float | None:
        s = self.summary
        if s is None:
            return None
        elapsed = time.time() - self.started
        guesses = []
        if s.budget is not None and self.samples_at_start is not None:
            done = s.samples - self.samples_at_start
            left = max(s.budget - s.samples, 0)
            if left == 0:
                guesses.append(0.0)
            elif done > 0:
                guesses.append(elapsed / done * left)
        if self.worker is not None and self.worker.deadline is not None:
            guesses.append(self.worker.deadline - time.time())
        return min(guesses) if guesses else None

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        s = self.summary
        if s is None:
            return Text("starting…")
        table = Table(title=f"automerge search — {s.study}", expand=False)
        for col in ("rung", "items/task", "done", "running", "failed", "front", "hypervolume"):
            table.add_column(col, justify="right")
        for r in s.rungs:
            table.add_row(r.name, "all" if r.items is None else str(r.items), str(r.complete), str(r.running),
                          str(r.failed), str(len(r.front)), f"{r.hypervolume:.4g}")
        top = s.top_with_results
        lines = []
        if top is not None:
            best = ", ".join(f"{name} {v:.4f} (#{n})" for name, (v, n) in top.best.items())
            lines.append(f"best at {top.name}: {best}")
        budget = f"{s.samples}/{s.budget}" if s.budget is not None else f"{s.samples}"
        lines.append(f"sampled {budget} · elapsed {_fmt_seconds(time.time() - self.started)} · "
                     f"ETA to budget {_fmt_seconds(self.eta())}")
        return Group(table, Text("\n".join(lines)))

    def __enter__(self) -> "Progress":
        if not self.quiet:
            from rich.live import Live

            self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
