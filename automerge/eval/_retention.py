"""Retention tables: every task for the base, each specialist and the given models.

retention(model, task) = score(model, task) / score(S, task), where S is the specialist whose domain
is the task's domain (the seed paper's metric: how much of the specialist's skill on its own domain
a merge keeps). When several specialists share a domain, the best of them on that task is the
reference. gain_over_base = score(model, task) − score(base, task). Both are NaN where undefined
(no specialist for the domain, a reference score of 0, a failed task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd

COLUMNS = ["model", "role", "task", "domain", "metric", "score", "retention", "gain_over_base", "n", "failed"]


def retention_table(
    results: Mapping[str, Mapping[str, object]],
    *,
    base: str | None,
    specialists: Mapping[str, str],
) -> pd.DataFrame:
    """``results``: model label -> {task: TaskResult}; ``base``: the base model's label (or None);
    ``specialists``: specialist label -> its domain ("nl" | "code"). Long format, one row per
    (model, task), models in the order given."""
    rows = []
    for label, res in results.items():
        role = "base" if label == base else ("specialist" if label in specialists else "model")
        for task, r in res.items():
            refs = [results[s][task].score for s, dom in specialists.items()
                    if dom == r.domain and s in results and task in results[s] and results[s][task].failed is None]
            ref = max(refs) if refs else math.nan
            ok = r.failed is None
            retention = r.score / ref if ok and refs and ref > 0 else math.nan
            b = results.get(base, {}).get(task) if base is not None else None
            gain = r.score - b.score if ok and b is not None and b.failed is None else math.nan
            rows.append({"model": label, "role": role, "task": task, "domain": r.domain, "metric": r.metric,
                         "score": r.score if ok else math.nan, "retention": retention, "gain_over_base": gain,
                         "n": r.n, "failed": r.failed or ""})
    return pd.DataFrame(rows, columns=COLUMNS)


def domain_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean retention and mean gain over base per model and domain (tasks weighted equally)."""
    if df.empty:
        return pd.DataFrame(columns=["model", "domain", "mean_retention", "mean_gain_over_base", "tasks"])
    g = df.groupby(["model", "domain"], sort=False)
    out = g.agg(mean_retention=("retention", "mean"), mean_gain_over_base=("gain_over_base", "mean"),
                tasks=("task", "count")).reset_index()
    return out
