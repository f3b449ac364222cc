"""Numbers behind the plots, as DataFrames (shared by the PNGs and the HTML report).

* `hypervolume_history`: for every rung, the hypervolume of the front of its completed search
  trials after each completion, against wall time since the study's first trial started and
  against the compute the whole search had used by then (sum of ``compute_s`` of every trial
  of every rung finished so far). Each rung has one fixed reference point: just worse than
  every completed trial there, baselines included (`automerge.pareto.reference_point`),
  so a rung's curve only rises.
* `param_importances`: Optuna's `get_param_importances` (PED-ANOVA, the Optuna 5 default) on
  rung 0's search trials, once per objective and once for the front as a whole. Baselines
  are left out (they are enqueued recipes, not samples of the space); the study itself is not
  touched (the trials are copied into an in-memory study).
* `group_profiles`: per layer group, the effective scale λ·w_i of each specialist and its
  density, for the given trials (the front's), read from their recipes.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable

import numpy as np
import pandas as pd

from automerge.report.pareto_table import minimization, parse_recipe
from automerge.report.study_reader import StudyData
from automerge.pareto import hypervolume, reference_point


def hypervolume_history(data: StudyData) -> pd.DataFrame:
    columns = ["rung", "trial", "time_s", "compute_s", "hypervolume"]
    done = data.completed()
    done = done[done["datetime_complete"].notna()]
    if done.empty:
        return pd.DataFrame(columns=columns)
    starts = data.trials["datetime_start"].dropna()
    t0 = starts.min() if not starts.empty else done["datetime_complete"].min()
    # compute used by everything finished (any state, any rung) up to each moment
    finished = data.trials[data.trials["datetime_complete"].notna()].sort_values("datetime_complete")
    times = finished["datetime_complete"].to_numpy()
    spent = np.nan_to_num(finished["compute_s"].to_numpy(dtype=float)).cumsum()
    rows = []
    for rung in data.rung_labels:
        df = done[done["rung"] == rung]
        search = df[df["kind"] == "search"].sort_values(["datetime_complete", "trial"])
        if search.empty:
            continue
        ref = reference_point(minimization(data, df))
        Y = minimization(data, search)
        for i, (_, r) in enumerate(search.iterrows()):
            when = r["datetime_complete"]
            k = int(np.searchsorted(times, np.datetime64(when), side="right"))
            rows.append({
                "rung": rung,
                "trial": int(r["trial"]),
                "time_s": (when - t0).total_seconds(),
                "compute_s": float(spent[k - 1]) if k > 0 else 0.0,
                "hypervolume": hypervolume(Y[: i + 1], ref),
            })
    return pd.DataFrame(rows, columns=columns)


def param_importances(data: StudyData, rung: str | None = None) -> pd.DataFrame:
    """Columns: target (an objective name or "front"), param, importance (normalised per target)."""
    import optuna

    from automerge.study_format import open_storage

    columns = ["target", "param", "importance"]
    label = data.rung_label(rung) if rung is not None else data.rung_labels[0]
    name = next(r.study_name for r in data.rungs if r.label == label)
    source = optuna.load_study(study_name=name, storage=open_storage(data.storage_url))
    trials = [
        t for t in source.get_trials(deepcopy=True, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("kind", "search") == "search" and t.params
        and t.values is not None and all(math.isfinite(v) for v in t.values)
    ]
    if len(trials) < 2:
        return pd.DataFrame(columns=columns)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        copy = optuna.create_study(directions=source.directions)  # in memory: the study stays untouched
        copy.add_trials(trials)
    finally:
        optuna.logging.set_verbosity(level)
    targets: list[tuple[str, object]] = []
    for i, (obj, direction) in enumerate(zip(data.objectives, data.directions)):
        sign = -1.0 if direction == "maximize" else 1.0  # PED-ANOVA ranks low targets best
        targets.append((obj, lambda t, i=i, s=sign: s * t.values[i]))
    if len(data.objectives) > 1:
        targets.append(("front", None))
    rows = []
    for target_name, target in targets:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(copy, target=target)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # too few distinct trials for this target
        rows.extend({"target": target_name, "param": p, "importance": float(v)} for p, v in imp.items())
    return pd.DataFrame(rows, columns=columns)


def group_positions(num_groups: int, split: bool) -> list[tuple[str, float]]:
    """(group name, relative depth in [0, 1]) in model order: embed 0, blocks inside, head 1."""
    out = [("embed", 0.0)]
    for g in range(num_groups):
        if split:
            out.append((f"block{g}.attn", (g + 0.3) / num_groups))
            out.append((f"block{g}.mlp", (g + 0.7) / num_groups))
        else:
            out.append((f"block{g}", (g + 0.5) / num_groups))
    out.append(("head", 1.0))
    return out


def group_profiles(data: StudyData, rows: pd.DataFrame | Iterable[pd.Series]) -> pd.DataFrame:
    """Columns: rung, trial, label, model, group, position, scale (λ·w), density (NaN when the
    method has none). One row per trial × specialist × layer group."""
    columns = ["rung", "trial", "label", "model", "group", "position", "scale", "density"]
    items = rows.iterrows() if isinstance(rows, pd.DataFrame) else enumerate(rows)
    out = []
    for _, r in items:
        recipe = parse_recipe(r["recipe"])
        if recipe is None:
            continue
        for m in recipe.models:
            for group, pos in group_positions(recipe.num_groups, recipe.split_attn_mlp):
                lam = _value(recipe.parameters.get("lambda"), group, 1.0)
                w = _value(m.parameters.get("weight"), group, 1.0)
                d = _value(m.parameters.get("density"), group, math.nan)
                out.append({
                    "rung": r["rung"], "trial": int(r["trial"]), "label": r.get("label") or "",
                    "model": m.name, "group": group, "position": pos,
                    "scale": lam * w, "density": d,
                })
    return pd.DataFrame(out, columns=columns)


def _value(value, group: str, default: float) -> float:
    """A possibly group-valued parameter at one group, with the recipe's lookup order."""
    from automerge.recipe import lookup_keys

    if value is None or isinstance(value, bool):
        return default
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        for key in lookup_keys(group):
            if key in value:
                return float(value[key])
    return default
