"""Fisher-weighted merging from a recipe: `fisher:` per model (a file, or data estimated once and
cached), relative paths against the recipe file, `automerge merge --fisher`, and the errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from automerge import fisher as fisher_mod
from automerge.cli import app
from automerge.errors import RecipeError
from automerge.fisher import estimate_fisher, load_fisher, save_fisher
from automerge.methods import fisher_merge
from automerge.recipe import FisherData, Recipe
from tiny_models import save_tiny_family

CODE = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    total += i\n"]
PROSE = ["The quick brown fox jumps over the lazy dog.", "A counter keeps counts of hashable things."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp("fisher-models"))


@pytest.fixture(scope="module")
def estimates(models, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("estimates")
    paths = {}
    for name, texts in (("code", CODE), ("lang", PROSE)):
        lm = AutoModelForCausalLM.from_pretrained(models[name], dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(models[name])
        paths[name] = save_fisher(estimate_fisher(lm, tok, texts, seq_len=16), out / f"{name}.safetensors")
    return paths


def expected(models, estimates, weights=(1.0, 1.0)) -> dict[str, torch.Tensor]:
    """methods.fisher_merge on every tensor, straight from the files."""
    base = load_file(models["base"] / "model.safetensors")
    xs = [load_file(models[n] / "model.safetensors") for n in ("code", "lang")]
    fs = [load_fisher(estimates[n]) for n in ("code", "lang")]
    out = {}
    for name, b in base.items():
        deltas = torch.stack([x[name].float() - b.float() for x in xs])
        out[name] = fisher_merge(b.float(), deltas, fisher=torch.stack([f[name] for f in fs]), weights=list(weights))
    return out


def write_recipe(path: Path, models, fisher: dict | None, **over) -> Path:
    d = {"method": "fisher", "base": str(models["base"]),
         "models": [{"name": n, "path": str(models[n]), "parameters": {"weight": 1.0},
                     **({"fisher": fisher[n]} if fisher and n in fisher else {})} for n in ("code", "lang")],
         "dtype": "float32"}
    d.update(over)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def merge(*args: str) -> object:
    return CliRunner().invoke(app, ["merge", *args])


def merged(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def test_recipe_with_estimate_paths_relative_to_the_recipe(models, estimates, tmp_path, monkeypatch):
    recipe_dir = tmp_path / "recipes" / "sub"
    rel = {n: os.path.relpath(p, recipe_dir) for n, p in estimates.items()}
    assert all(not Path(r).is_absolute() for r in rel.values())
    path = write_recipe(recipe_dir / "r.yaml", models, rel)
    monkeypatch.chdir(tmp_path)  # relative to the recipe file, not to the working directory
    result = merge(str(path), str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code == 0, result.output + repr(result.exception)
    want = expected(models, estimates)
    got = merged(tmp_path / "out")
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-6, atol=1e-7, msg=name)
    # A plain average would differ: the estimates matter.
    plain = load_file(models["code"] / "model.safetensors")
    assert any(not torch.allclose(got[n], (plain[n] + load_file(models["lang"] / "model.safetensors")[n]) / 2)
               for n in got)
    # The recipe saved in the model names the files absolutely (it reproduces the merge from anywhere).
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        saved = Recipe.from_yaml(f.metadata()["automerge_recipe"])
    assert {m.name: m.fisher for m in saved.models} == {n: str(p) for n, p in estimates.items()}


def test_fisher_option_overrides_the_recipe(models, estimates, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", models, None)
    result = merge(str(path), str(tmp_path / "out"), "--device", "cpu",
                   "--fisher", f"code={estimates['code']}", "--fisher", f"lang={estimates['lang']}")
    assert result.exit_code == 0, result.output + repr(result.exception)
    want = expected(models, estimates)
    for name, t in merged(tmp_path / "out").items():
        torch.testing.assert_close(t, want[name], rtol=1e-6, atol=1e-7, msg=name)
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:  # the saved recipe names those files
        saved = Recipe.from_yaml(f.metadata()["automerge_recipe"])
    assert {m.name: m.fisher for m in saved.models} == {n: str(p.resolve()) for n, p in estimates.items()}


def test_missing_estimate_names_the_model_and_the_key_to_add(models, estimates, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", models, {"code": str(estimates["code"])})
    result = merge(str(path), str(tmp_path / "out"), "--device", "cpu")
    assert result.exit_code != 0 and isinstance(result.exception, RecipeError)
    msg = str(result.exception)
    assert "lang" in msg and "models[lang]" in msg and "fisher: FILE.safetensors" in msg
    assert "fisher: {data: DATA.jsonl}" in msg and "--fisher lang=FILE.safetensors" in msg
    assert "pass fisher=" not in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
    # A file that does not exist: the key and the file, before any model is read.
    path = write_recipe(tmp_path / "r2.yaml", models, {"code": "nope.safetensors", "lang": str(estimates["lang"])})
    result = merge(str(path), str(tmp_path / "out"), "--device", "cpu")
    assert "models[code].fisher" in str(result.exception) and str(tmp_path / "nope.safetensors") in str(result.exception)
    result = merge(str(path), str(tmp_path / "out"), "--fisher", "code")
    assert "NAME=FILE" in str(result.exception)
    result = merge(str(path), str(tmp_path / "out"), "--fisher", "other=x.safetensors")
    assert "no model 'other'" in str(result.exception)


def test_cli_error_is_one_line_exit_2(models, tmp_path):
    import subprocess
    import sys

    path = write_recipe(tmp_path / "r.yaml", models, None)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "automerge.cli", "merge", str(path), str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: method 'fisher' needs a Fisher estimate")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_recipe_with_data_is_estimated_once_and_cached(models, tmp_path, monkeypatch):
    data = tmp_path / "recipes" / "data"
    data.mkdir(parents=True)
    for name, texts in (("code", CODE), ("lang", PROSE)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    fisher = {n: {"data": f"data/{n}.jsonl", "max_tokens": 64, "seq_len": 16} for n in ("code", "lang")}
    path = write_recipe(tmp_path / "recipes" / "r.yaml", models, fisher)
    calls = []
    real = fisher_mod.estimate_fisher
    monkeypatch.setattr(fisher_mod, "estimate_fisher", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    result = merge(str(path), str(tmp_path / "out1"), "--device", "cpu", "--fisher-cache", str(cache))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(calls) == 2
    files = sorted(cache.iterdir())
    assert [f.name.split("-")[1] for f in files] == ["code", "lang"]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    # The second merge reads the cache: no estimate, the files untouched, the same weights.
    result = merge(str(path), str(tmp_path / "out2"), "--device", "cpu", "--fisher-cache", str(cache))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(calls) == 2 and sorted(cache.iterdir()) == files
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())
    one, two = merged(tmp_path / "out1"), merged(tmp_path / "out2")
    assert all(torch.equal(one[n], two[n]) for n in one)
    # The merge used the cached estimates: equal to merging with the files themselves.
    want = expected(models, {n: next(f for f in files if f"-{n}-" in f.name) for n in ("code", "lang")})
    for name, t in one.items():
        torch.testing.assert_close(t, want[name], rtol=1e-6, atol=1e-7, msg=name)
    # Other settings are another key: estimated again (one model only).
    fisher["code"]["max_tokens"] = 32
    path = write_recipe(tmp_path / "recipes" / "r.yaml", models, fisher)
    assert merge(str(path), str(tmp_path / "out3"), "--device", "cpu", "--fisher-cache", str(cache)).exit_code == 0
    assert len(calls) == 3 and len(list(cache.iterdir())) == 3
    # Without --fisher-cache the cache is $AUTOMERGE_CACHE_DIR/fisher.
    monkeypatch.setenv("AUTOMERGE_CACHE_DIR", str(tmp_path / "home-cache"))
    assert merge(str(path), str(tmp_path / "out4"), "--device", "cpu").exit_code == 0
    assert len(list((tmp_path / "home-cache" / "fisher").iterdir())) == 2


def test_recipe_yaml_roundtrip_and_no_fisher_key_for_other_methods(tmp_path):
    r = Recipe.from_dict({"method": "fisher", "models": [
        {"name": "a", "path": "zoo:code", "fisher": "est/a.safetensors"},
        {"name": "b", "path": "zoo:lang", "fisher": {"data": "b.jsonl", "max_tokens": 100}}]})
    assert isinstance(r.models[1].fisher, FisherData) and r.models[1].fisher.max_tokens == 100
    assert Recipe.from_yaml(r.to_yaml()) == r
    (tmp_path / "r.yaml").write_text(r.to_yaml())
    loaded = Recipe.load(tmp_path / "r.yaml")
    assert loaded.models[0].fisher == str(tmp_path / "est" / "a.safetensors")
    assert loaded.models[1].fisher.data == str(tmp_path / "b.jsonl")
    plain = Recipe.from_dict({"method": "linear", "models": [{"name": "a", "path": "x"}]})
    assert "fisher" not in plain.to_yaml()
    with pytest.raises(RecipeError, match="fisher"):
        Recipe.from_dict({"method": "fisher", "models": [{"name": "a", "path": "x", "fisher": {"max_tokens": 1}}]})


def test_per_layer_group_weights_apply_to_fisher(models, estimates):
    from automerge.engine import ResidentMerger

    recipe = Recipe.from_dict({"method": "fisher", "base": str(models["base"]), "num_groups": 2, "models": [
        {"name": "code", "path": str(models["code"]), "parameters": {"weight": {"block0": 1.0, "default": 0.25}}},
        {"name": "lang", "path": str(models["lang"]), "parameters": {"weight": 1.0}}]})
    merger = ResidentMerger(base=models["base"], specialists={n: models[n] for n in ("code", "lang")},
                            device="cpu", fisher=estimates)
    merger.apply(recipe)
    got = dict(merger.state_dict_iter())
    grouping = merger.grouping(recipe)
    heavy, light = expected(models, estimates, (1.0, 1.0)), expected(models, estimates, (0.25, 1.0))
    groups = set()
    for name, t in got.items():
        group = grouping.group_of(name)
        groups.add(group)
        torch.testing.assert_close(t, (heavy if group == "block0" else light)[name], rtol=1e-6, atol=1e-7, msg=name)
    assert {"block0", "block1"} <= groups


def test_equal_estimates_are_equal_files(tmp_path):
    f = {"a.weight": torch.rand(3, 4), "b.bias": torch.rand(5)}
    meta = {"model": "m", "max_tokens": 1, "seq_len": 2, "batch_size": 3, "texts": 4, "data": "d"}
    paths = [save_fisher(f, tmp_path / f"{i}.safetensors", metadata=meta) for i in range(4)]
    assert len({p.read_bytes() for p in paths}) == 1  # no metadata order left to chance


def test_estimates_are_the_same_bytes_whatever_the_thread_count(models, tmp_path):
    from automerge.fisher import cached_fisher

    texts = CODE * 8
    before = torch.get_num_threads()
    files = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            files.append(cached_fisher(models["code"], texts, cache_dir=tmp_path / str(threads), max_tokens=256,
                                       seq_len=32))
            assert torch.get_num_threads() == threads  # restored after the estimate
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
    assert files[0].name == files[1].name and files[0].read_bytes() == files[1].read_bytes()
