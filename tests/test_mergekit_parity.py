"""Our engine's merges equal mergekit 0.1.5's run_merge on the same tiny checkpoints (fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from automerge.engine import ResidentMerger
from automerge.recipe import Recipe
from tiny_models import save_tiny_model

mergekit_config = pytest.importorskip("mergekit.config")
from mergekit.merge import MergeOptions, run_merge  # noqa: E402

# Per-layer-group values with an attention/MLP split, so the export's filters are exercised.
WEIGHT_A = {"embed": 0.6, "head": 0.9, "block0.attn": 0.3, "block0.mlp": 0.8, "block1": 0.5, "default": 0.4}
WEIGHT_B = {"block0": 0.7, "mlp": 0.2, "default": 0.55}
DENSITY_A = {"block0.attn": 0.3, "block1.mlp": 0.9, "default": 0.6}
DENSITY_B = 0.5

CASES = {
    "linear": dict(parameters={}, a={"weight": WEIGHT_A}, b={"weight": WEIGHT_B}),
    "task_arithmetic": dict(parameters={"lambda": 0.8}, a={"weight": WEIGHT_A}, b={"weight": WEIGHT_B}),
    "task_arithmetic_normalized": dict(method="task_arithmetic", parameters={"normalize": True},
                                       a={"weight": WEIGHT_A}, b={"weight": WEIGHT_B}),
    "ties": dict(parameters={"lambda": 1.2}, a={"weight": WEIGHT_A, "density": DENSITY_A},
                 b={"weight": WEIGHT_B, "density": DENSITY_B}),
    "ties_unnormalized": dict(method="ties", parameters={"normalize": False},
                              a={"weight": WEIGHT_A, "density": DENSITY_A}, b={"weight": 1.0, "density": 0.4}),
    "breadcrumbs": dict(parameters={}, a={"weight": WEIGHT_A, "density": 0.7, "gamma": 0.1},
                        b={"weight": WEIGHT_B, "density": 0.6, "gamma": 0.2}),
    "breadcrumbs_ties": dict(parameters={"lambda": 0.9}, a={"weight": WEIGHT_A, "density": 0.7, "gamma": 0.1},
                             b={"weight": WEIGHT_B, "density": 0.6, "gamma": 0.1}),
    # Negation: negative weights subtract a task vector (per group, crossing 0).
    "task_arithmetic_negation": dict(method="task_arithmetic", parameters={},
                                     a={"weight": 1.0}, b={"weight": {"block0": -0.5, "default": -0.8}}),
    "ties_negation": dict(method="ties", parameters={"normalize": False},
                          a={"weight": 0.9, "density": 0.6}, b={"weight": {"block1": 0.4, "default": -0.6},
                                                                 "density": 0.5}),
    "model_stock": dict(parameters={}, a={}, b={}),
    "slerp": dict(parameters={"t": {"block0": 0.2, "block1.attn": 0.7, "default": 0.45}}, a={}, b=None),
    "nuslerp": dict(parameters={}, a={"weight": WEIGHT_A}, b={"weight": WEIGHT_B}),
    "nuslerp_rows_no_base": dict(method="nuslerp", parameters={"nuslerp_flatten": False, "use_base": False},
                                 a={"weight": WEIGHT_A}, b={"weight": 0.5}),
    "nuslerp_columns": dict(method="nuslerp", parameters={"nuslerp_flatten": False, "nuslerp_row_wise": True},
                            a={"weight": 0.3}, b={"weight": WEIGHT_B}),
    "multislerp": dict(parameters={}, a={"weight": WEIGHT_A}, b={"weight": WEIGHT_B}),
    "multislerp_no_base": dict(method="multislerp", parameters={"use_base": False},
                               a={"weight": WEIGHT_A}, b={"weight": WEIGHT_B}),
    "karcher": dict(parameters={"max_iter": 20}, a={}, b={}),
    "karcher_no_base": dict(method="karcher", parameters={"use_base": False}, a={}, b={}),
    "sce": dict(parameters={"select_topk": {"block0": 0.3, "default": 0.7}}, a={}, b={}),
    "arcee_fusion": dict(parameters={}, a={}, b=None),
    "nearswap": dict(parameters={"t": {"embed": 0.01, "default": 0.03}}, a={}, b=None),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=4, hidden=32)
    return {
        "base": base,
        "a": save_tiny_model(root / "a", base=base, seed=1, noise=0.05),
        "b": save_tiny_model(root / "b", base=base, seed=2, noise=0.05),
    }


def _recipe(case: str, ckpt: dict[str, Path]) -> Recipe:
    spec = CASES[case]
    models = [{"name": "a", "path": str(ckpt["a"]), "parameters": spec["a"]}]
    if spec["b"] is not None:
        models.append({"name": "b", "path": str(ckpt["b"]), "parameters": spec["b"]})
    return Recipe.from_dict(dict(
        method=spec.get("method", case), base=str(ckpt["base"]), models=models,
        parameters=spec["parameters"], num_groups=2, split_attn_mlp=True,
    ))


def _max_rel_error(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, expected in theirs.items():
        got = ours[name].float()
        scale = expected.float().abs().max().clamp_min(1e-12)
        worst = max(worst, float((got - expected.float()).abs().max() / scale))
    return worst


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_equals_mergekit(case, checkpoints, tmp_path):
    recipe = _recipe(case, checkpoints)
    merger = ResidentMerger(base=recipe.base, specialists={m.name: m.path for m in recipe.models})
    merger.apply(recipe)
    ours = dict(merger.state_dict_iter())

    config = recipe.to_mergekit(merger.tensor_names, merger.grouping(recipe))
    # The export must survive a YAML round trip, as a user would save it.
    config = yaml.safe_load(yaml.safe_dump(config))
    out = tmp_path / "mergekit-out"
    run_merge(mergekit_config.MergeConfiguration.model_validate(config), str(out),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    theirs = {}
    for shard in sorted(out.glob("*.safetensors")):
        theirs.update(load_file(shard))
    assert set(theirs) == set(ours), "mergekit wrote a different set of tensors"
    assert _max_rel_error(ours, theirs) <= 1e-5


def test_filters_select_exactly_one_layer():
    from automerge.recipe import _filters

    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in (1, 11, 3)] + ["model.embed_tokens.weight"]
    values = {names[0]: 1.0, names[1]: 2.0, names[2]: 3.0, names[3]: 4.0}
    entries = _filters(values)
    for name, value in values.items():
        first = next(e for e in entries if "filter" not in e or e["filter"] in name)
        assert first["value"] == value
