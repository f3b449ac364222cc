"""Static PNGs of the report figures: matplotlib draws an `automerge.report.figures.Figure`
(no display needed; every file is written atomically at exactly ``fig.size`` pixels).

    save_png(figures.pareto_figure(data, "full"), "results/night1/pareto.png")
    plot_pareto(data, path, rung="full")   # the same, for `automerge pareto --plot`

This module decides nothing about what a figure shows (see `automerge.report.figures` for why
the figures are data drawn by two backends); it maps series styles and markers onto
matplotlib. Each series' artists carry ``gid = "series-<panel>-<index>"``, so a test can count
what was drawn against the figure data.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from automerge.files import atomic_path
from automerge.report import figures
from automerge.report.figures import DEFAULT_SIZE, Figure, Panel, Series
from automerge.report.study_reader import StudyData

DPI = 100
MARKERS = {"circle": "o", "ring": "o", "star": "*", "square": "s", "diamond": "D", "triangle-up": "^",
           "triangle-down": "v", "plus": "P", "x": "X", "hexagon": "h"}
LABEL_OFFSETS = {"top right": (4, 4), "bottom right": (5, -10), "top left": (-5, 5), "right": (3, 0)}

__all__ = ["DEFAULT_SIZE", "draw", "save_png", "plot_pareto"]


def _draw_series(ax, s: Series, gid: str) -> None:
    label = s.name if s.legend and s.name else None
    if s.style == "hbar":
        bars = ax.barh(list(s.y), list(s.x), height=s.size, color=s.color, label=label, alpha=s.opacity)
        for bar in bars:
            bar.set_gid(gid)
        return
    if s.style != "markers":  # the line (steps through the points, or straight between them)
        where = {"step-post": "post", "step-mid": "mid"}.get(s.style)
        draw = (lambda *a, **k: ax.step(*a, where=where, **k)) if where else ax.plot
        (line,) = draw(list(s.x), list(s.y), "-", color=s.color, alpha=0.5 if s.style == "lines+markers" else
                       s.opacity, label=None if s.style == "lines+markers" else label, zorder=3)
        line.set_gid(gid)
    ring = s.marker == "ring"
    dots = ax.scatter(list(s.x), list(s.y), s=s.size ** 2 * 0.8, marker=MARKERS[s.marker],
                      color="none" if ring else s.color, edgecolor=s.color if ring else (s.edge or "face"),
                      linewidth=1.5 if ring else 0.5, alpha=s.opacity, zorder=5 if ring else 4,
                      label=label if s.style in ("markers", "lines+markers") else None)
    dots.set_gid(gid)
    _draw_labels(ax, s)


def _draw_labels(ax, s: Series) -> None:
    for x, y, text in zip(s.x, s.y, s.labels):
        if text:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=LABEL_OFFSETS[s.label_position],
                        fontsize=7, color=s.color if s.color != "black" else "#222222",
                        va="center" if s.label_position == "right" else "baseline",
                        ha="right" if s.label_position == "top left" else "left")


def _draw_panel(ax, panel: Panel, index: int, small: bool) -> None:
    for i, s in enumerate(panel.series):
        _draw_series(ax, s, f"series-{index}-{i}")
    if panel.note:
        ax.text(0.5, 0.5, panel.note, ha="center", va="center", transform=ax.transAxes)
    if not panel.series and not (panel.xlabel or panel.ylabel):
        ax.set_axis_off()  # nothing to measure against: the note alone
    if panel.title:
        ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.xticks:
        ax.set_xticks([t for t, _ in panel.xticks], [text for _, text in panel.xticks])
    if panel.yticks:
        ax.set_yticks([t for t, _ in panel.yticks], [text for _, text in panel.yticks], fontsize=8)
    if panel.xlim:
        ax.set_xlim(*panel.xlim)
    ax.grid(True, axis=panel.grid, alpha=0.3)
    if panel.legend and any(s.legend and s.name for s in panel.series):
        ax.legend(fontsize=6 if small else 8, loc="best")


def draw(fig: Figure) -> MplFigure:
    """The matplotlib figure of ``fig`` (not saved)."""
    w, h = fig.size
    out = MplFigure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(out)
    for i, panel in enumerate(fig.panels):
        _draw_panel(out.add_subplot(fig.rows, fig.cols, i + 1), panel, i, small=len(fig.panels) > 2)
    if len(fig.panels) == 1 and not fig.panels[0].title:
        out.axes[0].set_title(fig.title)
    else:
        out.suptitle(fig.title)
    out.tight_layout()
    return out


def save_png(fig: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        draw(fig).savefig(tmp, dpi=DPI, format="png")  # no bbox_inches="tight": the size stays exact
    return Path(path)


def plot_pareto(data: StudyData, path: str | Path, *, rung: str | None = None,
                size: tuple[int, int] = DEFAULT_SIZE) -> Path:
    """One rung's front with its baselines and references as a PNG (`figures.pareto_figure`)."""
    return save_png(figures.pareto_figure(data, rung, size=size), path)
