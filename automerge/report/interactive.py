"""Interactive report figures: plotly draws an `automerge.report.figures.Figure` for report.html.

    figure_html(figures.pareto_figure(data, "full"), "pareto-full")   # a <div> + its Plotly.newPlot call

Like `automerge.report.plots` (the PNGs of the same figures) this decides nothing about what a
figure shows: one plotly trace per series, in order, so trace i of panel p is series i of
panel p. plotly.js itself is inlined once per page by `automerge.report.html`.
"""

from __future__ import annotations

from automerge.report.figures import Figure, Panel, Series

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
MARKERS = {"circle": "circle", "ring": "circle-open", "star": "star", "square": "square", "diamond": "diamond",
           "triangle-up": "triangle-up", "triangle-down": "triangle-down", "plus": "cross", "x": "x",
           "hexagon": "hexagon"}
LINE_SHAPES = {"lines+markers": "linear", "step-post": "hv", "step-mid": "hvh"}
TEXT_POSITIONS = {"top right": "top right", "bottom right": "bottom right", "top left": "top left",
                  "right": "middle right"}
MAX_HEIGHT = 560  # px: a PNG's height, capped so one figure fits a screen


def _trace(s: Series):
    import plotly.graph_objects as go

    hover = dict(hovertext=list(s.hover), hoverinfo="text") if s.hover else dict(hoverinfo="x+y+name")
    common = dict(name=s.name, showlegend=s.legend, legendgroup=s.group or None, opacity=s.opacity, **hover)
    if s.style == "hbar":
        return go.Bar(x=list(s.x), y=list(s.y), orientation="h", width=s.size, marker_color=s.color, **common)
    ring = s.marker == "ring"
    marker = dict(symbol=MARKERS[s.marker], size=s.size, color=s.color,
                  line=dict(width=2 if ring else (1 if s.edge else 0), color=s.color if ring else (s.edge or s.color)))
    mode = "markers" if s.style == "markers" else "lines+markers"
    line = dict(color=s.color, width=1, shape=LINE_SHAPES[s.style]) if mode != "markers" else None
    text = dict(text=list(s.labels), textposition=TEXT_POSITIONS[s.label_position]) if any(s.labels) else {}
    return go.Scatter(x=list(s.x), y=list(s.y), mode=mode + ("+text" if text else ""), marker=marker, line=line,
                      **text, **common)


def _axis_ref(index: int) -> str:
    return "" if index == 0 else str(index + 1)


def _layout_panel(out, panel: Panel, index: int, row: int, col: int) -> None:
    out.update_xaxes(title_text=panel.xlabel or None, row=row, col=col, range=list(panel.xlim) if panel.xlim else None)
    out.update_yaxes(title_text=panel.ylabel or None, row=row, col=col)
    if panel.xticks:
        out.update_xaxes(tickvals=[t for t, _ in panel.xticks], ticktext=[x for _, x in panel.xticks], row=row, col=col)
    if panel.yticks:
        out.update_yaxes(tickvals=[t for t, _ in panel.yticks], ticktext=[y for _, y in panel.yticks], row=row, col=col)
    if panel.note:
        ref = _axis_ref(index)
        out.add_annotation(text=panel.note, showarrow=False, x=0.5, y=0.5, xref=f"x{ref} domain",
                           yref=f"y{ref} domain")


def to_plotly(fig: Figure):
    """The plotly figure of ``fig``: trace order = series order, panel by panel."""
    from plotly.subplots import make_subplots

    titles = [p.title for p in fig.panels] if any(p.title for p in fig.panels) else None
    out = make_subplots(rows=fig.rows, cols=fig.cols, subplot_titles=titles)
    for i, panel in enumerate(fig.panels):
        row, col = divmod(i, fig.cols)
        for s in panel.series:
            out.add_trace(_trace(s), row=row + 1, col=col + 1)
        _layout_panel(out, panel, i, row + 1, col + 1)
    # barmode "overlay": each bar series' positions are in the data already (no second grouping)
    out.update_layout(title=fig.title, height=min(fig.size[1], MAX_HEIGHT), barmode="overlay",
                      margin=dict(l=60, r=20, t=60, b=50), template="plotly_white")
    return out


def figure_html(fig: Figure, div_id: str) -> str:
    """A <div id=div_id> with the figure's data inline (plotly.js not included)."""
    return to_plotly(fig).to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)
