"""ResidentMerger: in-place trials equal fresh merges, equal the saved model, leak nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from automerge.cli import app
from automerge.engine import FUSED, ResidentMerger
from automerge.errors import AutomergeError, CheckpointError, IncompatibleModelsError, RecipeError
from automerge.methods import METHODS, get_method, random_noise
from automerge.recipe import Recipe
from tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=4, hidden=32)
    return {
        "base": base,
        "code": save_tiny_model(root / "code", base=base, seed=1, noise=0.05),
        "lang": save_tiny_model(root / "lang", base=base, seed=2, noise=0.05),
    }


@pytest.fixture(scope="module")
def merger(zoo) -> ResidentMerger:
    return ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]})


def recipe(zoo, method: str, *, seed: int = 0, **params) -> Recipe:
    per_model = {
        "code": {"weight": {"block0": 0.3, "default": 0.7}},
        "lang": {"weight": 0.6},
    }
    if method in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"):
        per_model["code"]["density"] = {"attn": 0.4, "default": 0.7}
        per_model["lang"]["density"] = 0.5
    models = [{"name": n, "path": str(zoo[n]), "parameters": p} for n, p in per_model.items()]
    if method == "slerp":
        models = [{"name": "code", "path": str(zoo["code"]), "parameters": {}}]
        params.setdefault("t", 0.3)
    if method in ("model_stock",):
        models = [{"name": n, "path": str(zoo[n]), "parameters": {}} for n in per_model]
    return Recipe.from_dict(dict(method=method, base=str(zoo["base"]), models=models, parameters=params,
                                 num_groups=2, split_attn_mlp=True, seed=seed))


def live(m: ResidentMerger) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict_iter()}


TESTED = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
          "breadcrumbs_ties", "della", "della_linear", "model_stock"]


@pytest.mark.parametrize("method", TESTED)
def test_apply_after_apply_equals_fresh_merge(method, zoo, merger):
    first = recipe(zoo, "ties" if method != "ties" else "task_arithmetic")
    merger.apply(first)
    merger.apply(recipe(zoo, method, seed=3))
    after = live(merger)
    fresh = ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]})
    fresh.apply(recipe(zoo, method, seed=3))
    for name, value in live(fresh).items():
        assert torch.equal(after[name], value), name


def test_slerp_single_specialist(zoo):
    m = ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"]})
    m.apply(recipe(zoo, "slerp", t=0.0))
    base = {k: v.clone() for k, v in m.state_dict_iter()}
    m.apply(recipe(zoo, "slerp", t=1.0))
    end = live(m)
    ref = load_file(zoo["code"] / "model.safetensors")
    for name in ref:
        torch.testing.assert_close(end[name], ref[name], rtol=1e-5, atol=1e-6)
    ref_base = load_file(zoo["base"] / "model.safetensors")
    for name in ref_base:
        torch.testing.assert_close(base[name], ref_base[name], rtol=1e-5, atol=1e-6)


def assert_equals_pure_function(m: ResidentMerger, r: Recipe, method: str, **tolerance) -> None:
    """Apply r with an odd chunk size (chunk edges must not matter), then compare every live
    tensor with automerge.methods' function on the same resident inputs, in the live dtype."""
    m.chunk = 97
    try:
        m.apply(r)
    finally:
        m.chunk = 1 << 16
    got = live(m)
    impl = get_method(method)
    grouping = m.grouping(r)
    for t in m.tensors:
        params, per_model = impl.check_params(*r.resolve(t.name, grouping))
        noise = random_noise(tuple(t.deltas.shape), seed=r.seed, tensor_name=t.name) if impl.random else None
        expected = impl.merge_tensor(
            t.base.float(), t.deltas.float(),
            per_model={k: [pm[k] for pm in per_model] for k in per_model[0]},
            params=params, noise=noise, tensor_name=t.name,
        )
        torch.testing.assert_close(got[t.name], expected.to(got[t.name].dtype), msg=t.name, **tolerance)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("method", sorted(FUSED))
def test_fused_kernel_equals_pure_function(method, normalize, zoo, merger):
    """The chunked fast path computes what automerge.methods defines, tensor by tensor."""
    params = {"normalize": normalize} if method == "linear" else {"lambda": 0.9, "normalize": normalize}
    assert_equals_pure_function(merger, recipe(zoo, method, seed=5, **params), method, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", sorted(FUSED))
def test_fused_kernel_on_bf16_storage_equals_pure_function(method, zoo):
    """bf16 resident task vectors (the GPU setting) go through the same fused kernels; exact
    cancellations in the TIES sign election (frequent in bf16) elect + as the reference does."""
    m = ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]}, dtype="bfloat16")
    assert m.tensors[0].param.dtype == torch.bfloat16
    assert_equals_pure_function(m, recipe(zoo, method, seed=5), method)  # bf16's default tolerance


def test_dare_reproducible_under_seed(zoo):
    a = ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]})
    b = ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]})
    a.apply(recipe(zoo, "dare_ties", seed=11))
    b.apply(recipe(zoo, "dare_ties", seed=11))
    first = live(a)
    assert all(torch.equal(first[k], v) for k, v in live(b).items())
    a.apply(recipe(zoo, "dare_ties", seed=12))
    assert any(not torch.equal(first[k], v) for k, v in live(a).items())


def test_live_model_equals_saved_merge(zoo, merger, tmp_path):
    r = recipe(zoo, "dare_ties", seed=4, **{"lambda": 1.1})
    path = tmp_path / "recipe.yaml"
    r.save(path)
    result = CliRunner().invoke(app, ["merge", str(path), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    merger.apply(r)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    for name, value in merger.model.state_dict().items():
        assert torch.equal(saved[name], value), name


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_memory_flat_over_100_applies(zoo, merger):
    recipes = [recipe(zoo, m, seed=1) for m in ("ties", "dare_ties", "task_arithmetic", "linear", "della")]
    for r in recipes * 4:  # warm every cache first
        merger.apply(r)
    start = _rss_bytes()
    for i in range(100):
        merger.apply(recipes[i % len(recipes)])
    grown = _rss_bytes() - start
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 100 applies"


# -- bad input: a clear error naming the problem, before any weight is written -----------------


def test_unknown_method_names_known_ones(zoo, merger):
    r = recipe(zoo, "ties")
    with pytest.raises(RecipeError, match="frobnicate"):
        merger.apply(r.model_copy(update={"method": "frobnicate"}))


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_out_of_range(zoo, merger, density):
    r = recipe(zoo, "ties")
    r.models[1].parameters["density"] = density
    before = live(merger)
    with pytest.raises(RecipeError, match="density"):
        merger.apply(r)
    assert all(torch.equal(before[k], v) for k, v in live(merger).items()), "weights changed"


def test_weights_summing_to_zero_for_normalising_method(zoo, merger):
    r = recipe(zoo, "linear")
    r.models[0].parameters["weight"] = 0.5
    r.models[1].parameters["weight"] = -0.5
    with pytest.raises(RecipeError, match="weight"):
        merger.apply(r)


def test_recipe_naming_unloaded_model(zoo, merger):
    r = recipe(zoo, "ties")
    r.models[1].name = "tests"
    with pytest.raises(RecipeError, match="tests"):
        merger.apply(r)


def test_too_many_groups(zoo, merger):
    r = recipe(zoo, "ties").model_copy(update={"num_groups": 9})
    with pytest.raises(RecipeError, match="num_groups"):
        merger.apply(r)


def test_nan_in_specialist_named(zoo, tmp_path):
    bad = save_tiny_model(tmp_path / "bad", base=zoo["base"], seed=3)
    tensors = load_file(bad / "model.safetensors")
    name = sorted(tensors)[3]
    tensors[name][0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=name):
        ResidentMerger(base=zoo["base"], specialists={"bad": bad})


def test_mismatched_shapes_named(zoo, tmp_path):
    other = save_tiny_model(tmp_path / "other", arch="llama", seed=0, num_layers=4, hidden=48)
    with pytest.raises(IncompatibleModelsError):
        ResidentMerger(base=zoo["base"], specialists={"other": other})


def test_missing_path(zoo, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        ResidentMerger(base=zoo["base"], specialists={"x": tmp_path / "nowhere"})


def test_cli_merge_bad_input_writes_nothing(zoo, tmp_path):
    r = recipe(zoo, "ties")
    r.models[0].parameters["density"] = 2.0
    path = tmp_path / "bad.yaml"
    r.save(path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["merge", str(path), str(out)])
    assert result.exit_code != 0
    assert isinstance(result.exception, AutomergeError) and "density" in str(result.exception)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


def sorted_threshold(d: torch.Tensor, density: float) -> float:
    """The k-th largest |d| by a full sort: what the engine's selection must reproduce."""
    from automerge.methods import magnitude_k

    k = magnitude_k(d.numel(), density)
    return d.float().abs().flatten().sort(descending=True).values[k - 1].item()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_ties_thresholds_are_selected_exactly_without_a_sort(zoo, dtype, monkeypatch):
    """Every TIES threshold equals the sort-based one, through the selection paths the large
    tensors take (forced here on tiny ones); fp16/bf16 task vectors build their magnitude
    histogram once, and later densities are lookups in it."""
    import automerge.engine as engine
    import automerge.methods._sparsify as sparsify

    monkeypatch.setattr(sparsify, "_SORT_BELOW", 0)  # radix selection even on tiny tensors
    monkeypatch.setattr(engine, "HISTOGRAM_ABOVE", 0)
    m = ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]}, dtype=dtype)
    builds = []
    real = engine.half_magnitude_counts
    monkeypatch.setattr(engine, "half_magnitude_counts", lambda d: builds.append(1) or real(d))
    for idx, t in enumerate(m.tensors):
        for i in range(2):
            for density in (0.3, 0.5, 0.537, 0.999):
                got = m._threshold(idx, t, i, density)
                assert got == sorted_threshold(t.deltas[i], density), (t.name, i, density)
    expected = 2 * len(m.tensors) if dtype != "float32" else 0
    assert len(builds) == expected  # one histogram per task vector, not one per density
