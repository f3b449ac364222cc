"""`write_report`: one self-contained HTML page per study, plus the PNGs beside it.

The page opens offline from the file system with no server: plotly.js is inlined once
(``plotly.offline.get_plotlyjs``), every figure's data is inline JSON, the PNGs are embedded
as ``data:`` URIs, and the trials table sorts with a few lines of inline JavaScript. Nothing
is loaded from a URL (the only ``http`` strings are inside the plotly.js bundle itself: map
tile servers of map traces this report never draws).

Each figure is defined once (`automerge.report.figures`): the page draws it with plotly
(`automerge.report.interactive`), the PNG beside it is matplotlib's drawing of the same data
(`automerge.report.plots`).

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
from automerge.report import analysis, figures, interactive, plots
from automerge.report.figures import Figure
from automerge.report.pareto_table import front, pareto_table
from automerge.report.study_reader import StudyData
from automerge.study_format import redact

TABLE_COLUMNS = ["rung", "trial", "kind", "label", "state", "method"]


def write_report(data: StudyData, out_dir: str | Path | None = None, *, task_vectors: bool = False) -> Path:
    """Write report.html, the PNGs and the CSVs into out_dir (default the study directory).

    task_vectors: add the task-vector analysis of the study's models (reads every tensor once)."""
    out = Path(out_dir) if out_dir is not None else data.study_dir
    out.mkdir(parents=True, exist_ok=True)
    figs = figures.report_figures(data, analysis.param_importances(data))
    pngs = {name: plots.save_png(fig, out / f"{name}.png") for name, fig in figs.items()}
    table = pareto_table(data, data.top_rung())
    write_text_atomic(out / "pareto.csv", table.to_csv(index=False))
    write_text_atomic(out / "trials.csv", trials_csv(data))
    extra: list[str] = []
    if task_vectors:
        from automerge.report.task_vector_section import task_vector_section

        section, png = task_vector_section(data, out)
        extra.append(section)
        if png is not None:
            pngs["task_vectors"] = png
    page = render(data, table=table, figs=figs, pngs=pngs, extra_sections=extra)
    return write_text_atomic(out / "report.html", page)


def trials_csv(data: StudyData) -> str:
    return data.trials.drop(columns=["recipe", "item_scores"], errors="ignore").to_csv(index=False)


def rung_figures(data: StudyData, figs: dict[str, Figure]) -> dict[str, Figure]:
    """The interactive front of every rung with completed trials, by div id: the top rung's is
    the very figure of pareto.png; the others are drawn like it (fronts.png shows them all)."""
    top = data.top_rung()
    return {f"pareto-{r.label}": figs["pareto"] if r.label == top else figures.pareto_figure(data, r.label)
            for r in data.rungs if not data.rung(r.label).empty}


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


def _header(data: StudyData) -> list[str]:
    """The page head (styles, plotly.js, the table scripts) and the study's one-line summary."""
    import plotly.offline

    done = data.completed()
    counts = ", ".join(f"rung {r.label}: {int((done['rung'] == r.label).sum())}/{r.n_trials}" for r in data.rungs)
    kinds = done["kind"].value_counts().to_dict() if not done.empty else {}
    objectives = ", ".join(f"{o} ({d})" for o, d in zip(data.objectives, data.directions))
    starts = data.trials["datetime_start"].dropna()
    ends = data.trials["datetime_complete"].dropna()
    span = f"{starts.min():%Y-%m-%d %H:%M} – {ends.max():%Y-%m-%d %H:%M}" if len(starts) and len(ends) else "–"
    compute = float(pd.to_numeric(data.trials["compute_s"], errors="coerce").fillna(0).sum()) if len(data.trials) else 0.0
    return [
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
    ]


def _front_section(data: StudyData, table: pd.DataFrame, figs: dict[str, Figure]) -> list[str]:
    """Each rung's interactive front, then the top rung's Pareto table and how to export from it."""
    top = data.top_rung()
    retention_cols = tuple(c for c in table.columns if c.startswith("retention:"))
    return [
        "<h2>Pareto fronts per rung</h2>",
        "<p class='note'>Front = non-dominated search trials of the rung (numbered); black markers are the "
        "baselines the search enqueued, the star a reference model; the ring marks the knee. Hover for "
        "the recipe.</p>",
        *(interactive.figure_html(fig, div) for div, fig in rung_figures(data, figs).items()),
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
    ]


def _search_sections(data: StudyData, figs: dict[str, Figure]) -> list[str]:
    """Hypervolume over time, parameter importances and the front's layer-group profiles."""
    return [
        "<h2>Hypervolume against time and compute</h2>",
        "<p class='note'>Hypervolume of each rung's front of search trials after each completion. Reference "
        "point per rung: just worse than every completed trial there (baselines included), so a curve only "
        "rises. Compute = device seconds (merge + evaluation) of every trial of every rung finished by then.</p>",
        interactive.figure_html(figs["hypervolume"], "hypervolume"),
        "<h2>Parameter importances</h2>",
        f"<p class='note'>Optuna's get_param_importances (PED-ANOVA) over rung {html.escape(data.rung_labels[0])}'s "
        "search trials, per objective and for the front as a whole.</p>",
        interactive.figure_html(figs["importances"], "importances"),
        f"<h2>Layer-group profiles of the rung {html.escape(data.top_rung())} front</h2>",
        "<p class='note'>Effective scale λ·w and density of each specialist in each layer group (embed → "
        "blocks → head), one line per front trial and specialist.</p>",
        interactive.figure_html(figs["profiles"], "profiles"),
    ]


def _trials_section(data: StudyData) -> list[str]:
    return [
        "<h2>All trials</h2>",
        "<input id='filter' placeholder='filter rows…' oninput=\"filterTable('trials-table', this.value)\">",
        f"<div class='scroll'>{html_table(trials_table(data), 'trials-table')}</div>",
    ]


def _png_section(pngs: dict[str, Path]) -> list[str]:
    """The PNGs, embedded as data: URIs (the page stays one file)."""
    images = [f"<p>{html.escape(Path(path).name)}</p><img class='static' alt='{html.escape(name)}' "
              f"src='{_png_uri(path)}'>" for name, path in pngs.items()]
    return ["<h2>Static images</h2><details><summary>PNG versions of the plots</summary>", *images, "</details>"]


def render(data: StudyData, *, table: pd.DataFrame, figs: dict[str, Figure], pngs: dict[str, Path],
           extra_sections: list[str] = ()) -> str:
    """The whole page: ``figs`` are `figures.report_figures` (drawn here by plotly, in ``pngs`` by matplotlib)."""
    parts = [
        *_header(data),
        *_front_section(data, table, figs),
        *_rung_size_section(data),
        *_search_sections(data, figs),
        *extra_sections,
        *_trials_section(data),
        *_png_section(pngs),
        f"<p class='note'>generated {_dt.datetime.now():%Y-%m-%d %H:%M} by automerge report · data: "
        f"{html.escape(json.dumps([r.study_name for r in data.rungs]))}</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
