"""`automerge pareto | report | export`: inspect a study and take a merge out of it.

STUDY is a name under results/ (storage results/<study>/study.db) unless --storage URL is given
(sqlite:///..., postgresql://..., or a JournalStorage file). These commands only read the study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from automerge.errors import AutomergeError

STORAGE_HELP = "Optuna storage URL (default: sqlite:///RESULTS/STUDY/study.db)."
RESULTS_HELP = "Directory holding one folder per study."
RUNG_HELP = "Rung: 0, 1, …, or full (default: the highest rung with completed trials)."


def _load(study: str, storage: Optional[str], results: Path):
    from automerge.report.study_reader import load_study

    return load_study(study, storage=storage, results_dir=results)


def pareto_command(
    study: str = typer.Argument(..., help="Study name (results/<study>/)."),
    rung: Optional[str] = typer.Option(None, "--rung", help=RUNG_HELP),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the table to this CSV file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the front with baselines to this PNG."),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    results: Path = typer.Option(Path("results"), "--results-dir", help=RESULTS_HELP),
) -> None:
    """The Pareto front of a rung, with the baselines and references it is measured against."""
    from automerge.files import write_text as write_text_atomic
    from automerge.report.pareto_table import pareto_table, specialists
    from automerge.report.plots import plot_pareto

    data = _load(study, storage, results)
    label = data.rung_label(rung)
    table = pareto_table(data, label)
    _print_table(data, label, table, specialists(data, label))
    if csv is not None:
        write_text_atomic(csv, table.to_csv(index=False))
        typer.echo(f"table -> {csv}")
    if plot is not None:
        plot_pareto(data, plot, rung=label)
        typer.echo(f"plot -> {plot}")


def _print_table(data, label, table, specs) -> None:
    """The Pareto table on the terminal: front trials, then (dimmed) baselines and references."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(width=220, soft_wrap=False)  # piped / captured: do not squeeze to 80 columns
    n_front = int(table["on_front"].sum())
    t = Table(title=f"{data.name} · rung {label} · {len(data.rung(label))} completed trials · front of {n_front} "
                    "(then baselines, references)", header_style="bold")
    unit_cols = {o: next((c for c in table.columns if c.startswith(f"{o} [")), None) for o in data.objectives}
    vs_cols = [c for c in table.columns if c.startswith("vs:")][:1]  # the best baseline; all in --csv / report
    for c in ["trial", "kind", "label", "method", "params", *data.objectives,
              *[f"retention:{s.name}" for s in specs], "dominates", *vs_cols]:
        numeric = c in data.objectives or c.startswith("retention:")
        t.add_column(_column_header(c, data.objectives, unit_cols, vs_cols), justify="right" if numeric else "left",
                     overflow="fold",
                     max_width=70 if c == "params" else (40 if c == "dominates" or c in vs_cols else None))
    prev_front = True
    for _, r in table.iterrows():
        if prev_front and not r["on_front"]:
            t.add_section()
        prev_front = bool(r["on_front"])
        t.add_row(*_row_cells(r, data.objectives, unit_cols, specs, vs_cols), style=None if r["on_front"] else "dim")
    console.print(t)
    if specs:
        console.print("★ on the Pareto front of the rung's search trials. retention = score on the specialist's own "
                      "domain ÷ the specialist's score there: "
                      + "; ".join(f"{s.name} → {s.objective} = {s.value:.4g} ({s.label}, trial #{s.trial})"
                                  for s in specs))


def _column_header(c: str, objectives: list[str], unit_cols: dict, vs_cols: list[str]) -> str:
    """A column's terminal header: objectives with their display unit, "ret. vs S", "vs B"."""
    if c in vs_cols:
        return f"vs {c[3:]} (best baseline): gain ±95% CI"
    if c in objectives and unit_cols[c] and "[score]" not in unit_cols[c]:
        unit = unit_cols[c][len(c) + 2:-1]
        return f"{c} ({'loss, nats/tok' if unit == 'nats/token' else unit}) ±95%"  # no [..]: rich markup
    header = {"params": "key parameters", "dominates": "dominates / dominated by (beyond the noise)"}.get(c, c)
    return header.replace("retention:", "ret. vs ")


def _row_cells(r, objectives: list[str], unit_cols: dict, specs, vs_cols: list[str]) -> list[str]:
    """One table row as text: objectives in display units ± 95 %, retention in %, domination."""
    import pandas as pd

    cells = [f"#{r['trial']}", r["kind"] + (" ★" if r["on_front"] else ""), r["label"] or "", r["method"] or "",
             r["params"]]
    for o in objectives:
        col = unit_cols[o]
        if col and "[score]" not in col and not pd.isna(r[col]):
            err = r[f"±{o}"]
            cells.append(f"{r[col]:.4f}" + ("" if pd.isna(err) else f" ± {err:.3f}"))
        else:
            cells.append(f"{r[o]:#.4g}")
    for s in specs:
        v = r[f"retention:{s.name}"]
        cells.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%")
    if r["on_front"]:
        cells.append(r["dominates"])
    else:
        cells.append(f"by {r['dominated_by']}" if r["dominated_by"] else "not dominated by the front")
    cells += ["" if pd.isna(r[c]) else r[c] for c in vs_cols]
    return [str(c) for c in cells]


def report_command(
    study: str = typer.Argument(..., help="Study name (results/<study>/)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: results/<study>/)."),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    results: Path = typer.Option(Path("results"), "--results-dir", help=RESULTS_HELP),
    task_vectors: bool = typer.Option(False, "--task-vectors", help="Add the task-vector analysis of the "
                                      "study's base and specialists (automerge analyze; reads every tensor once)."),
) -> None:
    """Write a self-contained report.html (opens offline) plus PNGs and CSVs."""
    from automerge.report.html import write_report

    data = _load(study, storage, results)
    path = write_report(data, out, task_vectors=task_vectors)
    typer.echo(f"report -> {path}")


def export_command(
    study: str = typer.Argument(..., help="Study name (results/<study>/)."),
    trial: Optional[int] = typer.Option(None, "--trial", help="Trial number (in --rung)."),
    pick: Optional[str] = typer.Option(None, "--pick", help="knee, best-<objective> (e.g. best-nl, best-code)."),
    rung: Optional[str] = typer.Option(None, "--rung", help=RUNG_HELP),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Write the automerge recipe YAML here."),
    mergekit: Optional[Path] = typer.Option(None, "--mergekit", help="Write a mergekit YAML here."),
    model: Optional[Path] = typer.Option(None, "--model", help="Write the merged HF model directory here."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (for --model)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Model dtype (default: the recipe's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    results: Path = typer.Option(Path("results"), "--results-dir", help=RESULTS_HELP),
) -> None:
    """Export one trial: recipe, mergekit YAML and/or merged model (default: recipe + mergekit YAML under results/<study>/exports/)."""
    from automerge.report.export import default_paths, describe, export_trial, mergekit_config, trial_recipe
    from automerge.report.pareto_table import pick as pick_trial

    if (trial is None) == (pick is None):
        raise AutomergeError("give exactly one of --trial N or --pick knee|best-<objective>")
    data = _load(study, storage, results)
    row = data.trial(trial, rung) if trial is not None else pick_trial(data, pick, rung)
    rec = trial_recipe(data, row)  # fails early, with the reason, for a reference model
    if not (recipe or mergekit or model):
        paths = default_paths(data, row)
        recipe = paths["recipe"]
        try:
            mergekit_config(rec)
            mergekit = paths["mergekit"]
        except AutomergeError as err:
            typer.echo(f"no mergekit YAML: {err}", err=True)
    typer.echo(f"exporting {describe(data, row)}")
    written = export_trial(data, row, recipe=recipe, mergekit=mergekit, model=model, device=device, dtype=dtype,
                           overwrite=overwrite)
    for kind, path in written.items():
        typer.echo(f"{kind} -> {path}")


def register(app: typer.Typer) -> None:
    app.command("pareto")(pareto_command)
    app.command("report")(report_command)
    app.command("export")(export_command)
