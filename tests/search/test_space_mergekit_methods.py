"""The methods mergekit brought (nuslerp, multislerp, karcher, sce, ...) in search spaces, and
--warm-start from a mergekit YAML with gradients: exact onto per-layer groups, refused onto coarser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from search_helpers import space_dict

from automerge.errors import SpaceError
from automerge.search.space import SearchSpace, warm_start_trials
from tiny_models import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("space_methods")
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=LAYERS, hidden=32)
    out = {"base": base}
    for seed, name in enumerate(("code", "lang", "tests"), start=1):
        out[name] = save_tiny_model(root / name, base=base, seed=seed, noise=0.05)
    return out


def space(tiny, **over) -> SearchSpace:
    d = space_dict(base=str(tiny["base"]),
                   specialists=[{"name": "code", "path": str(tiny["code"]), "domain": "code"},
                                {"name": "lang", "path": str(tiny["lang"]), "domain": "nl"}],
                   references=[])
    d.update(over)
    return SearchSpace.from_dict(d, source="space.yaml")


def test_a_space_chooses_among_the_mergekit_methods_and_each_trial_merges(tiny):
    import optuna

    from automerge.engine import ResidentMerger
    from automerge.methods import nuslerp, nuslerp_t

    s = space(tiny, methods={"nuslerp": {"nuslerp_flatten": {"choices": [True, False]}}, "multislerp": {},
                             "karcher": {}, "sce": {"select_topk": [0.2, 1.0]}},
              parameters={"weight": {"low": 0.1, "high": 1.0}})
    merger = ResidentMerger(base=s.base, specialists={sp.name: sp.path for sp in s.specialists}, device="cpu")
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    name = "model.layers.1.mlp.up_proj.weight"
    idx = merger.tensor_names.index(name)
    for _ in range(16):
        t = study.ask()
        r = s.suggest(t)
        seen.add(r.method)
        merger.apply(r)
        assert s.recipe_from_params(t.params) == r
        got = merger.tensors[idx].param
        assert torch.isfinite(got).all()
        if r.method == "nuslerp":  # slerp between the two specialists over the base, searched
            base, d = merger.tensors[idx].base, merger.tensors[idx].deltas
            w = [m.parameters["weight"] for m in r.models]
            want = base + nuslerp(d[0], d[1], t=nuslerp_t(w), flatten=r.parameters["nuslerp_flatten"])
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        study.tell(t, [0.0, 0.0])
    assert seen == {"nuslerp", "multislerp", "karcher", "sce"}


def test_model_counts_are_checked_per_method(tiny):
    three = [{"name": n, "path": str(tiny[n])} for n in ("code", "lang", "tests")]
    weight = {"weight": [0.0, 1.0]}
    with pytest.raises(SpaceError, match="methods.nuslerp: nuslerp merges exactly 2"):
        space(tiny, specialists=three, methods={"nuslerp": {}}, parameters=weight)
    assert space(tiny, specialists=three, methods=["multislerp"], parameters=weight).method_names == ["multislerp"]
    with pytest.raises(SpaceError, match="nuslerp slerps two specialists over the base"):
        space(tiny, methods=["slerp"], parameters={"t": [0.0, 1.0]})


def test_the_qwen_example_searches_nuslerp_and_sce():
    qwen = SearchSpace.load(ROOT / "search_spaces" / "qwen2.5-coder-7b.yaml")
    assert {"nuslerp", "sce"} <= set(qwen.method_names)


def mergekit_yaml(tiny, path: Path, *, filters: bool = False) -> Path:
    """A published-shape TIES config with gradients over the layers (and, with filters, separate
    attention and MLP gradients that leave the norms at the fallback value)."""
    weight = [0.2, 1.0]
    if filters:
        weight = [{"filter": "self_attn", "value": [0.2, 1.0]}, {"filter": "mlp", "value": [1.0, 0.4]},
                  {"value": 0.6}]
    cfg = {"merge_method": "ties", "base_model": str(tiny["base"]), "dtype": "float32",
           "models": [{"model": str(tiny["code"]), "parameters": {"density": 0.5, "weight": weight}},
                      {"model": str(tiny["lang"]), "parameters": {
                          # the MLP side's norm filtered with it, so that each sublayer has one value
                          "density": [{"filter": "mlp", "value": [0.3, 0.9]},
                                      {"filter": "post_attention_layernorm", "value": [0.3, 0.9]},
                                      {"value": 0.5}], "weight": 0.5}}]}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_warm_start_with_gradients_maps_exactly_onto_per_layer_groups(tiny, tmp_path):
    from automerge.recipe import Recipe

    path = mergekit_yaml(tiny, tmp_path / "mk.yaml")
    s = space(tiny, methods=["task_arithmetic", "ties"],
              parameters={"weight": {"low": 0.0, "high": 1.5, "per_group": True},
                          "density": {"low": 0.1, "high": 1.0, "per_group": True}, "lambda": 1.0},
              layer_groups={"num_groups": [1, 2, LAYERS], "split_attn_mlp": [False, True]})
    (warm,) = warm_start_trials(s, [path])
    assert warm.params is not None
    assert warm.params["method"] == "ties" and warm.params["num_groups"] == LAYERS
    assert warm.params["split_attn_mlp"] is True
    assert warm.params["ties.weight.code[block1.attn]"] == pytest.approx(0.2 + 0.8 / 3)
    assert warm.params["ties.weight.code[default]"] == pytest.approx(0.2)  # embeddings and head: t = 0
    assert warm.params["ties.density.lang[block3.mlp]"] == pytest.approx(0.9)
    assert warm.params["ties.density.lang[block3.attn]"] == pytest.approx(0.5)
    # the params are the recipe: every tensor gets the same values (warm_start_params checks it too)
    rebuilt = s.recipe_from_params(warm.params)
    imported = Recipe.load(path)
    grouping_a, grouping_b = rebuilt.grouping(LAYERS), imported.grouping(LAYERS)
    from automerge.checkpoints import Checkpoint

    names = Checkpoint.open(tiny["base"]).names
    assert any("post_attention_layernorm" in n for n in names)  # an MLP-side norm: density 0.5 too
    for n in names:
        ours = rebuilt.resolve(n, grouping_a)[1]
        theirs = imported.resolve(n, grouping_b)[1]
        assert [m["weight"] for m in ours] == pytest.approx([m["weight"] for m in theirs]), n
        assert [m["density"] for m in ours] == pytest.approx([m["density"] for m in theirs]), n


def test_warm_start_with_gradients_onto_a_coarser_space_is_refused(tiny, tmp_path):
    path = mergekit_yaml(tiny, tmp_path / "mk.yaml")
    coarse = space(tiny, methods=["ties"],
                   parameters={"weight": {"low": 0.0, "high": 1.5, "per_group": True},
                               "density": {"low": 0.1, "high": 1.0, "per_group": True}, "lambda": 1.0},
                   layer_groups={"num_groups": [1, 2], "split_attn_mlp": [False, True]})
    with pytest.raises(SpaceError, match=r"mk\.yaml: .* cannot hold this recipe.*num_groups: 4"):
        warm_start_trials(coarse, [path])
    not_per_group = space(tiny, methods=["ties"], parameters={"weight": [0.0, 1.5], "density": [0.1, 1.0]},
                          layer_groups={"num_groups": LAYERS, "split_attn_mlp": True})
    with pytest.raises(SpaceError, match="make weight per_group"):
        warm_start_trials(not_per_group, [path])
    fine = space(tiny, methods=["ties"],
                 parameters={"weight": {"low": 0.0, "high": 1.5, "per_group": True},
                             "density": {"low": 0.1, "high": 1.0, "per_group": True}, "lambda": 1.0},
                 layer_groups={"num_groups": LAYERS, "split_attn_mlp": True})
    filtered = mergekit_yaml(tiny, tmp_path / "filtered.yaml", filters=True)
    with pytest.raises(SpaceError, match="layernorm.*norms the value of its attention or MLP"):
        warm_start_trials(fine, [filtered])


def test_warm_start_outside_the_space_ranges_is_evaluated_as_it_is(tiny, tmp_path):
    path = mergekit_yaml(tiny, tmp_path / "mk.yaml")
    narrow = space(tiny, methods=["ties"],
                   parameters={"weight": {"low": 0.0, "high": 0.5, "per_group": True},
                               "density": {"low": 0.1, "high": 1.0, "per_group": True}, "lambda": 1.0},
                   layer_groups={"num_groups": LAYERS, "split_attn_mlp": True})
    (warm,) = warm_start_trials(narrow, [path])
    assert warm.params is None and warm.recipe.num_groups == LAYERS
