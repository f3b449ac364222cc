"""Matplotlib PNGs of a study (no display needed; every file is written atomically).

    plot_pareto(data, "results/night1/pareto.png", rung="full")   # one rung's front + baselines
    plot_fronts(data, path)        # one panel per rung
    plot_hypervolume(data, path)   # hypervolume against wall time and against compute
    plot_importances(data, path)   # Optuna parameter importances per objective
    plot_profiles(data, path)      # per-layer-group λ·w and density of the front's trials

Every function takes ``size=(width, height)`` in pixels and writes exactly that size.
With more than two objectives the scatter plots show the first two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from automerge.report import analysis
from automerge.files import atomic_path
from automerge.report.pareto_table import display_label, front, knee_index, minimization
from automerge.report.study_reader import StudyData

DPI = 100
DEFAULT_SIZE = (1000, 750)
BASELINE_MARKERS = ["s", "D", "^", "v", "P", "X", "h", "<", ">"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _figure(size: tuple[int, int]) -> Figure:
    w, h = size
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")  # no bbox_inches="tight": the size stays exact
    return Path(path)


def _axis_label(data: StudyData, i: int) -> str:
    arrow = "↑" if data.directions[i] == "maximize" else "↓"
    return f"{data.objectives[i]} {arrow}"


def _draw_front(ax, data: StudyData, rung: str, *, annotate: bool = True) -> None:
    df = data.rung(rung)
    if len(data.objectives) < 2:
        ax.text(0.5, 0.5, "one objective: no front to draw", ha="center", va="center", transform=ax.transAxes)
        return
    x, y = data.objectives[0], data.objectives[1]
    search = df[df["kind"] == "search"]
    fr = front(data, rung)
    rest = search[~search.index.isin(fr.index)]
    ax.scatter(rest[x], rest[y], s=18, color="#b0b0b0", label=f"dominated search trials ({len(rest)})", zorder=2)
    if not fr.empty:
        order = fr.sort_values(x)
        ax.plot(order[x], order[y], "-", color=COLORS[0], alpha=0.5, zorder=3)
        ax.scatter(fr[x], fr[y], s=40, color=COLORS[0], edgecolor="black", linewidth=0.5,
                   label=f"Pareto front ({len(fr)})", zorder=4)
        if annotate:
            for _, r in fr.iterrows():
                ax.annotate(f"#{int(r['trial'])}", (r[x], r[y]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=COLORS[0])
        if len(fr) >= 1:
            k = fr.iloc[knee_index(-minimization(data, fr))]
            ax.scatter([k[x]], [k[y]], s=160, facecolor="none", edgecolor=COLORS[1], linewidth=1.5,
                       label=f"knee (#{int(k['trial'])})", zorder=5)
    for i, (_, b) in enumerate(df[df["kind"] == "baseline"].iterrows()):
        ax.scatter([b[x]], [b[y]], s=55, marker=BASELINE_MARKERS[i % len(BASELINE_MARKERS)], color="black",
                   label=f"baseline: {display_label(b)}", zorder=6)
        if annotate:
            ax.annotate(display_label(b), (b[x], b[y]), textcoords="offset points", xytext=(5, -10), fontsize=7)
    for _, r in df[df["kind"] == "reference"].iterrows():
        ax.scatter([r[x]], [r[y]], s=140, marker="*", color=COLORS[4], edgecolor="black", linewidth=0.5,
                   label=f"reference: {display_label(r)}", zorder=6)
        if annotate:
            ax.annotate(display_label(r), (r[x], r[y]), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel(_axis_label(data, 0))
    ax.set_ylabel(_axis_label(data, 1))
    ax.grid(True, alpha=0.3)


def _rung_title(data: StudyData, rung: str) -> str:
    n = len(data.rung(rung))
    return f"rung {rung} ({n} trials)" if rung != "full" else f"full evaluation ({n} trials)"


def plot_pareto(data: StudyData, path: str | Path, *, rung: str | None = None,
                size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """One rung's trials: the front (with trial numbers, the knee ringed), baselines, references."""
    label = data.rung_label(rung)
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    _draw_front(ax, data, label)
    ax.set_title(f"{data.name}: Pareto front, {_rung_title(data, label)}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_fronts(data: StudyData, path: str | Path, *, size: tuple[int, int] | None = None) -> Path:
    """One panel per rung (each rung's front with its baselines)."""
    labels = [r for r in data.rung_labels if not data.rung(r).empty] or data.rung_labels[:1]
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    size = size or (480 * cols, 420 * rows)
    fig = _figure(size)
    for i, label in enumerate(labels):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_front(ax, data, label, annotate=False)
        ax.set_title(_rung_title(data, label), fontsize=10)
        if i == 0:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{data.name}: Pareto fronts per rung")
    fig.tight_layout()
    return _save(fig, path)


def plot_hypervolume(data: StudyData, path: str | Path, *, size: tuple[int, int] = (1200, 450)) -> Path:
    """Hypervolume of each rung's front against wall time and against compute spent."""
    hist = analysis.hypervolume_history(data)
    fig = _figure(size)
    for j, (col, xlabel) in enumerate([("time_s", "wall time since start (s)"),
                                       ("compute_s", "compute used by the search (device s)")]):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, (rung, h) in enumerate(hist.groupby("rung", sort=False)):
            ax.step(h[col], h["hypervolume"], where="post", marker="o", markersize=3,
                    color=COLORS[i % len(COLORS)], label=f"rung {rung}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("hypervolume")
        ax.grid(True, alpha=0.3)
        if not hist.empty:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no completed search trials", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{data.name}: hypervolume of each rung's front")
    fig.tight_layout()
    return _save(fig, path)


def plot_importances(data: StudyData, path: str | Path, *, importances: pd.DataFrame | None = None,
                     size: tuple[int, int] = (1000, 600), top: int = 15) -> Path:
    """Optuna parameter importances (rung 0 search trials), one bar group per parameter."""
    imp = analysis.param_importances(data) if importances is None else importances
    fig = _figure(size)
    ax = fig.add_subplot(1, 1, 1)
    if imp.empty:
        ax.text(0.5, 0.5, "not enough completed search trials for importances", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        table = imp.pivot_table(index="param", columns="target", values="importance", fill_value=0.0)
        table = table.loc[table.max(axis=1).sort_values(ascending=False).index[:top]][::-1]
        targets = [t for t in [*data.objectives, "front"] if t in table.columns]
        height = 0.8 / len(targets)
        ys = np.arange(len(table))
        for i, t in enumerate(targets):
            ax.barh(ys + i * height, table[t], height=height, color=COLORS[i % len(COLORS)], label=t)
        ax.set_yticks(ys + 0.4 - height / 2)
        ax.set_yticklabels(table.index, fontsize=8)
        ax.set_xlabel("importance (PED-ANOVA, normalised per target)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{data.name}: parameter importances (rung {data.rung_labels[0]})")
    fig.tight_layout()
    return _save(fig, path)


def plot_profiles(data: StudyData, path: str | Path, *, rung: str | None = None,
                  size: tuple[int, int] = (1200, 500)) -> Path:
    """Per-layer-group λ·w and density of every specialist across the rung's front trials."""
    label = data.rung_label(rung)
    prof = analysis.group_profiles(data, front(data, label))
    fig = _figure(size)
    models = list(dict.fromkeys(prof["model"])) if not prof.empty else []
    for j, (col, title) in enumerate([("scale", "λ · weight"), ("density", "density")]):
        ax = fig.add_subplot(1, 2, j + 1)
        sub = prof.dropna(subset=[col])
        for (trial, model), g in sub.groupby(["trial", "model"], sort=False):
            c = COLORS[models.index(model) % len(COLORS)]
            ax.step(g["position"], g[col], where="mid", color=c, alpha=0.45, marker="o", markersize=3)
            ax.annotate(f"#{trial}", (1.0, g[col].iloc[-1]), textcoords="offset points", xytext=(3, 0),
                        fontsize=6, color=c, va="center")
        for i, m in enumerate(models):
            ax.plot([], [], color=COLORS[i % len(COLORS)], label=m)
        if sub.empty:
            ax.text(0.5, 0.5, f"no {title} in the front's recipes", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xticklabels(["embed", "", "depth →", "", "head"])
        ax.set_title(f"{title} per layer group", fontsize=10)
        ax.grid(True, alpha=0.3)
        if models:
            ax.legend(fontsize=8)
    fig.suptitle(f"{data.name}: layer-group profiles of the {label} front ({prof['trial'].nunique()} trials)")
    fig.tight_layout()
    return _save(fig, path)
