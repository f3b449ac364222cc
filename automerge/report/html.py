"""`write_report`: one self-contained HTML page per study, plus the PNGs beside it.

The page opens offline from the file system with no server: plotly.js is inlined once
(``plotly.offline.get_plotlyjs``), every figure's data is inline JSON, the PNGs are embedded
as ``data:`` URIs, and the trials table sorts with a few lines of inline JavaScript. Nothing
is loaded from a URL (the only ``http`` strings are inside the plotly.js bundle itself: map
tile servers of map traces this report never draws).

    results/<study>/report.html
    results/<study>/pareto.png        # the top rung's front with baselines
    results/<study>/fronts.png        # every rung's front
    results/<study>/hypervolume.png
    results/<study>/importances.png
    results/<study>/profiles.png
    results/<study>/trials.csv, pareto.csv
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path

import pandas as pd

from automerge.files import write_text as write_text_atomic
from automerge.report import analysis, plots
from automerge.report.pareto_table import display_label, front, knee_index, minimization, pareto_table
from automerge.report.study_reader import StudyData
from automerge.study_format import redact

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
COLORS = plots.COLORS

TABLE_COLUMNS = ["rung", "trial", "kind", "label", "state", "method"]


def write_report(data: StudyData, out_dir: str | Path | None = None, *, task_vectors: bool = False) -> Path:
    """Write report.html, the PNGs and the CSVs into out_dir (default the study directory).

    task_vectors: add the task-vector analysis of the study's models (reads every tensor once)."""
    out = Path(out_dir) if out_dir is not None else data.study_dir
    out.mkdir(parents=True, exist_ok=True)
    top = data.top_rung()
    importances = analysis.param_importances(data)
    pngs = {
        "pareto": plots.plot_pareto(data, out / "pareto.png", rung=top),
        "fronts": plots.plot_fronts(data, out / "fronts.png"),
        "hypervolume": plots.plot_hypervolume(data, out / "hypervolume.png"),
        "importances": plots.plot_importances(data, out / "importances.png", importances=importances),
        "profiles": plots.plot_profiles(data, out / "profiles.png", rung=top),
    }
    table = pareto_table(data, top)
    write_text_atomic(out / "pareto.csv", table.to_csv(index=False))
    write_text_atomic(out / "trials.csv", trials_csv(data))
    extra: list[str] = []
    if task_vectors:
        from automerge.report.task_vector_section import task_vector_section

        section, png = task_vector_section(data, out)
        extra.append(section)
        if png is not None:
            pngs["task_vectors"] = png
    page = render(data, table=table, importances=importances, pngs=pngs, extra_sections=extra)
    return write_text_atomic(out / "report.html", page)


def trials_csv(data: StudyData) -> str:
    return data.trials.drop(columns=["recipe", "item_scores"], errors="ignore").to_csv(index=False)


# -- figures ------------------------------------------------------------------------------------


def _hover(data: StudyData, r: pd.Series) -> str:
    from automerge.report.pareto_table import summarize_recipe

    lines = [f"<b>{html.escape(display_label(r))}</b> (trial {int(r['trial'])}, {r['kind']})"]
    lines += [f"{o}: {float(r[o]):.4g}" for o in data.objectives]
    if r.get("method"):
        lines.append(f"method: {r['method']}")
    summary = summarize_recipe(r.get("recipe"))
    if summary:
        lines += [html.escape(part) for part in summary.split("; ")]
    return "<br>".join(lines)


def pareto_figure(data: StudyData, rung: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    df = data.rung(rung)
    if len(data.objectives) < 2 or df.empty:
        fig.add_annotation(text="no completed trials" if df.empty else "one objective: no front",
                           showarrow=False)
        return fig
    x, y = data.objectives[0], data.objectives[1]
    search = df[df["kind"] == "search"]
    fr = front(data, rung)
    rest = search[~search.index.isin(fr.index)]
    fig.add_trace(go.Scatter(x=rest[x], y=rest[y], mode="markers", name=f"dominated search trials ({len(rest)})",
                             marker=dict(color="#b0b0b0", size=7),
                             hovertext=[_hover(data, r) for _, r in rest.iterrows()], hoverinfo="text"))
    if not fr.empty:
        order = fr.sort_values(x)
        fig.add_trace(go.Scatter(x=order[x], y=order[y], mode="lines+markers+text", name=f"Pareto front ({len(fr)})",
                                 text=[f"#{int(t)}" for t in order["trial"]], textposition="top right",
                                 marker=dict(color=COLORS[0], size=10, line=dict(width=1, color="black")),
                                 line=dict(color=COLORS[0], width=1),
                                 hovertext=[_hover(data, r) for _, r in order.iterrows()], hoverinfo="text"))
        if len(fr) >= 1:
            k = fr.iloc[knee_index(-minimization(data, fr))]
            fig.add_trace(go.Scatter(x=[k[x]], y=[k[y]], mode="markers", name=f"knee (#{int(k['trial'])})",
                                     marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(width=2, color=COLORS[1])),
                                     hoverinfo="skip"))
    symbols = ["square", "diamond", "triangle-up", "triangle-down", "cross", "x", "hexagon"]
    for i, (_, b) in enumerate(df[df["kind"] == "baseline"].iterrows()):
        fig.add_trace(go.Scatter(x=[b[x]], y=[b[y]], mode="markers+text", name=f"baseline: {display_label(b)}",
                                 text=[display_label(b)], textposition="bottom right",
                                 marker=dict(symbol=symbols[i % len(symbols)], size=11, color="black"),
                                 hovertext=[_hover(data, b)], hoverinfo="text"))
    for _, r in df[df["kind"] == "reference"].iterrows():
        fig.add_trace(go.Scatter(x=[r[x]], y=[r[y]], mode="markers+text", name=f"reference: {display_label(r)}",
                                 text=[display_label(r)], textposition="top left",
                                 marker=dict(symbol="star", size=16, color=COLORS[4], line=dict(width=1, color="black")),
                                 hovertext=[_hover(data, r)], hoverinfo="text"))
    fig.update_layout(xaxis_title=plots._axis_label(data, 0), yaxis_title=plots._axis_label(data, 1))
    return fig


def hypervolume_figure(data: StudyData):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    hist = analysis.hypervolume_history(data)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("against wall time", "against compute"))
    for i, (rung, h) in enumerate(hist.groupby("rung", sort=False)):
        for col, (xcol, show) in enumerate([("time_s", True), ("compute_s", False)], start=1):
            fig.add_trace(go.Scatter(x=h[xcol], y=h["hypervolume"], mode="lines+markers", line_shape="hv",
                                     name=f"rung {rung}", legendgroup=str(rung), showlegend=show,
                                     line=dict(color=COLORS[i % len(COLORS)]),
                                     hovertext=[f"rung {rung}, trial {t}" for t in h["trial"]]),
                          row=1, col=col)
    fig.update_xaxes(title_text="wall time since start (s)", row=1, col=1)
    fig.update_xaxes(title_text="compute used by the search (device s)", row=1, col=2)
    fig.update_yaxes(title_text="hypervolume", row=1, col=1)
    return fig


def importance_figure(importances: pd.DataFrame, order: list[str] | None = None):
    import plotly.graph_objects as go

    fig = go.Figure()
    if importances.empty:
        fig.add_annotation(text="not enough completed search trials for importances", showarrow=False)
        return fig
    table = importances.pivot_table(index="param", columns="target", values="importance", fill_value=0.0)
    table = table.loc[table.max(axis=1).sort_values(ascending=True).index]
    targets = [t for t in (order or []) if t in table.columns] + [t for t in table.columns if t not in (order or [])]
    for i, t in enumerate(targets):
        fig.add_trace(go.Bar(y=table.index, x=table[t], name=str(t), orientation="h",
                             marker_color=COLORS[i % len(COLORS)]))
    fig.update_layout(barmode="group", xaxis_title="importance (PED-ANOVA, normalised per target)",
                      height=max(350, 40 + 22 * len(table) * max(1, len(table.columns)) // 2))
    return fig


def profile_figure(data: StudyData, rung: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    prof = analysis.group_profiles(data, front(data, rung))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("λ · weight per layer group", "density per layer group"))
    models = list(dict.fromkeys(prof["model"])) if not prof.empty else []
    for col, value in enumerate(("scale", "density"), start=1):
        sub = prof.dropna(subset=[value])
        for (trial, model), g in sub.groupby(["trial", "model"], sort=False):
            c = COLORS[models.index(model) % len(COLORS)]
            fig.add_trace(go.Scatter(x=g["position"], y=g[value], mode="lines+markers", line_shape="hvh",
                                     name=model, legendgroup=model,
                                     showlegend=bool(col == 1 and trial == sub.loc[sub["model"] == model, "trial"].iloc[0]),
                                     line=dict(color=c), opacity=0.6,
                                     hovertext=[f"trial #{trial} {model} {grp}: {v:.3g}"
                                                for grp, v in zip(g["group"], g[value])], hoverinfo="text"),
                          row=1, col=col)
    fig.update_xaxes(tickvals=[0, 0.5, 1], ticktext=["embed", "depth →", "head"], range=[-0.05, 1.05])
    return fig


def _figure_html(fig, div_id: str, height: int = 480) -> str:
    fig.update_layout(height=fig.layout.height or height, margin=dict(l=60, r=20, t=40, b=50),
                      template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)


# -- tables -------------------------------------------------------------------------------------


def _cell(value) -> tuple[str, str]:
    """(display text, sort key) of one cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "", ""
    if isinstance(value, bool):
        return ("✓" if value else ""), str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}", repr(value)
    if isinstance(value, (int,)):
        return str(value), str(value)
    if isinstance(value, (_dt.datetime, pd.Timestamp)):
        return value.strftime("%Y-%m-%d %H:%M:%S"), value.isoformat()
    return str(value), str(value)


def html_table(df: pd.DataFrame, table_id: str, *, percent: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th onclick="sortTable(\'{table_id}\', {i})">{html.escape(str(c))}</th>'
                   for i, c in enumerate(df.columns))
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            text, key = _cell(row[c])
            if c.startswith(percent) and text:
                text = f"{float(row[c]) * 100:.1f}%"
            cls = f' class="kind-{html.escape(str(row["kind"]))}"' if c == "kind" and "kind" in df.columns else ""
            cells.append(f'<td data-sort="{html.escape(key, quote=True)}"{cls}>{html.escape(text)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def trials_table(data: StudyData) -> pd.DataFrame:
    cols = TABLE_COLUMNS + data.objectives + data.score_columns() + ["parent", "duration_s", "datetime_complete"]
    df = data.trials[[c for c in cols if c in data.trials.columns]].copy()
    on_front = set()
    for label in data.rung_labels:
        on_front |= {(label, int(t)) for t in front(data, label)["trial"]} if not data.rung(label).empty else set()
    df.insert(4, "on_front", [(r, int(t)) in on_front for r, t in zip(df["rung"], df["trial"])])
    return df


# -- page ---------------------------------------------------------------------------------------


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1300px;
padding:0 16px;color:#222}
h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555} .note{color:#555;font-size:0.9em}
table.sortable{border-collapse:collapse;font-size:12px;width:100%}
table.sortable th{background:#f2f2f2;cursor:pointer;position:sticky;top:0;text-align:left;padding:4px 6px;
border-bottom:2px solid #ccc;white-space:nowrap}
table.sortable th:hover{background:#e2e2e2}
table.sortable td{padding:3px 6px;border-bottom:1px solid #eee;white-space:nowrap}
table.sortable tr:hover td{background:#fafae0}
td.kind-baseline{font-weight:bold} td.kind-reference{font-weight:bold;color:#b35900}
.scroll{max-height:600px;overflow:auto;border:1px solid #ddd}
img.static{max-width:100%;border:1px solid #eee;margin:8px 0}
input#filter{margin:8px 0;padding:4px;width:320px}
code,pre{background:#f6f6f6;padding:2px 4px}
"""

_JS = """
function sortTable(id, col){
  var table=document.getElementById(id), body=table.tBodies[0];
  var rows=Array.prototype.slice.call(body.rows);
  var asc=table.getAttribute('data-col')==String(col) ? table.getAttribute('data-dir')!='asc' : true;
  rows.sort(function(a,b){
    var x=a.cells[col].getAttribute('data-sort'), y=b.cells[col].getAttribute('data-sort');
    if(x===''||y===''){return x===y?0:(x===''?1:-1);}
    var nx=Number(x), ny=Number(y);
    var r=(isFinite(nx)&&isFinite(ny))?(nx-ny):x.localeCompare(y);
    return asc?r:-r;});
  rows.forEach(function(r){body.appendChild(r);});
  table.setAttribute('data-col',col); table.setAttribute('data-dir',asc?'asc':'desc');
}
function filterTable(id, text){
  var rows=document.getElementById(id).tBodies[0].rows; text=text.toLowerCase();
  for(var i=0;i<rows.length;i++){rows[i].style.display=rows[i].textContent.toLowerCase().indexOf(text)>=0?'':'none';}
}
"""


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _rung_size_section(data: StudyData) -> list[str]:
    """What each rung's items can tell apart (automerge.report.errorbars.rung_sizes)."""
    from automerge.report.errorbars import rung_sizes

    sizes = rung_sizes(data)
    if sizes.empty:
        return []
    return [
        "<h2>Rung sizes: what the items can tell apart</h2>",
        "<p class='note'>From this study's trials as calibration merges: per rung and objective, the paired "
        "standard error of the difference between two trials (median over all pairs of the rung's trials), the "
        "95 % half-width it gives at the rung's items per task, the per-item SD it implies, and the items per "
        "task a rung would need for a 95 % half-width of 0.01 or 0.003 (nats/token for log-likelihood "
        "objectives). Differences smaller than a rung's half-width are noise at that rung; set "
        "<code>rungs.items</code> accordingly.</p>",
        f"<div class='scroll'>{html_table(sizes, 'rung-sizes')}</div>",
    ]


def render(data: StudyData, *, table: pd.DataFrame, importances: pd.DataFrame, pngs: dict[str, Path],
           extra_sections: list[str] = ()) -> str:
    import plotly.offline

    top = data.top_rung()
    done = data.completed()
    counts = ", ".join(f"rung {r.label}: {int((done['rung'] == r.label).sum())}/{r.n_trials}" for r in data.rungs)
    kinds = done["kind"].value_counts().to_dict() if not done.empty else {}
    objectives = ", ".join(f"{o} ({d})" for o, d in zip(data.objectives, data.directions))
    starts = data.trials["datetime_start"].dropna()
    ends = data.trials["datetime_complete"].dropna()
    span = f"{starts.min():%Y-%m-%d %H:%M} – {ends.max():%Y-%m-%d %H:%M}" if len(starts) and len(ends) else "–"
    compute = float(pd.to_numeric(data.trials["compute_s"], errors="coerce").fillna(0).sum()) if len(data.trials) else 0.0

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>automerge report: {html.escape(data.name)}</title>",
        f"<style>{_CSS}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>",
        f"<script type='text/javascript'>{_JS}</script>",
        "</head><body>",
        f"<h1>automerge study <code>{html.escape(data.name)}</code></h1>",
        f"<p class='meta'>storage <code>{html.escape(redact(data.storage_url))}</code> · objectives "
        f"{html.escape(objectives)} · completed trials {html.escape(counts)} · "
        f"{html.escape(', '.join(f'{k}: {v}' for k, v in kinds.items()))} · {html.escape(span)} · "
        f"compute {compute:.0f} s</p>",
        "<h2>Pareto fronts per rung</h2>",
        "<p class='note'>Front = non-dominated search trials of the rung (numbered); black markers are the "
        "baselines the search enqueued, the star a reference model; the ring marks the knee. Hover for "
        "the recipe.</p>",
    ]
    for r in data.rungs:
        if data.rung(r.label).empty:
            continue
        fig = pareto_figure(data, r.label)
        fig.update_layout(title=plots._rung_title(data, r.label))
        parts.append(_figure_html(fig, f"pareto-{r.label}", height=520))
    retention_cols = tuple(c for c in table.columns if c.startswith("retention:"))
    parts += [
        f"<h3>Front of rung {html.escape(top)} with baselines and references</h3>",
        "<p class='note'>retention:S = score on specialist S's own domain ÷ S's score there (same rung). "
        "<code>dominates</code>: the baselines/references the trial dominates beyond the noise (paired 95 % CI "
        "excludes zero in its favour on one objective, against it on none). <code>OBJ [unit]</code> and "
        "<code>±OBJ</code>: the objective in user units (a loss in nats/token for log-likelihood objectives, lower "
        "is better) with its 95 % error bar. <code>vs:B</code>: verdict against B (the best baseline, each "
        "specialist) and the gain per objective ± paired 95 % CI (positive = better for the trial).</p>",
        f"<div class='scroll'>{html_table(table, 'pareto-table', percent=retention_cols or ('retention:',))}</div>",
        "<p class='note'>Export one: <code>automerge export "
        f"{html.escape(data.name)} --pick knee --model out/merged</code> (or --trial N, --pick "
        f"{'|'.join('best-' + html.escape(o) for o in data.objectives)}).</p>",
        *_rung_size_section(data),
        "<h2>Hypervolume against time and compute</h2>",
        "<p class='note'>Hypervolume of each rung's front of search trials after each completion. Reference "
        "point per rung: just worse than every completed trial there (baselines included), so a curve only "
        "rises. Compute = device seconds (merge + evaluation) of every trial of every rung finished by then.</p>",
        _figure_html(hypervolume_figure(data), "hypervolume", height=420),
        "<h2>Parameter importances</h2>",
        f"<p class='note'>Optuna's get_param_importances (PED-ANOVA) over rung {html.escape(data.rung_labels[0])}'s "
        "search trials, per objective and for the front as a whole.</p>",
        _figure_html(importance_figure(importances, [*data.objectives, "front"]), "importances"),
        f"<h2>Layer-group profiles of the rung {html.escape(top)} front</h2>",
        "<p class='note'>Effective scale λ·w and density of each specialist in each layer group (embed → "
        "blocks → head), one line per front trial and specialist.</p>",
        _figure_html(profile_figure(data, top), "profiles", height=420),
        *extra_sections,
        "<h2>All trials</h2>",
        "<input id='filter' placeholder='filter rows…' oninput=\"filterTable('trials-table', this.value)\">",
        f"<div class='scroll'>{html_table(trials_table(data), 'trials-table')}</div>",
        "<h2>Static images</h2><details><summary>PNG versions of the plots</summary>",
    ]
    for name, path in pngs.items():
        parts.append(f"<p>{html.escape(Path(path).name)}</p><img class='static' alt='{html.escape(name)}' "
                     f"src='{_png_uri(path)}'>")
    parts += [
        "</details>",
        f"<p class='note'>generated {_dt.datetime.now():%Y-%m-%d %H:%M} by automerge report · data: "
        f"{html.escape(json.dumps([r.study_name for r in data.rungs]))}</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
