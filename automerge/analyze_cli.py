"""`automerge analyze BASE SPECIALIST...`: the weight analysis of how each task moved the base."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from automerge.errors import AutomergeError


def specialist_names(paths: list[str]) -> dict[str, str]:
    """NAME=PATH or PATH (named after zoo:NAME, or the file/directory name without suffix)."""
    out: dict[str, str] = {}
    for text in paths:
        if "=" in text and not text.startswith("zoo:"):
            name, path = text.split("=", 1)
        else:
            path = text
            name = text.removeprefix("zoo:") if text.startswith("zoo:") else Path(text.rstrip("/")).stem
        if not name or name in out:
            raise AutomergeError(f"specialist {text!r}: {'empty' if not name else 'repeated'} name; "
                                 "write NAME=PATH to name it")
        out[name] = path
    return out


def analyze_command(
    base: str = typer.Argument(..., help="The base model (a HF dir or zoo:NAME)."),
    specialists: list[str] = typer.Argument(..., help="Two or more specialists: PATH or NAME=PATH (HF dir, "
                                            "LoRA adapter dir, *.pt/*.bin state dict, zoo:NAME)."),
    csv: Optional[Path] = typer.Option(None, help="Write the whole table (every layer, kind and pair) as CSV."),
    plot: Optional[Path] = typer.Option(None, help="Write heatmaps (layer × kind) as a PNG."),
    density: list[float] = typer.Option([0.2, 0.5, 0.8], help="TIES densities for the sign-conflict and "
                                        "overlap figures (repeat the option)."),
    device: str = typer.Option("cpu", help="Where the task vectors are computed (cpu, cuda)."),
) -> None:
    """Task-vector norms, pairwise cosines, TIES sign conflicts and top-k overlap per layer and kind."""
    from rich.console import Console
    from rich.table import Table

    from automerge.files import write_text
    from automerge.task_vectors import analyze_task_vectors

    names = specialist_names(list(specialists))
    a = analyze_task_vectors(base, names, densities=density, device=device)
    t = a.table
    console = Console(width=max(Console().width, 120))
    shown = t[t.layer == "all"]
    table = Table(title="task vectors a|b per tensor kind, all layers (--csv: every layer)",
                  caption="‖·‖: L2 norm; cos: cosine; c@ρ: share of the entries both keep under TIES at "
                          "density ρ whose signs differ; o@ρ: overlap (Jaccard) of the kept entries")
    cols = {"kind": "kind", "pair": "a|b", "norm_a": "‖a‖", "norm_b": "‖b‖", "cosine": "cos",
            **{f"conflict@{d:g}": f"c@{d:g}" for d in a.densities},
            **{f"overlap@{d:g}": f"o@{d:g}" for d in a.densities}}
    for header in cols.values():
        table.add_column(header, justify="left" if header in ("kind", "a|b") else "right", no_wrap=True)
    for _, r in shown.iterrows():
        table.add_row(*[str(r[c]) if c in ("kind", "pair") else f"{r[c]:.2f}" for c in cols])
    console.print(table)
    for sentence in a.advice():
        console.print(f"• {sentence}")
    if csv is not None:
        write_text(csv, t.to_csv(index=False))
        console.print(f"table -> {csv}")
    if plot is not None:
        a.plot(plot)
        console.print(f"heatmaps -> {plot}")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
