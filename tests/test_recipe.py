"""Recipe: validation, layer-group resolution, YAML round trip, mergekit import/export."""

from __future__ import annotations

import pytest
import yaml

from automerge.errors import RecipeError
from automerge.layers import LayerGrouping
from automerge.recipe import Recipe, lookup_keys, resolve_value


def make(**over) -> Recipe:
    data = dict(
        method="ties", base="/m/base",
        models=[
            {"name": "code", "path": "/m/code", "parameters": {"weight": 0.7, "density": {"block0": 0.3, "default": 0.6}}},
            {"name": "lang", "path": "/m/lang", "parameters": {"weight": 0.5, "density": 0.5}},
        ],
        parameters={"lambda": 1.0}, num_groups=2, split_attn_mlp=True,
    )
    data.update(over)
    return Recipe.from_dict(data)


def test_lookup_order():
    assert lookup_keys("block1.attn") == ["block1.attn", "block1", "attn", "default"]
    assert lookup_keys("embed") == ["embed", "default"]
    assert resolve_value({"attn": 1.0, "default": 2.0}, "block3.attn", where="x") == 1.0
    assert resolve_value({"block3": 5.0, "attn": 1.0}, "block3.attn", where="x") == 5.0
    with pytest.raises(RecipeError, match="embed"):
        resolve_value({"block0": 1.0}, "embed", where="models[code].parameters.weight")


def test_resolve_per_tensor():
    r = make()
    g = LayerGrouping(num_layers=4, num_groups=2, split_attn_mlp=True)
    params, per_model = r.resolve("model.layers.1.self_attn.q_proj.weight", g)
    assert params == {"lambda": 1.0}
    assert per_model[0]["density"] == 0.3 and per_model[1]["density"] == 0.5
    _, per_model = r.resolve("model.layers.3.mlp.up_proj.weight", g)
    assert per_model[0]["density"] == 0.6


def test_yaml_round_trip(tmp_path):
    r = make()
    path = r.save(tmp_path / "r.yaml")
    assert Recipe.load(path) == r
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_validate_names_bad_parameter():
    r = make()
    r.models[0].parameters["density"] = {"block0": 1.7, "default": 0.5}
    with pytest.raises(RecipeError, match="density"):
        r.validate_for(LayerGrouping(num_layers=4, num_groups=2))


@pytest.mark.parametrize("key", ["block", "layers.3", "Embed", "block1.ffn"])
def test_unknown_group_key(key):
    r = make()
    r.models[1].parameters["weight"] = {key: 1.0}
    with pytest.raises(RecipeError, match="layer group"):
        r.validate_for(None)


def test_duplicate_model_names():
    with pytest.raises(RecipeError, match="unique"):
        make(models=[{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}])


def test_extra_field_named():
    with pytest.raises(RecipeError, match="lamda"):
        make(lamda=1.0)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.load(tmp_path / "nope.yaml")


def test_mergekit_import_scalars(tmp_path):
    cfg = {
        "merge_method": "ties", "base_model": "/m/base", "dtype": "bfloat16",
        "models": [{"model": "/m/base"},
                   {"model": "/m/code", "parameters": {"weight": 0.7, "density": 0.4}},
                   {"model": "/m/lang", "parameters": {"weight": 0.3, "density": 0.6}}],
        "parameters": {"normalize": True, "int8_mask": True},
    }
    path = tmp_path / "mk.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = Recipe.load(path)
    assert r.method == "ties" and r.base == "/m/base" and r.dtype == "bfloat16"
    assert [m.path for m in r.models] == ["/m/code", "/m/lang"]
    assert r.models[0].parameters == {"weight": 0.7, "density": 0.4}
    assert r.parameters == {"normalize": True}


@pytest.mark.parametrize("cfg, named", [
    ({"merge_method": "passthrough", "models": [{"model": "/a"}]}, "passthrough"),
    ({"merge_method": "ties", "slices": [{"sources": []}], "models": []}, "slices"),
    ({"merge_method": "ties", "base_model": "/b",
      "models": [{"model": "/a", "parameters": {"weight": [0.1, 0.9]}}]},
     "gradients, filters and slices are resolved per tensor, which needs the model's tensor names"),
])
def test_mergekit_import_refuses_by_name(cfg, named):
    with pytest.raises(RecipeError, match=named):
        Recipe.from_yaml(yaml.safe_dump(cfg))


def test_export_uses_layer_filters():
    r = make()
    g = LayerGrouping(num_layers=4, num_groups=2, split_attn_mlp=True)
    names = ["model.embed_tokens.weight"] + [
        f"model.layers.{i}.{t}" for i in range(4)
        for t in ("self_attn.q_proj.weight", "mlp.up_proj.weight")] + ["model.norm.weight", "lm_head.weight"]
    cfg = r.to_mergekit(names, g)
    density = cfg["models"][0]["parameters"]["density"]
    assert {"filter": "model.layers.0.", "value": 0.3} in density
    assert {"filter": "model.layers.3.", "value": 0.6} in density
    assert cfg["merge_method"] == "ties" and cfg["base_model"] == "/m/base"
