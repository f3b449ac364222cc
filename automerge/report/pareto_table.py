"""The Pareto table of one rung: front trials, baselines and references, retention, domination.

    data = load_study("night1")
    table = pareto_table(data, rung="full")     # pandas DataFrame, one row per shown trial
    row = pick(data, "knee")                     # a front trial (pandas Series)

Which trials are on the front: the non-dominated *search* trials of the rung (the same set
the scheduler promotes from; `automerge.pareto` does the sorting). Baselines (the
base model, each specialist alone, simple merges the search enqueues) and reference models
(e.g. the data-mix model) are shown below the front and marked by ``kind``; the ``dominates``
column of a front trial names the baselines/references it dominates *beyond the noise* (the
paired 95 % CI excludes zero in its favour on one objective and against it on none, see
`automerge.report.errorbars`; by the point values for a study stored without per-item
scores), and ``dominated_by`` of a baseline names the front trials that dominate it.

Error bars: ``<objective> [unit]`` is the objective in units a user knows (a loss in
nats/token for log-likelihood objectives, lower is better; else the metric) and
``±<objective>`` its 95 % half-width (1.96 SE, delta method over the items). ``vs:<label>``
(front trials) compares the trial with the best baseline and with each specialist: the verdict
(dominates / dominated / trade-off / indistinguishable) and the gain per objective ± its paired
95 % CI (positive = better for the trial).

Retention: for every specialist baseline S of the rung, ``retention:S`` = the trial's score on
S's own domain objective ÷ S's score on it (for a minimised objective the ratio is inverted,
so > 1 always means better than the specialist). A specialist baseline is a baseline trial
whose recipe gives a non-zero weight to exactly one model (the search's "<name> alone"; or
whose ``attr:specialist`` names it); its own domain is the ``domain`` the search space gives
that specialist when it is an objective's name, else the objective where it stands out most
from the other specialist baselines (z-score over them; with one specialist, the one where it
beats the base-model baseline most).

Picks (among the rung's front): ``best-<objective>`` (``best-nl``, ``best-code``) is the front
trial best on that objective; ``knee`` normalises each objective over the front to [0, 1]
(1 = best), draws the line through the two extreme points (the front's best trial on each
objective) and takes the front trial farthest from that line on the side of the ideal point
(1, 1). With more than two objectives the line becomes the hyperplane through the extreme
points. A front of one or two trials has no knee: the trial nearest the ideal point is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from automerge.errors import AutomergeError, RecipeError
from automerge.pareto import dominates, non_dominated_sort, to_minimization
from automerge.report.study_reader import StudyData
from automerge.study_format import stored_recipe

if TYPE_CHECKING:
    from automerge.recipe import Recipe


@dataclass(frozen=True)
class Specialist:
    """A specialist baseline in one rung: what retention is measured against."""

    name: str  # the model's name in recipes
    label: str  # the trial's label
    trial: int
    objective: str  # its own domain
    value: float  # its score there


# -- recipes --------------------------------------------------------------------------------


def parse_recipe(text: Any) -> Recipe | None:
    """A stored recipe as a `Recipe` (`automerge.study_format.stored_recipe`, parsed once per
    text); None without one, or for one that does not parse (the table shows it without params)."""
    try:
        return stored_recipe(text)
    except RecipeError:
        return None


def _mean(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and value:
        nums = [float(v) for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return sum(nums) / len(nums) if nums else None
    return None


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    if isinstance(value, dict) and value:
        nums = [float(v) for v in value.values() if isinstance(v, (int, float))]
        if nums and min(nums) != max(nums):
            return f"{min(nums):.2g}–{max(nums):.2g}"
        if nums:
            return f"{nums[0]:.3g}"
    return str(value)


_SHORT = {"lambda": "λ", "weight": "w", "density": "d", "epsilon": "ε", "gamma": "γ"}


def summarize_recipe(text: Any) -> str:
    """Key parameters in one line: ``λ=1.1 G=4; code w=0.7 d=0.3–0.8; lang w=0.5 d=0.5``.

    A value that differs between layer groups shows as its range over the groups.
    """
    recipe = parse_recipe(text)
    if recipe is None:
        return ""
    parts = []
    head = [f"{_SHORT.get(k, k)}={_fmt_value(v)}" for k, v in recipe.parameters.items()]
    if recipe.num_groups > 1:
        head.append(f"G={recipe.num_groups}{'×2' if recipe.split_attn_mlp else ''}")
    if head:
        parts.append(" ".join(head))
    for m in recipe.models:
        inner = " ".join(f"{_SHORT.get(k, k)}={_fmt_value(v)}" for k, v in m.parameters.items())
        parts.append(f"{m.name} {inner}".strip())
    return "; ".join(parts)


def model_weights(text: Any) -> dict[str, float]:
    """Effective mean weight per model of a recipe (λ × mean weight; 1.0 when unweighted)."""
    recipe = parse_recipe(text)
    if recipe is None:
        return {}
    lam = _mean(recipe.parameters.get("lambda"))
    lam = 1.0 if lam is None else lam
    out = {}
    for m in recipe.models:
        w = _mean(m.parameters.get("weight"))
        out[m.name] = lam * (1.0 if w is None else w)
    return out


# -- objectives -----------------------------------------------------------------------------


def minimization(data: StudyData, df: pd.DataFrame) -> np.ndarray:
    """Objective values of the rows in minimisation form (see automerge.pareto)."""
    if df.empty:
        return np.zeros((0, len(data.objectives)))
    return to_minimization(df[data.objectives].to_numpy(dtype=float), data.directions)


def front(data: StudyData, rung: str | int | None = None) -> pd.DataFrame:
    """The rung's non-dominated completed search trials, best on the first objective first."""
    df = data.rung(rung)
    search = df[df["kind"] == "search"]
    if search.empty:
        return search
    idx = non_dominated_sort(minimization(data, search))[0]
    out = search.iloc[np.sort(idx)]
    return _sort_by_objective(data, out)


def _sort_by_objective(data: StudyData, df: pd.DataFrame) -> pd.DataFrame:
    obj, direction = data.objectives[0], data.directions[0]
    return df.sort_values([obj, "trial"], ascending=[direction == "minimize", True], kind="stable")


def display_label(row: pd.Series) -> str:
    return str(row["label"]) if row.get("label") else f"#{int(row['trial'])}"


def specialists(data: StudyData, rung: str | int | None = None) -> list[Specialist]:
    """The specialist baselines of a rung with their own domain objective (see module doc)."""
    df = data.rung(rung)
    base = df[df["kind"] == "baseline"]
    found: list[tuple[str, pd.Series]] = []
    base_model_row = None
    for _, row in base.iterrows():
        name = row.get("attr:specialist") if "attr:specialist" in row.index else None
        if isinstance(name, str) and name:
            found.append((name, row))
            continue
        weights = model_weights(row["recipe"])
        nonzero = [n for n, w in weights.items() if abs(w) > 1e-12]
        if len(nonzero) == 1:
            found.append((nonzero[0], row))
        elif weights and not nonzero:
            base_model_row = row
        elif not weights and str(row.get("label", "")).lower() in ("base", "base model"):
            base_model_row = row
    if not found:
        return []
    Y = -minimization(data, pd.DataFrame([r for _, r in found]))  # higher is better everywhere
    if len(found) > 1:
        spread = Y.std(axis=0)
        z = (Y - Y.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    elif base_model_row is not None:
        ref = -minimization(data, pd.DataFrame([base_model_row]))[0]
        z = (Y - ref) / np.where(np.abs(ref) > 0, np.abs(ref), 1.0)
    else:
        z = np.zeros_like(Y)
    declared = data.specialist_domains()
    out = []
    for i, (name, row) in enumerate(found):
        domain = row.get("attr:domain") if "attr:domain" in row.index else None
        domain = domain if isinstance(domain, str) else declared.get(name)
        obj = domain if domain in data.objectives else data.objectives[int(np.argmax(z[i]))]
        out.append(Specialist(name=name, label=display_label(row), trial=int(row["trial"]), objective=obj,
                              value=float(row[obj])))
    return out


def retention(data: StudyData, row: pd.Series, spec: Specialist) -> float:
    value = float(row[spec.objective])
    direction = data.directions[data.objectives.index(spec.objective)]
    num, den = (value, spec.value) if direction == "maximize" else (spec.value, value)
    return num / den if den != 0 else math.nan


# -- the table ------------------------------------------------------------------------------


def pareto_table(data: StudyData, rung: str | int | None = None) -> pd.DataFrame:
    """Front trials then baselines then references of one rung (see the module doc for columns)."""
    from automerge.report.errorbars import ci_dominates, compare, display_value, yardsticks

    label = data.rung_label(rung)
    df = data.rung(label)
    fr = front(data, label)
    yard = df[df["kind"].isin(["baseline", "reference"])]
    yard = pd.concat([_sort_by_objective(data, yard[yard["kind"] == k]) for k in ("baseline", "reference")])
    specs = specialists(data, label)
    sticks = [(role, r) for role, r in yardsticks(data, label) if role != "reference"]
    beats = {(i, j): ci_dominates(data, r, b, label)
             for i, (_, r) in enumerate(fr.iterrows()) for j, (_, b) in enumerate(yard.iterrows())}
    rows = []
    for i, (_, r) in enumerate(fr.iterrows()):
        beaten = [display_label(b) for j, (_, b) in enumerate(yard.iterrows()) if beats[i, j]]
        row = _table_row(data, r, specs, on_front=True, dominates_=beaten, dominated_by=[])
        for role, b in sticks:
            row[f"vs:{display_label(b)}"] = compare(data, r, b, label, role=role).text()
        rows.append(row)
    for j, (_, b) in enumerate(yard.iterrows()):
        by = [f"#{int(r['trial'])}" for i, (_, r) in enumerate(fr.iterrows()) if beats[i, j]]
        rows.append(_table_row(data, b, specs, on_front=False, dominates_=[], dominated_by=by))
    for row, (_, r) in zip(rows, [*fr.iterrows(), *yard.iterrows()]):
        for obj in data.objectives:
            value, se, unit = display_value(data, r, obj, label)
            row[f"{obj} [{unit}]"] = value
            row[f"±{obj}"] = 1.96 * se
    units = [f"{obj} [{display_value(data, (fr if not fr.empty else yard).iloc[0], obj, label)[2]}]"
             for obj in data.objectives] if len(rows) else []
    columns = ["rung", "trial", "kind", "label", "on_front", "method", "params", *data.objectives,
               *[c for obj, u in zip(data.objectives, units) for c in (u, f"±{obj}")],
               *[f"retention:{s.name}" for s in specs], "dominates", "dominated_by",
               *[f"vs:{display_label(b)}" for _, b in sticks], "parent"]
    return pd.DataFrame(rows, columns=columns).reset_index(drop=True)


def _table_row(data: StudyData, r: pd.Series, specs: list[Specialist], *, on_front: bool,
               dominates_: list[str], dominated_by: list[str]) -> dict:
    out = {
        "rung": r["rung"],
        "trial": int(r["trial"]),
        "kind": r["kind"],
        "label": r["label"] or "",
        "on_front": on_front,
        "method": r["method"],
        "params": summarize_recipe(r["recipe"]),
    }
    for obj in data.objectives:
        out[obj] = float(r[obj])
    for s in specs:
        out[f"retention:{s.name}"] = retention(data, r, s)
    out["dominates"] = ", ".join(dominates_)
    out["dominated_by"] = ", ".join(dominated_by)
    out["parent"] = None if pd.isna(r["parent"]) else int(r["parent"])
    return out


# -- picks ----------------------------------------------------------------------------------


def knee_index(values: np.ndarray) -> int:
    """Row of `values` (higher is better, front points) farthest beyond the extremes' line.

    Objectives are scaled to [0, 1] over the rows; the extreme points are the best row on each
    objective; the distance is signed, positive toward the ideal point (all ones).
    """
    V = np.asarray(values, dtype=float)
    n, m = V.shape
    lo, hi = V.min(axis=0), V.max(axis=0)
    Z = (V - lo) / np.where(hi > lo, hi - lo, 1.0)
    ideal_dist = np.linalg.norm(1.0 - Z, axis=1)
    if n <= 2:
        return int(np.argmin(ideal_dist))
    extremes = Z[[int(np.argmax(Z[:, j])) for j in range(m)]]
    # hyperplane through the extremes: normal n with (x - e0)·n = 0; m=2 is the line through them
    diffs = extremes[1:] - extremes[0]
    if m == 1 or np.linalg.matrix_rank(diffs) < m - 1:
        return int(np.argmin(ideal_dist))
    _, _, vh = np.linalg.svd(diffs)
    normal = vh[-1]
    if np.dot(np.ones(m) - extremes[0], normal) < 0:
        normal = -normal  # point toward the ideal side
    dist = (Z - extremes[0]) @ normal / np.linalg.norm(normal)
    best = np.flatnonzero(np.isclose(dist, dist.max(), rtol=0, atol=1e-12))
    return int(best[np.argmin(ideal_dist[best])])


def pick(data: StudyData, how: str, rung: str | int | None = None) -> pd.Series:
    """A front trial of the rung: ``knee`` or ``best-<objective>`` (see the module doc)."""
    label = data.rung_label(rung)
    fr = front(data, label)
    if fr.empty:
        raise AutomergeError(
            f"study {data.name!r} rung {label} has no completed search trial to pick from; "
            "choose another --rung or give --trial"
        )
    choices = ["knee", *[f"best-{o}" for o in data.objectives]]
    if how == "knee":
        i = knee_index(-minimization(data, fr))
        return fr.iloc[i]
    if how.startswith("best-") and how[5:] in data.objectives:
        obj = how[5:]
        asc = data.directions[data.objectives.index(obj)] == "minimize"
        return fr.sort_values([obj, "trial"], ascending=[asc, True], kind="stable").iloc[0]
    raise AutomergeError(f"unknown pick {how!r}; choose one of {', '.join(choices)}")
