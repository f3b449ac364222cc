"""The report's task-vector section (`automerge report --task-vectors`): `automerge analyze` on the
study's base and specialists, as a table, the advice sentences and the heatmap PNG."""

from __future__ import annotations

import html
from pathlib import Path

from automerge.errors import AutomergeError
from automerge.report.study_reader import StudyData


def task_vector_section(data: StudyData, out: Path) -> tuple[str, Path | None]:
    """(HTML of the section, the PNG written or None). A study whose models cannot be read gets a
    section that says why instead of failing the whole report."""
    from automerge.task_vectors import analyze_task_vectors

    base = data.space.get("base")
    specs = {s["name"]: s["path"] for s in data.space.get("specialists") or [] if "name" in s and "path" in s}
    head = "<h2>Task vectors</h2>"
    if not base or len(specs) < 2:
        return head + "<p class='note'>the study's search space names no base and two specialists: nothing to " \
                      "analyse.</p>", None
    try:
        a = analyze_task_vectors(base, specs)
    except AutomergeError as err:
        return head + f"<p class='note'>not analysed: {html.escape(str(err))}</p>", None
    from automerge.report.html import html_table

    png = a.plot(out / "task_vectors.png")
    t = a.table
    shown = t[t.layer == "all"].drop(columns=["layer"]).round(3)
    advice = "".join(f"<li>{html.escape(s)}</li>" for s in a.advice())
    body = (f"{head}<p class='note'>How each specialist moved the base (<code>automerge analyze</code>): norms, "
            "cosines, the share of the entries TIES keeps at a density whose signs differ between a pair "
            "(c@ρ; 0.5 for independent vectors) and the overlap of their kept entries (o@ρ; ρ/(2−ρ) by "
            "chance), summed per tensor kind; every layer in task_vectors.png.</p>"
            f"<div class='scroll'>{html_table(shown, 'task-vector-table')}</div><ul>{advice}</ul>")
    return body, png
