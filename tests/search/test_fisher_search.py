"""Method fisher in a search: estimates once per study, before sampling, beside the study; the
same file on resume and for every worker; identical bytes where a worker computes its own;
export refuses mergekit and reproduces the model from the recipe. Real engine, tiny models."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file
from search_helpers import check_invariants, unique_name

from automerge import fisher as fisher_mod
from automerge.errors import AutomergeError, SpaceError
from automerge.recipe import Recipe
from automerge.search.run import SearchOptions, run_search
from automerge.search.study import SearchStudy

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import save_tiny_family

    return save_tiny_family(tmp_path_factory.mktemp("fisher-models"))


def fisher_space(models: dict[str, Path], path: Path, **over) -> Path:
    est = {"max_tokens": 192, "seq_len": 48}
    d = {
        "name": "fs",
        "base": str(models["base"]),
        "specialists": [{"name": "code", "path": str(models["code"]), "domain": "code", "fisher": est},
                        {"name": "lang", "path": str(models["lang"]), "domain": "nl", "fisher": est}],
        "methods": ["fisher", "linear"],
        "parameters": {"weight": {"low": 0.1, "high": 1.5, "per_group": True}},
        "layer_groups": {"num_groups": 2},
        "objectives": [{"name": "code", "tasks": {"code_body_ll": 1.0}},
                       {"name": "nl", "tasks": {"prose_ll": 1.0}}],
        "rungs": {"items": [4], "eta": 3},
        "full_evaluation": {"tasks": [], "limit": 6},
        "baselines": ["uniform_linear"],
        "budget": {"trials": 4},
        "device": "cpu",
        "seed": 0,
    }
    d.update(over)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fisher_recipes(study: SearchStudy) -> list[tuple[object, Recipe]]:
    out = []
    for r in range(study.num_rungs):
        for t in study.trials(r):
            if "recipe" in t.user_attrs:
                rec = Recipe.from_yaml(t.user_attrs["recipe"])
                if rec.method == "fisher":
                    out.append((t, rec))
    return out


@pytest.fixture
def count_estimates(monkeypatch):
    calls: list[str] = []
    real = fisher_mod.estimate_fisher
    monkeypatch.setattr(fisher_mod, "estimate_fisher", lambda *a, **k: calls.append("x") or real(*a, **k))
    return calls


@pytest.fixture(scope="module")
def fisher_study(tiny, tmp_path_factory):
    """A finished search with fisher among its methods (its first run)."""
    root = tmp_path_factory.mktemp("fisher-study")
    space = fisher_space(tiny, root / "space.yaml")
    results = root / "results"
    calls: list[str] = []
    real = fisher_mod.estimate_fisher
    fisher_mod.estimate_fisher = lambda *a, **k: calls.append("x") or real(*a, **k)
    shown = io.StringIO()
    try:  # not quiet: the live display, with the estimates' progress bar before it
        run_search(SearchOptions(space=space, results_dir=results, threads=1, report=False), stream=shown)
    finally:
        fisher_mod.estimate_fisher = real
    return {"space": space, "results": results, "calls": calls, "url": f"sqlite:///{results / 'fs' / 'study.db'}",
            "output": shown.getvalue()}


def test_search_estimates_once_beside_the_study_and_resumes_with_it(fisher_study, count_estimates):
    study_dir = fisher_study["results"] / "fs"
    files = sorted((study_dir / "fisher").glob("*.safetensors"))
    assert [f.name.split("-")[0] for f in files] == ["code", "lang"] and len(fisher_study["calls"]) == 2
    out = fisher_study["output"]
    assert "Fisher code" in out and "Fisher lang" in out and "4/4" in out  # the bar, to the last example
    assert out.index("Fisher lang") < out.index("baseline uniform linear")  # before any trial
    stamps = {f: (f.stat().st_mtime_ns, sha(f)) for f in files}
    study = SearchStudy.open("fs", fisher_study["url"], None)
    try:
        check_invariants(study, samples=4)
        used = fisher_recipes(study)
        assert used, "no fisher trial sampled: change the space's seed"
        attrs = study.storage.get_study_user_attrs(study.storage.get_study_id_from_name("fs"))
        for f in files:
            assert attrs[f"fisher:{f.name.split('-')[0]}"] == {"sha256": sha(f), "file": f.name}
        for t, rec in used:
            assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
            assert sorted(m.fisher for m in rec.models) == [str(f.resolve()) for f in files]
            # per-layer-group weights, as for the other methods
            assert all(set(m.parameters["weight"]) == {"block0", "block1", "default"} for m in rec.models)
        before = len(used)
    finally:
        study.close()
    # Resume with a bigger budget: no new estimate, the same files, untouched.
    run_search(SearchOptions(space=fisher_study["space"], results_dir=fisher_study["results"], quiet=True,
                             threads=1, report=False, trials=8))
    assert count_estimates == []
    assert {f: (f.stat().st_mtime_ns, sha(f)) for f in files} == stamps
    assert sorted((study_dir / "fisher").glob("*.safetensors")) == files
    study = SearchStudy.open("fs", fisher_study["url"], None)
    try:
        check_invariants(study, samples=8)
        used = fisher_recipes(study)
        assert len(used) > before
        for t, rec in used:
            assert t.state == TrialState.COMPLETE, t.user_attrs.get("fail_reason")
            assert sorted(m.fisher for m in rec.models) == [str(f.resolve()) for f in files]
    finally:
        study.close()


def test_two_workers_use_one_estimate(tiny, tmp_path):
    space = fisher_space(tiny, tmp_path / "space.yaml", name="two", budget={"trials": 6})
    results, counter, go = tmp_path / "results", tmp_path / "counter", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(HERE / "fisher_worker_main.py"), str(space), str(results),
                               str(counter), str(go)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=tmp_path) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()  # both start the search together: both need the estimates at once
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert counter.read_text().count("estimate") == 2, outs  # one per specialist, not one per worker
    lines = [[ln.split(" ", 1)[1] for ln in o.splitlines() if "Fisher estimates:" in ln] for o in outs]
    assert len(lines[0]) == 1 and lines[0] == lines[1], outs  # both use the same files
    files = sorted((results / "two" / "fisher").glob("*.safetensors"))
    assert len(files) == 2
    study = SearchStudy.open("two", f"sqlite:///{results / 'two' / 'study.db'}", None)
    try:
        check_invariants(study, samples=6)
        for t, rec in fisher_recipes(study):
            assert t.state == TrialState.COMPLETE and sorted(m.fisher for m in rec.models) == [
                str(f.resolve()) for f in files]
    finally:
        study.close()


def test_workers_elsewhere_compute_identical_bytes_on_postgresql(tiny, tmp_path, pg_url, count_estimates):
    url, names = pg_url
    name = unique_name("fisher")
    names.append(name)
    space = fisher_space(tiny, tmp_path / "space.yaml", name=name, budget={"trials": 2}, rungs={"items": []})
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]  # results directories not shared
    run_search(SearchOptions(space=space, storage=url, results_dir=machines[0], quiet=True, threads=1, report=False))
    assert len(count_estimates) == 2
    run_search(SearchOptions(space=space, storage=url, results_dir=machines[1], quiet=True, threads=1, report=False,
                             trials=3))
    assert len(count_estimates) == 4  # the file was not reachable: computed again ...
    a, b = (sorted((m / name / "fisher").glob("*.safetensors")) for m in machines)
    assert [f.name for f in a] == [f.name for f in b]
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]  # ... to the same bytes
    # A machine that computes other bytes stops, naming the file to copy, before any trial.
    study = SearchStudy.open(name, url, None)
    try:
        sid = study.storage.get_study_id_from_name(name)
        study.storage.set_study_user_attr(sid, "fisher:code", {"sha256": "0" * 64, "file": a[0].name})
        trials = len(study.trials(0))
    finally:
        study.close()
    with pytest.raises(SpaceError, match=f"copy results/{name}/fisher/{a[0].name}"):
        run_search(SearchOptions(space=space, storage=url, results_dir=tmp_path / "machine-c", quiet=True,
                                 threads=1, report=False, trials=4))
    study = SearchStudy.open(name, url, None)
    try:
        assert len(study.trials(0)) == trials
    finally:
        study.close()


def test_a_space_without_a_source_for_a_specialist_is_refused(tiny, tmp_path):
    space = fisher_space(tiny, tmp_path / "space.yaml", specialists=[
        {"name": "code", "path": str(tiny["code"]), "domain": "code"},
        {"name": "lang", "path": str(tiny["lang"]), "domain": "general"}])
    with pytest.raises(SpaceError, match=r"specialists\[1\]\.fisher: .*no proxy task.*fisher: \{data: FILE.jsonl\}"):
        run_search(SearchOptions(space=space, results_dir=tmp_path / "r", quiet=True, report=False))
    assert not (tmp_path / "r").exists()
    for src, key in (("nope.safetensors", r"fisher"), ({"data": "nope.jsonl"}, r"fisher\.data")):
        space = fisher_space(tiny, tmp_path / "space.yaml", specialists=[
            {"name": "code", "path": str(tiny["code"]), "domain": "code", "fisher": src},
            {"name": "lang", "path": str(tiny["lang"]), "domain": "nl"}])
        with pytest.raises(SpaceError, match=rf"specialists\[0\]\.{key}: nope\.\w+ does not exist"):
            run_search(SearchOptions(space=space, results_dir=tmp_path / "r", quiet=True, report=False))
        assert not (tmp_path / "r").exists()  # before the study or its directory exists


def test_proxy_texts_come_from_the_end_of_the_evaluation_order(tiny, tmp_path):
    from automerge.eval import _tasks
    from automerge.search.fisher import proxy_texts
    from automerge.search.space import SearchSpace

    space = SearchSpace.load(fisher_space(tiny, tmp_path / "space.yaml"))
    texts = proxy_texts(space, space.specialists[0])
    items = _tasks.ordered(_tasks.load_items("code_body_ll"), "code_body_ll", space.seed)
    assert texts[0] == items[-1]["context"] + items[-1]["continuation"]
    assert len(texts) == len(items)
    rung_items = {it["context"] + it["continuation"] for it in items[:4]}
    assert not rung_items & set(texts[:len(items) - 4])


# -- export --------------------------------------------------------------------------------------


def _a_fisher_trial(fisher_study) -> int:
    study = SearchStudy.open("fs", fisher_study["url"], None)
    try:
        return next(t.number for t in study.trials(0)
                    if t.state == TrialState.COMPLETE and "fisher" in t.user_attrs.get("recipe", "")
                    and "method: fisher" in t.user_attrs["recipe"])
    finally:
        study.close()


def test_export_mergekit_refuses_in_one_line_and_writes_nothing(fisher_study, tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app

    n = _a_fisher_trial(fisher_study)
    args = ["export", "fs", "--trial", str(n), "--rung", "0", "--results-dir", str(fisher_study["results"])]
    result = CliRunner().invoke(app, [*args, "--mergekit", str(tmp_path / "m.yml"), "--recipe", str(tmp_path / "r.yaml")])
    assert isinstance(result.exception, AutomergeError), result.output
    msg = str(result.exception)
    assert "mergekit has no 'fisher' merge method" in msg and "--recipe" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_export_model_and_recipe_reproduce_the_merge(fisher_study, tmp_path):
    from typer.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from automerge.cli import app

    n = _a_fisher_trial(fisher_study)
    args = ["export", "fs", "--trial", str(n), "--rung", "0", "--results-dir", str(fisher_study["results"])]
    result = CliRunner().invoke(app, [*args, "--model", str(tmp_path / "model"), "--recipe", str(tmp_path / "r.yaml"),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert not (tmp_path / "model" / "mergekit_config.yml").exists()
    exported = Recipe.load(tmp_path / "r.yaml")
    files = sorted(str(f.resolve()) for f in (fisher_study["results"] / "fs" / "fisher").glob("*.safetensors"))
    assert exported.method == "fisher" and sorted(m.fisher for m in exported.models) == files
    # The recipe reproduces the model: automerge merge gives the same tensors.
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "r.yaml"), str(tmp_path / "again"), "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    one, two = load_file(tmp_path / "model" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)
    # ... and the exported directory reloads as a model with exactly those weights.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    state = model.state_dict()
    assert all(torch.equal(state[k], one[k].float()) for k in one)
    # It is a Fisher merge: not the plain weighted average of the same weights.
    from automerge.engine import ResidentMerger

    linear = exported.model_copy(update={"method": "linear", "models": [m.model_copy(update={"fisher": None})
                                                                        for m in exported.models],
                                         "parameters": {"normalize": True}})
    merger = ResidentMerger(base=exported.base, specialists={m.name: m.path for m in exported.models}, device="cpu")
    merger.apply(linear)
    plain = dict(merger.state_dict_iter())
    assert any(not torch.allclose(plain[k].float(), one[k].float(), atol=1e-6) for k in one)


def test_export_finds_the_estimate_in_the_study_directory(fisher_study, tmp_path):
    from automerge.report import load_study
    from automerge.report.export import study_fisher_files

    data = load_study("fs", results_dir=fisher_study["results"])
    files = sorted((fisher_study["results"] / "fs" / "fisher").glob("*.safetensors"))
    rec = Recipe.from_dict({"method": "fisher", "models": [
        {"name": f.name.split("-")[0], "path": "x", "fisher": f"/elsewhere/results/fs/fisher/{f.name}"} for f in files]})
    got = study_fisher_files(data, rec)
    assert [m.fisher for m in got.models] == [str(fisher_study["results"] / "fs" / "fisher" / f.name) for f in files]
