"""Every report figure, defined once as data: panels of series (points, style, labels, hover).

    fig = pareto_figure(data, "full")      # a `Figure`: no plotting library involved
    plots.save_png(fig, "pareto.png")      # matplotlib draws the static PNG
    interactive.figure_html(fig, "pareto-full")   # plotly draws the same data for report.html

Why data plus two thin backends, not one library: the HTML report wants plotly (zoom, hover
showing each trial's recipe, toggling series) and the PNGs must come without a browser —
plotly's static export needs kaleido's Chromium, which cannot be fetched on offline machines —
so matplotlib draws them. Before, each figure was written twice, once per library, and the two
versions drifted (different titles, markers, parameter cut-offs). Now a figure's content —
which trials, which series, colours, markers, axis labels, titles — lives here only; the
backends (`automerge.report.plots`, `automerge.report.interactive`) translate the same
`Figure` mechanically and decide nothing about content. Hover text is part of the data; the
PNG has no hover, so it is the one field the matplotlib backend does not use.

With more than two objectives the scatter figures show the first two.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np
import pandas as pd

from automerge.report import analysis
from automerge.report.pareto_table import display_label, front, knee_index, minimization, summarize_recipe
from automerge.report.study_reader import StudyData

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
DOMINATED = "#b0b0b0"
DEFAULT_SIZE = (1000, 750)  # pixels of a single-panel PNG
Style = Literal["markers", "lines+markers", "step-post", "step-mid", "hbar"]  # every line marks its points
Marker = Literal["circle", "ring", "star", "square", "diamond", "triangle-up", "triangle-down", "plus", "x", "hexagon"]
LabelPosition = Literal["top right", "bottom right", "top left", "right"]
STYLES, MARKERS, LABEL_POSITIONS = get_args(Style), get_args(Marker), get_args(LabelPosition)
BASELINE_MARKERS = MARKERS[3:]


@dataclass(frozen=True)
class Series:
    """One legend entry's points. ``labels``: text drawn beside each point ("" = none);
    ``hover``: the interactive page's tooltip per point (HTML only)."""

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    style: Style = "markers"  # "hbar": bars of length x at positions y
    color: str = COLORS[0]
    marker: Marker = "circle"  # "ring": a hollow circle in `color`
    size: float = 7.0  # marker diameter in pixels; "hbar": the bar's thickness in y units
    edge: str | None = None  # marker outline colour
    opacity: float = 1.0
    labels: tuple[str, ...] = ()
    label_position: LabelPosition = "top right"
    hover: tuple[str, ...] = ()
    legend: bool = True  # False: drawn, not listed (the same series already is, in another panel)
    group: str = ""  # series of several panels that toggle together in the HTML

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.name!r}: {len(self.x)} x values but {len(self.y)} y values")
        for what, values in (("labels", self.labels), ("hover", self.hover)):
            if values and len(values) != len(self.x):
                raise ValueError(f"series {self.name!r}: {len(values)} {what} for {len(self.x)} points")
        if self.style not in STYLES or self.marker not in MARKERS or self.label_position not in LABEL_POSITIONS:
            raise ValueError(f"series {self.name!r}: style {self.style!r}, marker {self.marker!r} or label "
                             f"position {self.label_position!r} unknown; use {STYLES}, {MARKERS}, {LABEL_POSITIONS}")


@dataclass(frozen=True)
class Panel:
    """One set of axes. ``note``: text shown in the middle when there is nothing (else) to draw."""

    series: tuple[Series, ...] = ()
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    note: str = ""
    xticks: tuple[tuple[float, str], ...] = ()
    yticks: tuple[tuple[float, str], ...] = ()
    xlim: tuple[float, float] | None = None
    grid: str = "both"  # "both" | "x"
    legend: bool = True


@dataclass(frozen=True)
class Figure:
    """Panels on a grid of ``cols`` columns; ``size`` in pixels (the PNG's exact size, the HTML's height)."""

    title: str
    panels: tuple[Panel, ...]
    size: tuple[int, int] = DEFAULT_SIZE
    cols: int = 1

    @property
    def rows(self) -> int:
        return -(-len(self.panels) // self.cols)


def points(fig: Figure) -> list[int]:
    """Points per series, panel by panel: what both backends must draw."""
    return [len(s.x) for p in fig.panels for s in p.series]


# -- Pareto fronts ------------------------------------------------------------------------------


def axis_label(data: StudyData, i: int) -> str:
    arrow = "↑" if data.directions[i] == "maximize" else "↓"
    return f"{data.objectives[i]} {arrow}"


def rung_title(data: StudyData, rung: str) -> str:
    n = len(data.rung(rung))
    return f"rung {rung} ({n} trials)" if rung != "full" else f"full evaluation ({n} trials)"


def _hover(data: StudyData, r: pd.Series) -> str:
    lines = [f"<b>{html.escape(display_label(r))}</b> (trial {int(r['trial'])}, {r['kind']})"]
    lines += [f"{o}: {float(r[o]):.4g}" for o in data.objectives]
    if r.get("method"):
        lines.append(f"method: {r['method']}")
    summary = summarize_recipe(r.get("recipe"))
    if summary:
        lines += [html.escape(part) for part in summary.split("; ")]
    return "<br>".join(lines)


def _trials(data: StudyData, df: pd.DataFrame, name: str, *, labels: list[str] | None = None, hover: bool = True,
            **style) -> Series:
    x, y = data.objectives[0], data.objectives[1]
    return Series(name=name, x=tuple(df[x].astype(float)), y=tuple(df[y].astype(float)),
                  labels=tuple(labels or ()), hover=tuple(_hover(data, r) for _, r in df.iterrows()) if hover else (),
                  **style)


def _front_series(data: StudyData, rung: str, annotate: bool) -> list[Series]:
    df = data.rung(rung)
    search = df[df["kind"] == "search"]
    fr = front(data, rung)
    rest = search[~search.index.isin(fr.index)]
    out = [_trials(data, rest, f"dominated search trials ({len(rest)})", color=DOMINATED, size=6)]
    if fr.empty:
        return out
    order = fr.sort_values(data.objectives[0])
    numbers = [f"#{int(t)}" for t in order["trial"]] if annotate else None
    out.append(_trials(data, order, f"Pareto front ({len(fr)})", labels=numbers, style="lines+markers",
                       color=COLORS[0], size=9, edge="black"))
    knee = fr.iloc[[knee_index(-minimization(data, fr))]]
    out.append(_trials(data, knee, f"knee (#{int(knee['trial'].iloc[0])})", hover=False, marker="ring",
                       color=COLORS[1], size=18))
    return out


def _yardstick_series(data: StudyData, rung: str, annotate: bool) -> list[Series]:
    df = data.rung(rung)
    out = []
    for i, (_, b) in enumerate(df[df["kind"] == "baseline"].iterrows()):
        name = display_label(b)
        out.append(_trials(data, b.to_frame().T, f"baseline: {name}", labels=[name] if annotate else None,
                           marker=BASELINE_MARKERS[i % len(BASELINE_MARKERS)], color="black", size=9,
                           label_position="bottom right"))
    for _, r in df[df["kind"] == "reference"].iterrows():
        name = display_label(r)
        out.append(_trials(data, r.to_frame().T, f"reference: {name}", labels=[name] if annotate else None,
                           marker="star", color=COLORS[4], edge="black", size=15, label_position="top left"))
    return out


def pareto_panel(data: StudyData, rung: str, *, annotate: bool = True, title: str = "") -> Panel:
    """One rung: dominated search trials, the front (numbered when ``annotate``), the knee
    ringed, baselines and references (named when ``annotate``)."""
    df = data.rung(rung)
    if len(data.objectives) < 2 or df.empty:
        return Panel(title=title, note="no completed trials" if df.empty else "one objective: no front to draw")
    return Panel(series=(*_front_series(data, rung, annotate), *_yardstick_series(data, rung, annotate)),
                 title=title, xlabel=axis_label(data, 0), ylabel=axis_label(data, 1))


def pareto_figure(data: StudyData, rung: str | None = None, *, size: tuple[int, int] = DEFAULT_SIZE) -> Figure:
    """One rung's front with its baselines and references (``pareto.png``, ``pareto-<rung>`` in the HTML)."""
    label = data.rung_label(rung)
    return Figure(title=f"{data.name}: Pareto front, {rung_title(data, label)}", panels=(pareto_panel(data, label),),
                  size=size)


def fronts_figure(data: StudyData, *, size: tuple[int, int] | None = None) -> Figure:
    """Every rung with completed trials side by side, unnumbered (``fronts.png``); legend in the first."""
    labels = [r for r in data.rung_labels if not data.rung(r).empty] or data.rung_labels[:1]
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    panels = []
    for i, label in enumerate(labels):
        panel = pareto_panel(data, label, annotate=False, title=rung_title(data, label))
        panels.append(panel if i == 0 else replace(panel, legend=False))
    return Figure(title=f"{data.name}: Pareto fronts per rung", panels=tuple(panels), cols=cols,
                  size=size or (480 * cols, 420 * rows))


# -- hypervolume, importances, profiles ---------------------------------------------------------


def hypervolume_figure(data: StudyData, *, size: tuple[int, int] = (1200, 450)) -> Figure:
    """Hypervolume of each rung's front against wall time and against compute spent."""
    hist = analysis.hypervolume_history(data)
    panels = []
    for j, (col, xlabel, title) in enumerate([("time_s", "wall time since start (s)", "against wall time"),
                                              ("compute_s", "compute used by the search (device s)",
                                               "against compute")]):
        series = tuple(
            Series(name=f"rung {rung}", x=tuple(h[col].astype(float)), y=tuple(h["hypervolume"].astype(float)),
                   style="step-post", color=COLORS[i % len(COLORS)], size=5, legend=j == 0, group=f"rung {rung}",
                   hover=tuple(f"rung {rung}, trial {t}" for t in h["trial"]))
            for i, (rung, h) in enumerate(hist.groupby("rung", sort=False)))
        panels.append(Panel(series=series, title=title, xlabel=xlabel, ylabel="hypervolume",
                            note="" if series else "no completed search trials"))
    return Figure(title=f"{data.name}: hypervolume of each rung's front", panels=tuple(panels), cols=2, size=size)


def importance_figure(data: StudyData, importances: pd.DataFrame | None = None, *,
                      size: tuple[int, int] = (1000, 600), top: int = 15) -> Figure:
    """Optuna parameter importances (rung 0 search trials): the ``top`` parameters, one bar per target."""
    imp = analysis.param_importances(data) if importances is None else importances
    title = f"{data.name}: parameter importances (rung {data.rung_labels[0]})"
    if imp.empty:
        return Figure(title=title, panels=(Panel(note="not enough completed search trials for importances"),),
                      size=size)
    table = imp.pivot_table(index="param", columns="target", values="importance", fill_value=0.0)
    table = table.loc[table.max(axis=1).sort_values(ascending=False).index[:top]][::-1]
    targets = [t for t in [*data.objectives, "front"] if t in table.columns]
    targets += [t for t in table.columns if t not in targets]
    height = 0.8 / len(targets)
    ys = np.arange(len(table), dtype=float)
    series = tuple(Series(name=str(t), x=tuple(table[t].astype(float)), y=tuple(ys + i * height), style="hbar",
                          color=COLORS[i % len(COLORS)], size=height,
                          hover=tuple(f"{p}: {v:.3g} ({t})" for p, v in zip(table.index, table[t])))
                   for i, t in enumerate(targets))
    ticks = tuple((float(y + 0.4 - height / 2), str(p)) for y, p in zip(ys, table.index))
    return Figure(title=title, size=size, panels=(Panel(series=series, yticks=ticks, grid="x",
                                                        xlabel="importance (PED-ANOVA, normalised per target)"),))


PROFILE_TICKS = ((0.0, "embed"), (0.25, ""), (0.5, "depth →"), (0.75, ""), (1.0, "head"))


def _profile_panel(prof: pd.DataFrame, models: list[str], col: str, title: str, first: bool) -> Panel:
    sub = prof.dropna(subset=[col])
    series = []
    for (trial, model), g in sub.groupby(["trial", "model"], sort=False):
        n = len(g)
        series.append(Series(
            name=model, x=tuple(g["position"].astype(float)), y=tuple(g[col].astype(float)), style="step-mid",
            color=COLORS[models.index(model) % len(COLORS)], size=5, opacity=0.6, label_position="right",
            labels=tuple([""] * (n - 1) + [f"#{trial}"]),
            hover=tuple(f"trial #{trial} {model} {grp}: {v:.3g}" for grp, v in zip(g["group"], g[col])),
            legend=first and not any(s.name == model for s in series), group=model))
    return Panel(series=tuple(series), title=f"{title} per layer group", xticks=PROFILE_TICKS, xlim=(-0.05, 1.05),
                 note="" if series else f"no {title} in the front's recipes")


def profile_figure(data: StudyData, rung: str | None = None, *, size: tuple[int, int] = (1200, 500)) -> Figure:
    """Per-layer-group λ·w and density of every specialist, one line per front trial and specialist."""
    label = data.rung_label(rung)
    prof = analysis.group_profiles(data, front(data, label))
    models = list(dict.fromkeys(prof["model"])) if not prof.empty else []
    panels = tuple(_profile_panel(prof, models, col, title, j == 0)
                   for j, (col, title) in enumerate([("scale", "λ · weight"), ("density", "density")]))
    return Figure(title=f"{data.name}: layer-group profiles of the {label} front ({prof['trial'].nunique()} trials)",
                  panels=panels, cols=2, size=size)


def report_figures(data: StudyData, importances: pd.DataFrame | None = None) -> dict[str, Figure]:
    """The report's figures by file stem: each becomes ``<stem>.png`` and is drawn in report.html."""
    top = data.top_rung()
    return {
        "pareto": pareto_figure(data, top),
        "fronts": fronts_figure(data),
        "hypervolume": hypervolume_figure(data),
        "importances": importance_figure(data, importances),
        "profiles": profile_figure(data, top),
    }
