"""Each report figure is defined once (automerge.report.figures): the PNG (matplotlib) and the
HTML (plotly) draw the same figure data, series for series and point for point."""

from __future__ import annotations

import json
import re

import pytest

from automerge.report import figures, html, interactive, plots
from automerge.report.figures import Figure, Panel, Series
from automerge.report.study_reader import load_study


@pytest.fixture(scope="module")
def data(synthetic_study):
    return load_study(synthetic_study.name, results_dir=synthetic_study.results)


@pytest.fixture(scope="module")
def figs(data):
    return figures.report_figures(data)


def _png_points(fig: Figure) -> list[int]:
    """Points matplotlib drew per series (artists tagged series-<panel>-<i>); a series whose
    line and markers disagree, or that was not drawn at all, fails."""
    mpl = plots.draw(fig)
    counts = []
    for p, (panel, ax) in enumerate(zip(fig.panels, mpl.axes)):
        for i, _ in enumerate(panel.series):
            gid = f"series-{p}-{i}"
            sizes = {len(a.get_offsets()) for a in ax.collections if a.get_gid() == gid}
            sizes |= {len(a.get_xdata()) for a in ax.lines if a.get_gid() == gid}
            bars = sum(a.get_gid() == gid for a in ax.patches)
            if bars:
                sizes.add(bars)
            assert len(sizes) == 1, (fig.title, gid, sizes)
            counts.append(sizes.pop())
    return counts


def _html_points(fig: Figure) -> list[int]:
    return [len(t.x) for t in interactive.to_plotly(fig).data]


def test_every_report_figure_has_points(figs):
    assert set(figs) == {"pareto", "fronts", "hypervolume", "importances", "profiles"}
    for name, fig in figs.items():
        assert sum(figures.points(fig)) > 0, name  # the synthetic study fills every figure


@pytest.mark.parametrize("name", ["pareto", "fronts", "hypervolume", "importances", "profiles"])
def test_png_and_html_draw_the_same_series(figs, name):
    fig = figs[name]
    assert _png_points(fig) == figures.points(fig) == _html_points(fig)
    names = [s.name for p in fig.panels for s in p.series]
    assert [t.name for t in interactive.to_plotly(fig).data] == names


def test_the_report_draws_each_figure_once_for_both(data, tmp_path, monkeypatch):
    """write_report hands the very same Figure to matplotlib (PNG) and to plotly (HTML)."""
    to_png, to_html = {}, {}
    save_png, figure_html = plots.save_png, interactive.figure_html

    def spy_png(fig, path):
        to_png[path.stem] = fig
        return save_png(fig, path)

    def spy_html(fig, div):
        to_html[div] = fig
        return figure_html(fig, div)

    monkeypatch.setattr(plots, "save_png", spy_png)
    monkeypatch.setattr(interactive, "figure_html", spy_html)
    html.write_report(data, tmp_path)
    top = data.top_rung()
    assert set(to_png) == {"pareto", "fronts", "hypervolume", "importances", "profiles"}
    for name in ("hypervolume", "importances", "profiles"):
        assert to_html[name] is to_png[name]
    assert to_html[f"pareto-{top}"] is to_png["pareto"]
    # fronts.png is every rung's front side by side: each panel holds the series of that rung's HTML figure
    rungs = [r for r in data.rung_labels if not data.rung(r).empty]
    assert len(to_png["fronts"].panels) == len(rungs)
    for panel, rung in zip(to_png["fronts"].panels, rungs):
        assert figures.points(Figure("", (panel,))) == figures.points(to_html[f"pareto-{rung}"])
        assert [s.name for s in panel.series] == [s.name for s in to_html[f"pareto-{rung}"].panels[0].series]


def test_the_page_holds_the_figure_data(data, figs, tmp_path):
    """The JSON in report.html has, per figure, exactly the figure data's points (nothing redrawn apart)."""
    text = html.write_report(data, tmp_path).read_text()
    decoder = json.JSONDecoder()

    def traces(div: str) -> list[dict]:
        m = re.search(rf'Plotly\.newPlot\(\s*"{div}",\s*', text)
        return decoder.raw_decode(text, m.end())[0]

    for name in ("hypervolume", "importances", "profiles"):
        assert [len(t.get("x", [])) for t in traces(name)] == figures.points(figs[name])
    assert [len(t["x"]) for t in traces(f"pareto-{data.top_rung()}")] == figures.points(figs["pareto"])


def test_front_marks_knee_baselines_and_reference(data, figs):
    series = figs["pareto"].panels[0].series
    kinds = data.rung(data.top_rung())["kind"].value_counts()
    assert sum(len(s.x) for s in series if s.name.startswith("baseline: ")) == kinds["baseline"]
    assert sum(len(s.x) for s in series if s.name.startswith("reference: ")) == kinds["reference"]
    knee = [s for s in series if s.name.startswith("knee")]
    assert len(knee) == 1 and knee[0].marker == "ring" and len(knee[0].x) == 1
    front = next(s for s in series if s.name.startswith("Pareto front"))
    assert all(label.startswith("#") for label in front.labels)  # numbered in pareto.png, not in fronts.png
    assert not any(s.labels for p in figs["fronts"].panels for s in p.series)


def test_an_empty_panel_says_why(data):
    fig = Figure("t", (Panel(note="nothing here"),))
    mpl = plots.draw(fig)
    assert any(t.get_text() == "nothing here" for t in mpl.axes[0].texts)
    assert [a.text for a in interactive.to_plotly(fig).layout.annotations] == ["nothing here"]


def test_both_backends_know_every_marker_and_label_position():
    for backend in (plots, interactive):
        assert set(backend.MARKERS) == set(figures.MARKERS), backend.__name__
    assert set(plots.LABEL_OFFSETS) == set(interactive.TEXT_POSITIONS) == set(figures.LABEL_POSITIONS)
    assert set(interactive.LINE_SHAPES) == set(figures.STYLES) - {"markers", "hbar"}


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(x=(1.0, 2.0), y=(1.0,)), "2 x values but 1 y values"),
    (dict(x=(1.0,), y=(1.0,), labels=("a", "b")), "2 labels for 1 points"),
    (dict(x=(1.0,), y=(1.0,), style="area"), "style 'area'"),
])
def test_bad_series_is_refused(kwargs, culprit):
    with pytest.raises(ValueError, match=re.escape(culprit)):
        Series(name="s", **kwargs)
