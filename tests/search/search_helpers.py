"""Helpers shared by the search tests (a plain module: `conftest` names collide across test dirs)."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path

import yaml

PG_URL = os.environ.get("AUTOMERGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def space_dict(**over) -> dict:
    """A two-specialist space over fake paths (fake runners never load models)."""
    d = {
        "base": "/nonexistent/base",
        "specialists": [{"name": "code", "path": "/nonexistent/code", "domain": "code"},
                        {"name": "lang", "path": "/nonexistent/lang", "domain": "nl"}],
        "references": [{"name": "mix", "path": "/nonexistent/mix"}],
        "methods": ["task_arithmetic", "ties", "linear"],
        "parameters": {"weight": [0.0, 1.5], "density": [0.1, 1.0], "lambda": 1.0},
        "objectives": [{"name": "code", "tasks": {"code_body_ll": 1.0}},
                       {"name": "nl", "tasks": {"prose_ll": 1.0}}],
        "rungs": {"items": [4, 12], "eta": 3},
        "budget": {"trials": 15},
        "seed": 0,
        "device": "cpu",
    }
    d.update(over)
    return d


def make_space(**over):
    from automerge.search.space import SearchSpace

    return SearchSpace.from_dict(space_dict(**over))


def write_space(path: Path, **over) -> Path:
    path.write_text(yaml.safe_dump(space_dict(**over), sort_keys=False))
    return path


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def check_invariants(study, *, samples: int | None = None) -> dict:
    """Exactly-once and nothing-lost checks over a finished study. Returns counts per rung."""
    from optuna.trial import TrialState

    from automerge.search.study import DONE, FAILED

    rows = study.claims.rows(study.name)
    by_rung_item = {(c.rung, c.item): c for c in rows}
    counts = {}
    for r in range(study.num_rungs):
        trials = study.trials(r)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        keys = Counter(t.user_attrs["key"] for t in complete)
        dupes = {k: n for k, n in keys.items() if n > 1}
        assert not dupes, f"rung {r}: items evaluated more than once: {dupes}"
        if r > 0:
            parents = Counter(t.user_attrs["parent"] for t in complete)
            assert all(n == 1 for n in parents.values()), f"rung {r}: a parent promoted twice: {parents}"
        assert not [t for t in trials if t.state == TrialState.RUNNING], f"rung {r}: trials left RUNNING"
        for t in complete:
            c = by_rung_item.get((r, t.user_attrs["key"]))
            assert c is not None and c.state == DONE, f"rung {r}: trial {t.number} has no done claim"
        for (rr, item), c in by_rung_item.items():
            if rr != r:
                continue
            assert c.state in (DONE, FAILED), f"claim {item}@r{r} left {c.state}"
            if c.state == DONE:
                assert keys.get(item) == 1, f"claim {item}@r{r} is done but has {keys.get(item, 0)} complete trials"
            else:
                assert any(t.user_attrs.get("key") == item and t.state == TrialState.FAIL for t in trials)
        counts[r] = {"complete": len(complete), "failed": sum(t.state == TrialState.FAIL for t in trials),
                     "search": sum(t.user_attrs.get("kind") == "search" for t in complete)}
    if samples is not None:
        s_items = sorted(int(c.item[1:]) for c in rows if c.rung == 0 and c.item.startswith("s"))
        assert s_items == list(range(samples)), f"sample slots {s_items} != 0..{samples - 1}"
    return counts


def zoo_space(models: Path, path: Path, **over) -> Path:
    """A space over the test-size zoo's models (real engine and evaluator), written to `path`."""
    d = {
        "name": "e2e",
        "base": str(models / "base"),
        "specialists": [{"name": "code", "path": str(models / "code"), "domain": "code"},
                        {"name": "lang", "path": str(models / "lang"), "domain": "nl"}],
        "references": [{"name": "mix", "path": str(models / "mix")}],
        "methods": ["task_arithmetic", "ties", "dare_ties", "linear"],
        "parameters": {"weight": [0.0, 1.5], "density": [0.1, 1.0], "lambda": 1.0},
        "objectives": [
            {"name": "code", "tasks": {"code_body_ll": 1.0},
             "full_tasks": {"code_body_ll": 1.0, "ext_code_body_ll": 1.0}},
            {"name": "nl", "tasks": {"prose_ll": 1.0}, "full_tasks": {"prose_ll": 1.0, "ext_prose_ll": 1.0}},
        ],
        "rungs": {"items": [8, 24], "eta": 3},
        "full_evaluation": {"tasks": [], "limit": 60},
        "budget": {"trials": 12},
        "device": "cpu",
        "seed": 0,
    }
    d.update(over)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path
