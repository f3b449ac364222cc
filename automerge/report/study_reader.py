"""Load a finished (or running) automerge study from storage into pandas. Read-only.

A study named ``night1`` is several Optuna studies in one storage, one per rung (the layout:
`automerge.search.study`; its names: `automerge.study_format`)::

    night1          rung 0   (the cheapest proxy evaluation, every trial)
    night1:r1       rung 1   (trials promoted from rung 0; user_attr ``parent`` = their number there)
    ...
    night1:full     the top rung: the full evaluation

Every trial carries user_attrs ``recipe`` (YAML text), ``rung``, ``parent``, ``kind``
("baseline" | "reference" | "search"), ``label`` and ``score:<task>`` per evaluated task; the
objective names are the studies' metric names.

    data = load_study("night1")                       # results/night1/study.db
    data = load_study("night1", storage="postgresql://...")
    data.trials                                       # one row per trial per rung
    data.rung("full")                                 # the rows of one rung

Columns of ``data.trials``: ``rung`` (label "0", "1", ..., "full"), ``rung_index`` (0, 1, ...;
full is the last), ``study_name``, ``trial`` (number inside its rung's study), ``state``,
``kind``, ``label``, ``parent``, ``method``, one column per objective (the metric names),
``score:<task>`` per task, ``param:<name>`` per Optuna parameter, ``recipe`` (YAML text),
``datetime_start``, ``datetime_complete``, ``duration_s`` (seconds the trial ran) and
``compute_s`` (device seconds charged to the trial: the user_attrs ``apply_seconds`` +
``eval_seconds`` the search records, else ``duration_s``), and ``attr:<key>`` for every other scalar
user_attr.

Nothing here writes to the storage: SQLite files are opened only if they exist and tables are
never created.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from automerge.errors import AutomergeError, RecipeError
from automerge.study_format import COMPUTE_ATTRS, FULL, Attr, Kind, StudyNotFoundError, open_storage, redact, \
    rung_of, stored_recipe

DEFAULT_RESULTS = Path("results")
_KNOWN_ATTRS = {Attr.RECIPE, Attr.RUNG, Attr.PARENT, Attr.KIND, Attr.LABEL}


@dataclass(frozen=True)
class Rung:
    """One rung of a study: its own Optuna study."""

    label: str  # "0", "1", ..., "full"
    index: int  # position in rung order; full is the last
    study_name: str  # the Optuna study's name
    n_trials: int


@dataclass
class StudyData:
    """Everything report/ needs from one study, read once."""

    name: str
    storage_url: str
    study_dir: Path
    rungs: list[Rung]
    objectives: list[str]  # metric names (or values_0, values_1, ...)
    directions: list[str]  # "maximize" | "minimize", one per objective
    trials: pd.DataFrame
    user_attrs: dict[str, Any] = field(default_factory=dict)  # rung-0 study's user_attrs
    space: dict[str, Any] = field(default_factory=dict)  # the resolved search space (raw YAML mapping)

    def specialist_domains(self) -> dict[str, str]:
        """Specialist name -> its domain, as the search space declares it (may be empty)."""
        out = {}
        for s in self.space.get("specialists") or []:
            if isinstance(s, dict) and s.get("name") and s.get("domain"):
                out[str(s["name"])] = str(s["domain"])
        return out

    # -- selection -------------------------------------------------------------------------

    @property
    def rung_labels(self) -> list[str]:
        return [r.label for r in self.rungs]

    def rung_label(self, which: str | int | None = None) -> str:
        """Normalise a rung argument ("0", 2, "r2", "full", None = top rung with results)."""
        if which is None:
            return self.top_rung()
        text = str(which).strip().lower()
        if text.startswith("r") and text[1:].isdigit():
            text = text[1:]
        if text in self.rung_labels:
            return text
        raise AutomergeError(
            f"study {self.name!r} has no rung {which!r}; its rungs are {', '.join(self.rung_labels)}"
        )

    def top_rung(self) -> str:
        """The highest rung that holds at least one completed trial (else rung 0)."""
        done = self.completed()
        for r in reversed(self.rungs):
            if (done["rung"] == r.label).any():
                return r.label
        return self.rungs[0].label

    def rung(self, which: str | int | None = None, *, completed: bool = True) -> pd.DataFrame:
        label = self.rung_label(which)
        df = self.completed() if completed else self.trials
        return df[df["rung"] == label]

    def completed(self) -> pd.DataFrame:
        """COMPLETE trials with every objective finite."""
        df = self.trials
        if df.empty:
            return df
        ok = df["state"] == "COMPLETE"
        for obj in self.objectives:
            ok &= df[obj].map(lambda v: v is not None and isinstance(v, (int, float)) and math.isfinite(v))
        return df[ok]

    def trial(self, number: int, rung: str | int | None = None) -> pd.Series:
        """One trial's row (rung: default the top rung with results)."""
        label = self.rung_label(rung)
        rows = self.trials[(self.trials["rung"] == label) & (self.trials["trial"] == int(number))]
        if rows.empty:
            numbers = self.trials.loc[self.trials["rung"] == label, "trial"].tolist()
            span = f"{min(numbers)}..{max(numbers)}" if numbers else "none"
            raise AutomergeError(
                f"study {self.name!r} rung {label} has no trial {number} (trials there: {span}); "
                "pick another --trial or --rung"
            )
        return rows.iloc[0]

    def lineage(self, row: pd.Series) -> list[pd.Series]:
        """The row and the same recipe at every other rung (parents below, promotions above)."""
        by_key = {(r["rung"], int(r["trial"])): r for _, r in self.trials.iterrows()}
        index = {r.label: r.index for r in self.rungs}
        labels = self.rung_labels
        chain = [row]
        cur = row
        while index[cur["rung"]] > 0 and _is_int(cur["parent"]):
            prev = by_key.get((labels[index[cur["rung"]] - 1], int(cur["parent"])))
            if prev is None:
                break
            chain.insert(0, prev)
            cur = prev
        cur = row
        while index[cur["rung"]] + 1 < len(labels):
            nxt_label = labels[index[cur["rung"]] + 1]
            children = self.trials[(self.trials["rung"] == nxt_label)
                                   & (self.trials["parent"] == int(cur["trial"]))]
            if children.empty:
                break
            # a re-run after a dead worker leaves a FAIL child beside the COMPLETE one: prefer it
            children = children.assign(_done=children["state"] != "COMPLETE").sort_values(["_done", "trial"])
            cur = children.drop(columns="_done").iloc[0]
            chain.append(cur)
        return chain

    def score_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("score:")]

    def param_columns(self) -> list[str]:
        return [c for c in self.trials.columns if c.startswith("param:")]


# -- storage ---------------------------------------------------------------------------------


def resolve_storage(study: str, storage: str | None = None,
                    results_dir: str | Path = DEFAULT_RESULTS) -> tuple[str, Path]:
    """(storage URL, study directory). Without a URL: ``<results_dir>/<study>/study.db``."""
    study_dir = Path(results_dir) / study
    if storage:
        return storage, study_dir
    db = study_dir / "study.db"
    if not db.is_file():
        raise StudyNotFoundError(
            f"no study database at {db}; run `automerge search --study {study}` first, or pass "
            "--storage URL (e.g. sqlite:///path/study.db or postgresql://...)"
        )
    return f"sqlite:///{db.resolve()}", study_dir


def rung_studies(names: Iterable[str], study: str) -> list[tuple[str, int, str]]:
    """(label, index, optuna study name) of every rung of `study` among `names`, in rung order."""
    found: list[tuple[str, int, str]] = []
    full = None
    for name in names:
        rung = rung_of(name, study)
        if rung == FULL:
            full = name
        elif rung is not None:
            found.append((str(rung), rung, name))
    found.sort(key=lambda x: x[1])
    if full is not None:
        top = found[-1][1] + 1 if found else 0
        found.append((FULL, top, full))
    return found


def load_study(study: str, storage: str | None = None, results_dir: str | Path = DEFAULT_RESULTS) -> StudyData:
    """Read every rung of `study` (see the module doc for the table it builds)."""
    import optuna

    url, study_dir = resolve_storage(study, storage, results_dir)
    store = open_storage(url)
    summaries = {s.study_name: s for s in store.get_all_studies()}
    rungs = rung_studies(summaries, study)
    if not rungs or rungs[0][1] != 0 or rungs[0][2] != study:
        known = sorted(n for n in summaries if ":" not in n)
        raise StudyNotFoundError(
            f"storage {redact(url)} holds no study {study!r}"
            + (f"; studies there: {', '.join(known)}" if known else " (it holds no studies)")
        )
    rows: list[dict[str, Any]] = []
    objectives: list[str] | None = None
    directions: list[str] | None = None
    out_rungs: list[Rung] = []
    user_attrs: dict[str, Any] = {}
    for i, (label, _, name) in enumerate(rungs):
        ostudy = optuna.load_study(study_name=name, storage=store)
        dirs = [d.name.lower() for d in ostudy.directions]
        names = ostudy.metric_names or [f"values_{j}" for j in range(len(dirs))]
        if objectives is None:
            objectives, directions = list(names), dirs
            user_attrs = dict(ostudy.user_attrs)
        elif list(names) != objectives or dirs != directions:
            raise AutomergeError(
                f"rung study {name!r} has objectives {names} ({dirs}) but {study!r} has "
                f"{objectives} ({directions}); the storage mixes two different studies"
            )
        trials = ostudy.get_trials(deepcopy=False)
        out_rungs.append(Rung(label=label, index=i, study_name=name, n_trials=len(trials)))
        for t in trials:
            rows.append(_row(t, label, i, name, objectives))
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["rung", "rung_index", "study_name", "trial", "state", "kind", "label",
                                   "parent", "method", *objectives, "recipe", "item_scores", "datetime_start",
                                   "datetime_complete", "duration_s", "compute_s"])
    else:
        fixed = ["rung", "rung_index", "study_name", "trial", "state", "kind", "label", "parent", "method",
                 *objectives]
        scores = sorted(c for c in df.columns if c.startswith("score:"))
        params = sorted(c for c in df.columns if c.startswith("param:"))
        rest = [c for c in df.columns if c not in fixed and c not in scores and c not in params]
        df = df[fixed + scores + params + rest]
        df["parent"] = df["parent"].astype("Int64")
        df = df.sort_values(["rung_index", "trial"], kind="stable").reset_index(drop=True)
    return StudyData(name=study, storage_url=url, study_dir=study_dir, rungs=out_rungs,
                     objectives=objectives or [], directions=directions or [], trials=df,
                     user_attrs=user_attrs, space=_space(user_attrs, study_dir))


def _space(user_attrs: dict[str, Any], study_dir: Path) -> dict[str, Any]:
    """The search space the study stored (user_attr ``space``), else results/<study>/space.yaml."""
    import yaml

    text = user_attrs.get("space")
    if not isinstance(text, str) and (study_dir / "space.yaml").is_file():
        text = (study_dir / "space.yaml").read_text()
    if not isinstance(text, str):
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _row(t, label: str, index: int, study_name: str, objectives: list[str]) -> dict[str, Any]:
    attrs = t.user_attrs
    values = list(t.values) if t.values is not None else [math.nan] * len(objectives)
    duration = (t.datetime_complete - t.datetime_start).total_seconds() \
        if t.datetime_start is not None and t.datetime_complete is not None else math.nan
    parts = [float(attrs[k]) for k in COMPUTE_ATTRS if _is_number(attrs.get(k))]
    compute = sum(parts) if parts else duration
    recipe = attrs.get(Attr.RECIPE)
    row: dict[str, Any] = {
        "rung": label,
        "rung_index": index,
        "study_name": study_name,
        "trial": t.number,
        "state": t.state.name,
        "kind": attrs.get(Attr.KIND, Kind.SEARCH.value),
        "label": attrs.get(Attr.LABEL) or "",
        "parent": int(attrs[Attr.PARENT]) if _is_int(attrs.get(Attr.PARENT)) else None,
        "method": _method_of(recipe),
    }
    for name, value in zip(objectives, values):
        row[name] = float(value) if value is not None else math.nan
    for key, value in attrs.items():
        if key.startswith("score:"):
            row[key] = float(value) if _is_number(value) else math.nan
    for key, value in t.params.items():
        row[f"param:{key}"] = value
    for key, value in attrs.items():
        if key not in _KNOWN_ATTRS and not key.startswith("score:") and isinstance(value, (str, int, float, bool)):
            row[f"attr:{key}"] = value
    row["recipe"] = recipe
    row["item_scores"] = attrs.get(Attr.ITEM_SCORES) if isinstance(attrs.get(Attr.ITEM_SCORES), dict) else None
    row["datetime_start"] = t.datetime_start
    row["datetime_complete"] = t.datetime_complete
    row["duration_s"] = duration
    row["compute_s"] = compute
    return row


def _method_of(recipe: Any) -> str:
    """The stored recipe's method ("" without a recipe, "?" for one that does not parse)."""
    try:
        parsed = stored_recipe(recipe)
    except RecipeError:
        return "?"
    return parsed.method if parsed is not None else ""


def _is_int(value: Any) -> bool:
    if isinstance(value, bool) or value is None or value is pd.NA:
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, numbers.Real) and math.isfinite(value) and value == int(value):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
