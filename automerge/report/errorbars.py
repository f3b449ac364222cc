"""Error bars in the report: each front trial against the best baseline and each specialist,
with paired 95 % CIs, and the end-of-run verdict in words.

    cmp = comparisons(data, rung="full")      # {front trial: [Comparison vs best baseline, vs each specialist]}
    lines = verdict_lines(data)                # what `automerge search` prints at the end

Everything is computed from the per-item scores the search stores (``item_scores``, see
`automerge.noise`); a study without them (older than error bars) gets point comparisons
and says so. Units: an objective of log-likelihood tasks is shown as a loss in nats/token (lower
is better; perplexity = e^loss) and its differences as gains in nats/token (positive = better,
= the loss the trial saves); other objectives in their own metric.

Rules:

* The **best baseline** is the non-specialist baseline (uniform linear, task arithmetic, TIES…)
  not Pareto-dominated by another one, nearest the ideal point after scaling each objective to
  [0, 1] over those baselines (the same normalisation the knee uses) — the merge a user would
  have shipped without searching.
* A comparison's **verdict** is `automerge.noise.verdict`: "dominates" only when a CI
  excludes zero in the trial's favour on one objective and in the other's favour on none;
  "indistinguishable" when every CI holds zero.
* The verdict **never names a winner inside the noise**: a difference whose CI holds zero is
  reported as "within the noise (±x)", not as better or worse.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from automerge.noise import (Difference, ItemScores, items_for, items_from_attrs, objective_noise,
                             paired_difference, unit_of, verdict)
from automerge.pareto import dominates, non_dominated_sort
from automerge.report.study_reader import StudyData
from automerge.study_format import FULL

LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    """Trial A against yardstick B at one rung. ``diffs[obj]`` is oriented so that a positive
    estimate is better for A (a gain), in the objective's display unit."""

    other: str  # B's label
    other_trial: int
    role: str  # "best baseline" | "specialist" | "reference"
    verdict: str  # noise.VERDICTS, or "point" comparisons without item data: dominates/dominated/trade-off/equal
    diffs: dict[str, Difference]
    units: dict[str, str]
    with_ci: bool

    def text(self) -> str:
        """``dominates: code +0.041 ± 0.012, nl +0.010 ± 0.008 nats/token``."""
        parts = []
        for obj, d in self.diffs.items():
            unit = self.units[obj]
            if self.with_ci:
                half = (d.high - d.low) / 2
                parts.append(f"{obj} {_signed(d.estimate, unit)} ± {_mag(half, unit)}")
            else:
                parts.append(f"{obj} {_signed(d.estimate, unit)}")
        unit_note = _unit_note(set(self.units.values()))
        return f"{self.verdict}: " + ", ".join(parts) + unit_note


def _unit_note(units: set[str]) -> str:
    if units == {"nats/token"}:
        return " nats/token"
    return ""


def _signed(x: float, unit: str) -> str:
    if unit in ("acc", "acc_norm", "p_correct", "pass@1"):
        return f"{100 * x:+.1f} pts"
    return f"{x:+.3f}" if abs(x) >= 0.01 else f"{x:+.2g}"


def _mag(x: float, unit: str) -> str:
    if not math.isfinite(x):
        return "∞"
    if unit in ("acc", "acc_norm", "p_correct", "pass@1"):
        return f"{100 * x:.1f} pts"
    return f"{x:.3f}" if abs(x) >= 0.01 else f"{x:.2g}"


# -- what an objective is made of ------------------------------------------------------------


def objective_tasks(data: StudyData, rung: str) -> dict[str, dict[str, float]]:
    """Objective -> {task: weight} at a rung, from the stored search space ({} when unknown)."""
    out = {}
    full = rung == FULL
    for o in data.space.get("objectives") or []:
        if not isinstance(o, dict) or o.get("name") not in data.objectives:
            continue
        tasks = (o.get("full_tasks") or o.get("tasks")) if full else o.get("tasks")
        if isinstance(tasks, dict) and tasks:
            out[str(o["name"])] = {str(t): float(w) for t, w in tasks.items()}
    return out


def row_items(row: pd.Series) -> dict[str, ItemScores]:
    value = row.get("item_scores") if "item_scores" in row.index else None
    return items_from_attrs({"item_scores": value}) if isinstance(value, dict) else {}


def _has_items(items: Mapping[str, ItemScores], tasks: Mapping[str, float]) -> bool:
    return all(t in items and items[t].n >= 1 for t in tasks)


def display_value(data: StudyData, row: pd.Series, obj: str, rung: str) -> tuple[float, float, str]:
    """(value, SE, unit) of one objective of a trial in display units: a loss in nats/token for
    log-likelihood objectives (lower is better), else the stored value. SE is nan without items."""
    tasks = objective_tasks(data, rung).get(obj)
    items = row_items(row)
    if tasks and _has_items(items, tasks):
        unit = unit_of([items[t].metric for t in tasks])
        scale = "units" if unit == "nats/token" else "score"
        total = sum(tasks.values())
        value = sum(w * items[t].score(scale) for t, w in tasks.items()) / total
        se = math.sqrt(sum((w / total * items[t].standard_error(scale)) ** 2 for t, w in tasks.items()))
        return (-value, se, "nats/token") if unit == "nats/token" else (value, se, unit)
    return float(row[obj]), math.nan, "score"


# -- comparisons ------------------------------------------------------------------------------


def compare(data: StudyData, a: pd.Series, b: pd.Series, rung: str, *, role: str = "",
            seed: int = 0) -> Comparison:
    """A against B on every objective (see `Comparison`)."""
    tasks = objective_tasks(data, rung)
    ia, ib = row_items(a), row_items(b)
    with_ci = bool(tasks) and all(o in tasks and _has_items(ia, tasks[o]) and _has_items(ib, tasks[o])
                                  for o in data.objectives)
    diffs: dict[str, Difference] = {}
    units: dict[str, str] = {}
    for k, (obj, direction) in enumerate(zip(data.objectives, data.directions)):
        sign = 1.0 if direction == "maximize" else -1.0
        if with_ci:
            unit = unit_of([ia[t].metric for t in tasks[obj]])
            scale = "units" if unit == "nats/token" else "score"
            d = paired_difference(ia, ib, tasks[obj], scale=scale, level=LEVEL, seed=seed + k)
            units[obj] = unit
        else:
            x = float(a[obj]) - float(b[obj])
            d = Difference(estimate=x, low=x, high=x, se=math.nan, n=0, level=LEVEL)
            units[obj] = "score"
        lo, hi = sorted((sign * d.low, sign * d.high))
        diffs[obj] = Difference(estimate=sign * d.estimate, low=lo, high=hi, se=d.se, n=d.n, level=d.level)
    maxi = ["maximize"] * len(diffs)
    if with_ci:
        v = verdict(list(diffs.values()), maxi)
    else:
        gains = [d.estimate for d in diffs.values()]
        v = ("dominates" if all(g >= 0 for g in gains) and any(g > 0 for g in gains) else
             "dominated" if all(g <= 0 for g in gains) and any(g < 0 for g in gains) else
             "equal" if all(g == 0 for g in gains) else "trade-off")
    return Comparison(other=_label(b), other_trial=int(b["trial"]), role=role, verdict=v, diffs=diffs, units=units,
                      with_ci=with_ci)


def _label(row: pd.Series) -> str:
    return str(row["label"]) if row.get("label") else f"#{int(row['trial'])}"


def best_baseline(data: StudyData, rung: str) -> pd.Series | None:
    """The best non-specialist baseline of the rung (rule in the module doc)."""
    from automerge.report.pareto_table import minimization, specialists

    df = data.rung(rung)
    spec_trials = {s.trial for s in specialists(data, rung)}
    base = df[(df["kind"] == "baseline") & ~df["trial"].isin(spec_trials)]
    if base.empty:
        return None
    Y = minimization(data, base)
    idx = non_dominated_sort(Y)[0]
    if len(idx) == 1:
        return base.iloc[int(idx[0])]
    V = -Y  # higher is better
    lo, hi = V.min(axis=0), V.max(axis=0)
    Z = (V - lo) / np.where(hi > lo, hi - lo, 1.0)
    dist = np.linalg.norm(1.0 - Z[idx], axis=1)
    return base.iloc[int(idx[int(np.argmin(dist))])]


def yardsticks(data: StudyData, rung: str) -> list[tuple[str, pd.Series]]:
    """(role, row): the best baseline, each specialist alone, each reference model."""
    from automerge.report.pareto_table import specialists

    df = data.rung(rung)
    out: list[tuple[str, pd.Series]] = []
    best = best_baseline(data, rung)
    if best is not None:
        out.append(("best baseline", best))
    for s in specialists(data, rung):
        out.append(("specialist", df[df["trial"] == s.trial].iloc[0]))
    for _, r in df[df["kind"] == "reference"].iterrows():
        out.append(("reference", r))
    return out


def ci_dominates(data: StudyData, a: pd.Series, b: pd.Series, rung: str) -> bool:
    """A dominates B beyond the noise (CIs), or by the point values without item data."""
    c = compare(data, a, b, rung)
    if c.with_ci:
        return c.verdict == "dominates"
    from automerge.report.pareto_table import minimization

    Y = minimization(data, pd.DataFrame([a, b]))
    return dominates(Y[0], Y[1])


# -- rung sizes -------------------------------------------------------------------------------


def rung_sizes(data: StudyData, targets: tuple[float, ...] = (0.01, 0.003)) -> pd.DataFrame:
    """What each rung's items can tell apart, from the study's own trials as calibration merges.

    Per rung and objective: the paired SE of the difference between two trials of the rung
    (median over every pair of its trials with item data: the typical comparison the scheduler
    and the front make), the 95 % half-width that gives at the rung's items, the per-item SD it
    implies (SE·√n: a paired SE shrinks as 1/√items), and the items per task a rung needs for a
    95 % half-width of each ``target`` (in the objective's display unit: nats/token, or the
    metric). Empty without item data."""
    rows = []
    for r in data.rungs:
        df = data.rung(r.label)
        tasks = objective_tasks(data, r.label)
        if df.empty or not tasks:
            continue
        items = [row_items(row) for _, row in df.iterrows()]
        for obj in data.objectives:
            t = tasks.get(obj)
            if not t:
                continue
            have = [it for it in items if _has_items(it, t)]
            if len(have) < 2:
                continue
            unit = unit_of([have[0][x].metric for x in t])
            scale = "units" if unit == "nats/token" else "score"
            vecs = [objective_noise(it, t, scale) for it in have]
            vecs = [v for v in vecs if v is not None]
            n = min(have[0][x].n for x in t)
            lengths = {v.size for v in vecs}
            if len(vecs) < 2 or len(lengths) != 1:
                continue
            V = np.stack(vecs)
            sq = (V * V).sum(axis=1)
            var = np.maximum(sq[:, None] + sq[None, :] - 2 * V @ V.T, 0.0)
            iu = np.triu_indices(len(V), k=1)
            se = float(np.median(np.sqrt(var[iu])))
            sd = se * math.sqrt(n)
            row = {"rung": r.label, "objective": obj, "unit": unit, "items": n, "pairs": len(iu[0]),
                   "paired_se": se, "half_width_95": 1.96 * se, "per_item_sd": sd}
            for h in targets:
                row[f"items_for_±{h:g}"] = items_for(sd, h) if sd > 0 else 2
            rows.append(row)
    return pd.DataFrame(rows)


# -- the verdict in words ---------------------------------------------------------------------


def _fmt_value(value: float, se: float, unit: str) -> str:
    if unit == "nats/token":
        text = f"{value:.3f}" + (f" ± {1.96 * se:.3f}" if math.isfinite(se) else "")
        return f"{text} nats/token (ppl {math.exp(value):.1f})"
    return f"{value:.4g}" + (f" ± {1.96 * se:.2g}" if math.isfinite(se) else "")


def _sentence(c: Comparison) -> str:
    """What A does against B, objective by objective, never naming a winner inside the noise."""
    bits = []
    for obj, d in c.diffs.items():
        unit = c.units[obj]
        u = " nats/token" if unit == "nats/token" else ""
        if not c.with_ci:
            word = "better" if d.estimate > 0 else ("worse" if d.estimate < 0 else "equal")
            bits.append(f"{word} on {obj} by {_mag(abs(d.estimate), unit)}{u}")
            continue
        half = _mag((d.high - d.low) / 2, unit)
        if d.low > 0:
            bits.append(f"better on {obj} by {_mag(d.estimate, unit)} ± {half}{u}")
        elif d.high < 0:
            bits.append(f"worse on {obj} by {_mag(-d.estimate, unit)} ± {half}{u}")
        else:
            bits.append(f"within the noise on {obj} ({_signed(d.estimate, unit)} ± {half}{u})")
    return "; ".join(bits)


def verdict_lines(data: StudyData, rung: str | None = None, *, report: str | None = None) -> list[str]:
    """The end-of-run verdict: the knee trial, what it gains or loses against the best baseline
    and each specialist, whether any merge beat the data-mix (reference) model, and where the
    report is. 95 % CIs, paired over the items both trials scored."""
    from automerge.report.pareto_table import front, pick

    label = data.rung_label(rung)
    fr = front(data, label)
    if fr.empty:
        return [f"No search trial finished at rung {label}; nothing to conclude yet."]
    knee = pick(data, "knee", label)
    sticks = yardsticks(data, label)
    lines = _knee_lines(data, knee, label)
    lines += _yardstick_lines(data, knee, sticks, label)
    best = next((r for role, r in sticks if role == "best baseline"), None)
    if best is not None:
        lines.append(_front_vs_best_line(data, fr, best, label))
    lines += [_front_vs_reference_line(data, fr, knee, ref, label) for role, ref in sticks if role == "reference"]
    lines += _rung_sizes_line(data)
    if report:
        lines.append(f"- report: {report}")
    return lines


def _knee_lines(data: StudyData, knee: pd.Series, label: str) -> list[str]:
    """The verdict's heading (items per task, whether ± are CIs) and the knee's own values."""
    from automerge.report.pareto_table import summarize_recipe

    items = knee.get("attr:items") if "attr:items" in knee.index else None
    n_txt = f"{int(items)} items per task" if isinstance(items, numbers.Real) and not pd.isna(items) else "all items"
    head = (f"Verdict at rung {label} ({n_txt}; "
            + ("± = 95 % CI, paired over the same items):" if row_items(knee) else
               "this study stored no per-item scores, so these are point values without error bars):"))
    vals = []
    for obj in data.objectives:
        v, se, unit = display_value(data, knee, obj, label)
        vals.append(f"{obj} {'loss ' if unit == 'nats/token' else ''}{_fmt_value(v, se, unit)}")
    return [head, f"- knee: trial #{int(knee['trial'])} ({_label(knee)}, {knee['method']}: "
                  f"{summarize_recipe(knee['recipe'])}) — " + ", ".join(vals) + "."]


def _yardstick_lines(data: StudyData, knee: pd.Series, sticks: list[tuple[str, pd.Series]], label: str) -> list[str]:
    """The knee against the best baseline and each specialist, objective by objective."""
    if not sticks:
        return ["- no baselines at this rung to compare with."]
    return [f"- vs {_label(row)} ({role}): {_sentence(compare(data, knee, row, label, role=role))}."
            for role, row in sticks if role != "reference"]


def _front_vs_best_line(data: StudyData, fr: pd.DataFrame, best: pd.Series, label: str) -> str:
    """Does any front merge beat the best baseline beyond the noise?"""
    cs = [compare(data, r, best, label) for _, r in fr.iterrows()]
    wins = [f"#{int(r['trial'])}" for (_, r), c in zip(fr.iterrows(), cs) if c.verdict == "dominates"]
    if all(c.verdict == "indistinguishable" for c in cs) and cs[0].with_ci:
        return f"- no merge on the front is distinguishable from {_label(best)}."
    if wins:
        return f"- front trials that beat {_label(best)} beyond the noise: {', '.join(wins)}."
    return (f"- no front trial beats {_label(best)} on one objective without losing on another"
            + (" beyond the noise." if cs[0].with_ci else "."))


def _front_vs_reference_line(data: StudyData, fr: pd.DataFrame, knee: pd.Series, ref: pd.Series, label: str) -> str:
    """Does any front merge beat a reference (data-mix) model, overall or on some objectives?"""
    cs = [(r, compare(data, r, ref, label)) for _, r in fr.iterrows()]
    better = [(r, c) for r, c in cs if any(d.low > 0 for d in c.diffs.values()) and c.with_ci]
    wins = [f"#{int(r['trial'])}" for r, c in cs if c.verdict == "dominates"]
    if wins:
        return (f"- merges that beat the {_label(ref)} model (reference) on every objective it can be "
                f"told apart: {', '.join(wins)}.")
    if better:
        objs = sorted({o for _, c in better for o, d in c.diffs.items() if d.low > 0})
        return f"- no merge beats the {_label(ref)} model (reference) overall; some beat it on {', '.join(objs)} only."
    return (f"- no merge beats the {_label(ref)} model (reference) on any objective; the knee vs it: "
            f"{_sentence(compare(data, knee, ref, label))}.")


def _rung_sizes_line(data: StudyData) -> list[str]:
    """What each rung can tell apart (`rung_sizes`), in one line; none without item data."""
    sizes = rung_sizes(data)
    if sizes.empty:
        return []
    parts = []
    for rl, g in sizes.groupby("rung", sort=False):
        unit = " nats/token" if set(g["unit"]) == {"nats/token"} else ""
        parts.append(f"rung {rl} ({int(g['items'].iloc[0])} items): "
                     + ", ".join(f"{o} ±{_mag(h, u)}" for o, h, u in zip(g["objective"], g["half_width_95"],
                                                                          g["unit"])) + unit)
    return ["- what the rungs can tell apart (typical paired 95 % half-width): " + "; ".join(parts)
            + ". Items per task for a given error bar: the report's 'Rung sizes' section."]
