"""Search space files: shipped examples validate; bad files fail naming the YAML path, before
any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from search_helpers import space_dict

from automerge.errors import SpaceError
from automerge.search.space import SearchSpace, group_names, parse_duration

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def load(**over) -> SearchSpace:
    return SearchSpace.from_dict(space_dict(**over), source="space.yaml")


def test_shipped_spaces_validate():
    names = {p.name for p in SPACES}
    assert {"demo.yaml", "qwen2.5-coder-7b.yaml", "llama3.1-8b-three.yaml"} <= names
    for p in SPACES:
        s = SearchSpace.load(p)
        assert s.objectives and s.specialists and s.baseline_trials()
    demo = SearchSpace.load(ROOT / "search_spaces" / "demo.yaml")
    assert demo.base == "zoo:base" and [s.path for s in demo.specialists] == ["zoo:code", "zoo:lang"]
    assert [r.path for r in demo.references] == ["zoo:mix"]
    assert len(SearchSpace.load(ROOT / "search_spaces" / "llama3.1-8b-three.yaml").specialists) == 3
    qwen = SearchSpace.load(ROOT / "search_spaces" / "qwen2.5-coder-7b.yaml")
    assert len(qwen.specialists) == 2 and qwen.dtype == "bfloat16"


@pytest.mark.parametrize("over, path, words", [
    (dict(methods=["ties", "tiess"]), "methods[1]", "unknown merge method 'tiess'"),
    (dict(parameters={"weight": {"low": 1.0, "high": 0.5}}), "parameters.weight", "empty range"),
    (dict(parameters={"weight": [0, 1], "density": [0.0, 1.0]}), "parameters.density", "outside"),
    (dict(specialists=[]), "specialists", "no specialists"),
    (dict(objectives=[{"name": "x", "tasks": {"no_such_task": 1.0}}]), "objectives[0].tasks.no_such_task",
     "unknown task"),
    (dict(rungs={"items": [8, 4]}), "rungs.items", "increase"),
    (dict(rungs={"items": [8], "eta": 1}), "rungs.eta", "eta"),
    (dict(methods=["slerp"]), "methods[0]", "exactly 1"),
    (dict(budget={"trials": 5, "wall_time": "ten minutes"}), "budget.wall_time", "duration"),
    (dict(sampler="bayes"), "sampler", "bayes"),
    (dict(lambda_=1), "lambda_", "unknown field"),
    (dict(specialists=[{"name": "a b", "path": "x"}]), "specialists[0].name", "letters"),
    (dict(methods={"ties": {"densty": [0.2, 0.5]}}), "methods.ties.densty", "no parameter"),
    (dict(parameters={"weight": [0, 1], "normalise": True}), "parameters.normalise", "no listed method"),
    (dict(layer_groups={"num_groups": 0}), "layer_groups.num_groups", ">= 1"),
])
def test_bad_space_names_the_yaml_path(over, path, words):
    with pytest.raises(SpaceError) as err:
        load(**over)
    msg = str(err.value)
    assert msg.startswith(f"space.yaml: {path}:"), msg
    assert words in msg, msg


def test_missing_required_parameter_and_yaml_errors(tmp_path):
    with pytest.raises(SpaceError, match="parameters.weight: method task_arithmetic needs parameter 'weight'"):
        load(parameters={"density": [0.2, 0.4]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        SearchSpace.load(bad)
    with pytest.raises(SpaceError, match="does not exist"):
        SearchSpace.load(tmp_path / "missing.yaml")
    with pytest.raises(SpaceError, match="objectives: required field is missing"):
        d = space_dict()
        del d["objectives"]
        SearchSpace.from_dict(d, source="space.yaml")


def test_suggest_is_conditional_on_method_and_groups():
    import optuna

    space = load(methods=["task_arithmetic", "ties"],
                 parameters={"weight": [0, 1], "density": {"low": 0.1, "high": 1.0, "per_group": True}},
                 layer_groups={"num_groups": [1, 3], "split_attn_mlp": [False, True]})
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        t = study.ask()
        r = space.suggest(t)
        seen.add(r.method)
        if r.method == "task_arithmetic":
            assert set(t.params) == {"method", "task_arithmetic.weight.code", "task_arithmetic.weight.lang"}
            assert r.num_groups == 1
        else:
            dens = r.models[0].parameters["density"]
            assert set(dens) == set(group_names(r.num_groups, r.split_attn_mlp))
            assert f"ties.density.code[{next(iter(dens))}]" in t.params
        assert space.recipe_from_params(t.params) == r
        study.tell(t, [0.0, 0.0])
    assert seen == {"task_arithmetic", "ties"}
    assert group_names(2, True) == ["block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "default"]


def test_baselines_use_space_params_when_expressible():
    space = load()
    by = {b.label: b for b in space.baseline_trials()}
    assert set(by) == {"code alone", "lang alone", "uniform linear", "task arithmetic λ=1", "ties density 0.5"}
    ca = by["code alone"]
    assert ca.params == {"method": "task_arithmetic", "task_arithmetic.weight.code": 1.0,
                         "task_arithmetic.weight.lang": 0.0}
    assert [m.parameters["weight"] for m in ca.recipe.models] == [1.0, 0.0]
    assert by["ties density 0.5"].recipe.models[0].parameters == {"weight": 1.0, "density": 0.5}
    # weight range excluding 1: not expressible -> a plain recipe, no params
    narrow = load(parameters={"weight": [0.0, 0.8], "density": [0.1, 1.0], "lambda": 1.0})
    nb = {b.label: b for b in narrow.baseline_trials()}
    assert nb["task arithmetic λ=1"].params is None
    assert nb["task arithmetic λ=1"].recipe.models[0].parameters["weight"] == 1.0
    assert load(baselines=["ties"]).baseline_trials()[0].label == "ties density 0.5"


def test_durations_and_rungs():
    assert parse_duration("8h") == 8 * 3600 and parse_duration("1h30m") == 5400 and parse_duration(90) == 90
    with pytest.raises(ValueError):
        parse_duration("soon")
    s = load(rungs={"items": [8, 24], "eta": 3}, full_evaluation={"tasks": ["humaneval"], "limit": 50})
    assert s.num_rungs == 3 and [s.rung_limit(r) for r in range(3)] == [8, 24, 50]
    assert s.rung_tasks(0) == ["code_body_ll", "prose_ll"] and s.rung_tasks(2)[-1] == "humaneval"
    assert s.objective_values({"code_body_ll": 0.5, "prose_ll": 0.25}, 0) == [0.5, 0.25]


def test_fingerprint_ignores_budget_device_storage():
    a, b = load(), load(budget={"trials": 99}, device="cuda", storage="postgresql://x/y")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load(seed=1).fingerprint()
    assert SearchSpace.from_yaml(a.to_yaml()).fingerprint() == a.fingerprint()  # the resolved YAML round-trips


# -- model checks: headers only, before anything loads ------------------------------------


@pytest.fixture
def tiny_models(tmp_path):
    from tiny_models import save_tiny_model

    base = save_tiny_model(tmp_path / "base", arch="llama", seed=0, num_layers=2)
    code = save_tiny_model(tmp_path / "code", base=base, seed=1)
    lang = save_tiny_model(tmp_path / "lang", base=base, seed=2)
    other = save_tiny_model(tmp_path / "other", arch="qwen2", seed=3, num_layers=2)
    return {"base": base, "code": code, "lang": lang, "other": other, "dir": tmp_path}


def model_space(m, **over):
    d = space_dict(base=str(m["base"]),
                   specialists=[{"name": "code", "path": str(m["code"])}, {"name": "lang", "path": str(m["lang"])}],
                   references=[])
    d.update(over)
    return d


def no_model_loads(monkeypatch):
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    import automerge.engine as engine

    monkeypatch.setattr(engine.ResidentMerger, "__init__", boom)


@pytest.mark.parametrize("case, where, words", [
    ("missing specialist", "specialists[1].path", "does not exist"),
    ("mismatched architectures", "specialists[1].path", "cannot be merged"),
    ("unknown method", "methods[0]", "unknown merge method"),
    ("empty range", "parameters.density", "empty range"),
    ("too many groups", "layer_groups.num_groups", "only 2 layers"),
])
def test_bad_spaces_fail_before_any_model_loads(tiny_models, tmp_path, monkeypatch, case, where, words):
    from automerge.search.run import SearchOptions, run_search

    m = tiny_models
    d = model_space(m)
    if case == "missing specialist":
        d["specialists"][1]["path"] = str(tmp_path / "nowhere")
    elif case == "mismatched architectures":
        d["specialists"][1]["path"] = str(m["other"])
    elif case == "unknown method":
        d["methods"] = ["frankenmerge"]
    elif case == "empty range":
        d["parameters"]["density"] = [0.9, 0.2]
    elif case == "too many groups":
        d["parameters"]["density"] = {"low": 0.1, "high": 1.0, "per_group": True}
        d["layer_groups"] = {"num_groups": [1, 4]}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(d))
    no_model_loads(monkeypatch)
    results = tmp_path / "results"
    with pytest.raises(SpaceError) as err:
        run_search(SearchOptions(space=path, study="bad", results_dir=results))
    assert f"{path}: {where}:" in str(err.value) and words in str(err.value), str(err.value)
    assert not results.exists()  # nothing written either


def test_cli_reports_space_errors(tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_dict(methods=["nope"])))
    res = CliRunner().invoke(app, ["search", str(path), "--results-dir", str(tmp_path / "r")])
    assert isinstance(res.exception, SpaceError) and "methods[0]" in str(res.exception)
    res = CliRunner().invoke(app, ["status", "ghost", "--results-dir", str(tmp_path / "r")])
    assert isinstance(res.exception, SpaceError) and "no study 'ghost'" in str(res.exception)
