"""mergekit config import: settings resolved per tensor as mergekit does, mapped onto layer groups,
and everything that is no tensor-wise merge refused by name with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automerge.errors import RecipeError
from automerge.layers import LayerGrouping
from automerge.mergekit_config import evaluate_setting
from automerge.recipe import Recipe
from tiny_models import save_tiny_model

NAMES = ["model.layers.3.self_attn.q_proj.weight", "model.layers.3.mlp.up_proj.weight",
         "model.layers.3.input_layernorm.weight", "model.embed_tokens.weight", "lm_head.weight"]
SETTINGS = [
    0.3, True, [0.0, 1.0], [0, 0.5, 0.3, 0.7, 1], [1.0], [True, False, True],
    [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"filter": "mlp", "value": 0.2}, {"value": 0.5}],
    [{"filter": "layers.3.", "value": 0.9}, {"filter": "*", "value": 0.1}],
    [{"filter": "lm_head", "value": 0.4}],  # no match elsewhere: None, the next level is asked
    {"filter": "embed", "value": [0.1, 0.2]},
]


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("t", [0.0, 0.2, 1 / 3, 0.5, 0.99, 1.0])
def test_evaluate_setting_is_mergekits(setting, t):
    config = pytest.importorskip("mergekit.config")
    for name in NAMES:
        def validate(v):
            return v
        mk_setting = setting
        if isinstance(setting, dict):
            mk_setting = config.ConditionalParameter(**setting)
        elif isinstance(setting, list) and setting and isinstance(setting[0], dict):
            mk_setting = [config.ConditionalParameter(**c) for c in setting]
        assert evaluate_setting(setting, name, t) == config.evaluate_setting(name, mk_setting, t, validate=validate)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("import")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=5, hidden=32)
    save_tiny_model(root / "a", base=base, seed=1)
    save_tiny_model(root / "b", base=base, seed=2)
    return root


def load(models: Path, cfg: dict) -> Recipe:
    text = yaml.safe_dump(cfg).replace("MODELS", str(models))
    return Recipe.from_yaml(text, source="mk.yaml")


def ties(**extra) -> dict:
    cfg = {"merge_method": "ties", "base_model": "MODELS/base",
           "models": [{"model": "MODELS/a", "parameters": {"weight": 1.0, "density": 0.5}},
                      {"model": "MODELS/b", "parameters": {"weight": 0.5, "density": 0.5}}]}
    cfg.update(extra)
    return cfg


def test_gradient_becomes_one_group_per_layer(models):
    cfg = ties()
    cfg["models"][0]["parameters"]["density"] = [0.2, 1.0]
    r = load(models, cfg)
    assert r.num_groups == 5 and not r.split_attn_mlp
    density = r.models[0].parameters["density"]
    grouping = r.grouping(5)
    # layer i at t = i / 4; embeddings and head at t = 0
    for i in range(5):
        got = r.resolve(f"model.layers.{i}.mlp.up_proj.weight", grouping)[1][0]["density"]
        assert got == pytest.approx(0.2 + 0.8 * i / 4)
    assert r.resolve("lm_head.weight", grouping)[1][0]["density"] == 0.2
    assert r.resolve("model.embed_tokens.weight", grouping)[1][0]["density"] == 0.2
    assert isinstance(density, dict) and "default" in density
    r.validate_for(grouping)


def test_attention_mlp_filters_keep_norms_apart(models):
    cfg = ties(parameters={"lambda": [{"filter": "self_attn", "value": 0.8}, {"filter": "mlp", "value": 1.2},
                                      {"value": 1.0}]})
    r = load(models, cfg)
    assert r.num_groups == 1 and r.split_attn_mlp and r.has_norm_values()
    g = r.grouping(5)
    lam = {n: r.resolve(n, g)[0]["lambda"] for n in (
        "model.layers.2.self_attn.k_proj.weight", "model.layers.2.mlp.down_proj.weight",
        "model.layers.2.input_layernorm.weight", "model.layers.2.post_attention_layernorm.weight", "model.norm.weight")}
    assert list(lam.values()) == [0.8, 1.2, 1.0, 1.0, 1.0]


def test_scalars_stay_scalars_and_need_no_model_files():
    cfg = {"merge_method": "ties", "base_model": "/m/base", "tokenizer_source": "base",
           "models": [{"model": "/m/a", "parameters": {"weight": 1.0, "density": 0.5}}]}
    r = Recipe.from_mergekit(cfg)
    assert r.num_groups == 1 and r.models[0].parameters == {"weight": 1.0, "density": 0.5}


def test_slerp_without_base_among_models_and_use_base_for_nuslerp(models):
    r = load(models, {"merge_method": "nuslerp", "models": [
        {"model": "MODELS/a", "parameters": {"weight": 1.0}}, {"model": "MODELS/b", "parameters": {"weight": 2.0}}]})
    assert r.base is None and r.parameters["use_base"] is False
    r = load(models, {"merge_method": "karcher", "base_model": "MODELS/base",
                      "models": [{"model": "MODELS/a"}, {"model": "MODELS/b"}]})
    assert r.parameters["use_base"] is True


def test_a_recipe_holds_per_layer_values_and_exports_them(models):
    cfg = ties()
    cfg["models"][1]["parameters"]["weight"] = [0.0, 0.25, 1.0]
    r = load(models, cfg)
    again = Recipe.from_yaml(r.to_yaml())
    assert again == r
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)]
    exported = r.to_mergekit(names, r.grouping(5))
    weight = exported["models"][1]["parameters"]["weight"]
    assert {"filter": "model.layers.1.", "value": pytest.approx(0.125)} in weight


@pytest.mark.parametrize("change, named", [
    ({"merge_method": "passthrough"}, "frankenmerge"),
    ({"tokenizer_source": "union"}, "rebuilds the embeddings"),
    ({"tokenizer_source": "MODELS/a"}, "rebuilds the embeddings"),
    ({"tokenizer": {"source": "union"}}, "rebuilds the embeddings"),
    ({"modules": {"text": {}}}, "multi-module"),
    ({"chat_template": "chatml"}, "chat template"),
    ({"merge_method": "nope"}, "no automerge equivalent"),
])
def test_refused_by_name_with_the_reason(models, change, named):
    with pytest.raises(RecipeError, match=named):
        load(models, ties(**change))


def slices(*ranges_per_slice) -> dict:
    return {"merge_method": "slerp", "base_model": "MODELS/a", "parameters": {"t": 0.5},
            "slices": [{"sources": [{"model": "MODELS/a", "layer_range": list(ra)},
                                    {"model": "MODELS/b", "layer_range": list(rb)}]}
                       for ra, rb in ranges_per_slice]}


@pytest.mark.parametrize("ranges, named", [
    ([((0, 3), (2, 5))], "different layers"),
    ([((0, 3), (0, 3))], "frankenmerge"),  # drops layers 3-4
    ([((0, 3), (0, 3)), ((2, 5), (2, 5))], "repeat"),
])
def test_slices_that_are_no_tensor_wise_merge_are_refused(models, ranges, named):
    with pytest.raises(RecipeError, match=named):
        load(models, slices(*ranges))


def test_full_range_slices_import(models):
    r = load(models, slices(((0, 5), (0, 5))))
    assert r.method == "slerp" and [m.name for m in r.models] == ["b"] and r.parameters == {"t": 0.5}
    r = load(models, slices(((0, 2), (0, 2)), ((2, 5), (2, 5))))
    assert r.parameters == {"t": 0.5}


def test_lm_head_and_the_final_norm_take_their_own_values(models):
    cfg = ties(parameters={"lambda": [{"filter": "lm_head", "value": 0.5}, {"value": 1.0}]})
    r = load(models, cfg)
    assert r.parameters["lambda"] == {"head": 0.5, "head.norm": 1.0, "default": 1.0}
    cfg = ties(parameters={"lambda": [{"filter": "model.norm", "value": 0.5}, {"value": 1.0}]})
    r = load(models, cfg)
    assert r.parameters["lambda"] == {"head.norm": 0.5, "default": 1.0} and not r.split_attn_mlp
    g = r.grouping(5)
    assert r.resolve("model.norm.weight", g)[0]["lambda"] == 0.5
    assert r.resolve("lm_head.weight", g)[0]["lambda"] == 1.0
    r.validate_for(g)


def test_a_filter_finer_than_a_layer_group_is_refused_naming_both_tensors(models):
    cfg = ties(parameters={"lambda": [{"filter": "q_proj", "value": 0.5}, {"value": 1.0}]})
    with pytest.raises(RecipeError, match=r"q_proj.*k_proj|k_proj.*q_proj"):
        load(models, cfg)


def test_a_global_parameter_set_for_one_model_is_refused(models):
    cfg = ties()
    cfg["models"][0]["parameters"]["lambda"] = [0.5, 1.0]
    with pytest.raises(RecipeError, match="'lambda' is a global parameter"):
        load(models, cfg)


def test_a_required_value_missing_for_some_tensors_is_refused(models):
    cfg = {"merge_method": "slerp", "base_model": "MODELS/a",
           "models": [{"model": "MODELS/a"}, {"model": "MODELS/b"}],
           "parameters": {"t": [{"filter": "mlp", "value": [0, 1]}]}}
    with pytest.raises(RecipeError, match="no value for tensor .* requires 't'"):
        load(models, cfg)


def test_norm_values_need_split_attn_mlp():
    r = Recipe.from_dict({"method": "ties", "base": "/b", "models": [{"name": "a", "path": "/a",
                          "parameters": {"weight": 1.0}}],
                          "parameters": {"lambda": {"attn.norm": 0.5, "default": 1.0}}})
    with pytest.raises(RecipeError, match="split_attn_mlp: true"):
        r.validate_for(LayerGrouping(num_layers=2))
