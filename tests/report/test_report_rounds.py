"""A real small `automerge search` on the test zoo, inspected and exported; then a second round
that adds the third specialist (tests): from the warm-start recipe, and with the exported merged
model itself as a specialist."""

from __future__ import annotations

import inspect
import io

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from automerge.cli import app as automerge_app
from automerge.recipe import Recipe
from automerge.report.pareto_table import pareto_table, pick
from automerge.report.study_reader import load_study
from automerge.search import run as search_run
from report_study import DEMO_LIMITS, RealRunner, evaluate_dir


def write_space(path, *, name, base, specialists, reference=None, trials=5, seed=0):
    space = {
        "name": name,
        "base": str(base),
        "specialists": [{"name": n, "path": str(p), "domain": d} for n, (p, d) in specialists.items()],
        "references": [{"name": "mix", "path": str(reference)}] if reference else [],
        "methods": ["task_arithmetic", "ties"],
        "parameters": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.2, "high": 1.0}, "lambda": 1.0},
        "objectives": [{"name": "nl", "tasks": {"prose_ll": 1.0}}, {"name": "code", "tasks": {"code_body_ll": 1.0}}],
        "rungs": {"items": list(DEMO_LIMITS[:-1]), "eta": 3},
        "full_evaluation": {"tasks": [], "limit": DEMO_LIMITS[-1]},
        "baselines": ["specialists", "task_arithmetic"],
        "sampler": "random",
        "seed": seed,
        "budget": {"trials": trials},
        "device": "cpu",
        "dtype": "float32",
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run(space_path, study, results, runner, **extra):
    opts = search_run.SearchOptions(space=space_path, study=study, results_dir=results, quiet=True,
                                    poll_interval=0.05, **extra)
    return search_run.run_search(opts, runner=runner, stream=io.StringIO())


@pytest.fixture(scope="module")
def round1(tmp_path_factory, demo_zoo, real_scorer):
    """Round 1: code + lang, a real (tiny) search through automerge.search.run."""
    root = tmp_path_factory.mktemp("round1")
    z = demo_zoo / "models"
    space = write_space(root / "round1.yaml", name="round1", base=z / "base", reference=z / "mix",
                        specialists={"code": (z / "code", "code"), "lang": (z / "lang", "nl")})
    run(space, "round1", root / "results", RealRunner(real_scorer))
    return root


@pytest.fixture(scope="module")
def round1_export(round1):
    out = round1 / "export"
    res = CliRunner().invoke(automerge_app, ["export", "round1", "--results-dir", str(round1 / "results"), "--pick", "knee",
                                   "--recipe", str(out / "knee.yaml"), "--model", str(out / "knee"), "--device", "cpu"])
    assert res.exit_code == 0, (res.output, res.exception)
    return out


def test_real_search_is_read_and_reproduced(round1, round1_export, proxy_data):
    data = load_study("round1", results_dir=round1 / "results")
    assert data.rung_labels == ["0", "1", "full"]
    full = data.rung("full")
    assert not full.empty and set(full["kind"]) >= {"baseline", "reference"}
    table = pareto_table(data)
    assert table["on_front"].any()
    assert {"code alone", "lang alone", "mix"} <= set(table["label"])
    assert {"retention:code", "retention:lang"} <= set(table.columns)
    # the exported model, reloaded and re-evaluated, gives the scores the search stored
    knee = pick(data, "knee")
    limit = None if pd.isna(knee["attr:items"]) else int(knee["attr:items"])
    tasks = [c.removeprefix("score:") for c in data.score_columns() if not pd.isna(knee[c])]
    scores = evaluate_dir(round1_export / "knee", proxy_data, tasks, limit)
    for task in tasks:
        assert scores[task] == pytest.approx(knee[f"score:{task}"], rel=1e-6, abs=1e-9)


def test_second_round_with_the_merged_model_as_a_specialist(round1, round1_export, demo_zoo, real_scorer,
                                                            tmp_path):
    """The exported model is a specialist of round 2, next to the new tests specialist."""
    z = demo_zoo / "models"
    space = write_space(tmp_path / "round2b.yaml", name="round2b", base=z / "base", trials=2,
                        specialists={"knee": (round1_export / "knee", "general"), "tests": (z / "tests", "code")})
    run(space, "round2b", tmp_path / "results", RealRunner(real_scorer))
    data = load_study("round2b", results_dir=tmp_path / "results")
    r1 = load_study("round1", results_dir=round1 / "results")
    knee = pick(r1, "knee")
    alone = data.rung("full")
    alone = alone[alone["label"] == "knee alone"]
    assert len(alone) == 1
    # base + 1·(knee − base) is the round-1 merge again: same full-evaluation scores
    for obj in data.objectives:
        assert float(alone[obj].iloc[0]) == pytest.approx(float(knee[obj]), rel=1e-4)
    assert "retention:knee" in pareto_table(data).columns


def test_second_round_starts_from_the_warm_start_recipe(round1, round1_export, demo_zoo, real_scorer, tmp_path):
    """`automerge search SPACE --warm-start knee.yaml`: round 2 adds the tests specialist and
    evaluates the round-1 recipe first."""
    assert "warm_start" in inspect.signature(search_run.SearchOptions).parameters  # a missing feature fails
    z = demo_zoo / "models"
    space = write_space(tmp_path / "round2.yaml", name="round2", base=z / "base", trials=3, seed=1,
                        specialists={"code": (z / "code", "code"), "lang": (z / "lang", "nl"),
                                     "tests": (z / "tests", "code")})
    runner = RealRunner(real_scorer)
    run(space, "round2", tmp_path / "results", runner, warm_start=[round1_export / "knee.yaml"])
    data = load_study("round2", results_dir=tmp_path / "results")
    r1 = load_study("round1", results_dir=round1 / "results")
    warm = Recipe.load(round1_export / "knee.yaml")

    rung0 = data.rung("0", completed=False).sort_values("trial")
    search = rung0[rung0["kind"] == "search"]
    first = search.iloc[0]
    # the first search trial is the warm start: round 1's recipe, the new specialist at weight 0
    assert "warm" in str(first["label"]).lower()
    got = Recipe.from_yaml(first["recipe"])
    assert got.method == warm.method and [m.name for m in got.models] == ["code", "lang", "tests"]
    for m in warm.models:
        assert next(g for g in got.models if g.name == m.name).parameters == m.parameters
    tests = next(g for g in got.models if g.name == "tests")
    assert tests.parameters.get("weight") == 0
    # it was evaluated before any sampled trial …
    sampled_jobs = [j for j in runner.jobs if j.rung == 0 and j.kind == "search"]
    assert "warm" in sampled_jobs[0].label.lower()
    # … and, being the same merge, scores what round 1 recorded for it at rung 0
    origin = r1.lineage(pick(r1, "knee"))[0]
    for obj in data.objectives:
        assert float(first[obj]) == pytest.approx(float(origin[obj]), rel=1e-5)
