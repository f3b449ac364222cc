from __future__ import annotations

import pytest
from tiny_models import ARCHS, read_tensors, save_tiny_model

from automerge.errors import AutomergeError, CheckpointError, RecipeError
from automerge.layers import LayerGrouping, layer_index, num_hidden_layers, tensor_role

# Ground truth, written out by hand per architecture: role of every tensor outside the blocks,
# and of every tensor suffix inside a block. The test also checks that these are *all* the
# tensors the real (tiny) model has, so a new name cannot slip through ungrouped.
_LLAMA_BLOCK = {
    "input_layernorm.weight": "attn",
    "self_attn.q_proj.weight": "attn", "self_attn.k_proj.weight": "attn",
    "self_attn.v_proj.weight": "attn", "self_attn.o_proj.weight": "attn",
    "post_attention_layernorm.weight": "mlp",
    "mlp.gate_proj.weight": "mlp", "mlp.up_proj.weight": "mlp", "mlp.down_proj.weight": "mlp",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "embed", "model.norm.weight": "head", "lm_head.weight": "head"}
EXPECTED = {
    "llama": ("model.layers.{i}.", _LLAMA_TOP, _LLAMA_BLOCK),
    "mistral": ("model.layers.{i}.", _LLAMA_TOP, _LLAMA_BLOCK),
    "gemma": ("model.layers.{i}.", _LLAMA_TOP, _LLAMA_BLOCK),
    "qwen2": ("model.layers.{i}.", _LLAMA_TOP, {
        **_LLAMA_BLOCK,
        "self_attn.q_proj.bias": "attn", "self_attn.k_proj.bias": "attn", "self_attn.v_proj.bias": "attn",
    }),
    "phi3": ("model.layers.{i}.", _LLAMA_TOP, {
        "input_layernorm.weight": "attn", "self_attn.qkv_proj.weight": "attn", "self_attn.o_proj.weight": "attn",
        "post_attention_layernorm.weight": "mlp", "mlp.gate_up_proj.weight": "mlp", "mlp.down_proj.weight": "mlp",
    }),
    "gpt2": ("transformer.h.{i}.", {
        "transformer.wte.weight": "embed", "transformer.wpe.weight": "embed",
        "transformer.ln_f.weight": "head", "transformer.ln_f.bias": "head", "lm_head.weight": "head",
    }, {
        **{f"ln_1.{p}": "attn" for p in ("weight", "bias")},
        **{f"attn.{m}.{p}": "attn" for m in ("c_attn", "c_proj") for p in ("weight", "bias")},
        **{f"ln_2.{p}": "mlp" for p in ("weight", "bias")},
        **{f"mlp.{m}.{p}": "mlp" for m in ("c_fc", "c_proj") for p in ("weight", "bias")},
    }),
    "gpt_neox": ("gpt_neox.layers.{i}.", {
        "gpt_neox.embed_in.weight": "embed", "embed_out.weight": "head",
        "gpt_neox.final_layer_norm.weight": "head", "gpt_neox.final_layer_norm.bias": "head",
    }, {
        **{f"input_layernorm.{p}": "attn" for p in ("weight", "bias")},
        **{f"attention.{m}.{p}": "attn" for m in ("query_key_value", "dense") for p in ("weight", "bias")},
        **{f"post_attention_layernorm.{p}": "mlp" for p in ("weight", "bias")},
        **{f"mlp.{m}.{p}": "mlp" for m in ("dense_h_to_4h", "dense_4h_to_h") for p in ("weight", "bias")},
    }),
}
NUM_LAYERS = 5  # with 2 groups: layers 0-2 -> block0, 3-4 -> block1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    return {
        (arch, tie): save_tiny_model(root / f"{arch}-{tie}", arch=arch, num_layers=NUM_LAYERS, tie_embeddings=tie)
        for arch in ARCHS for tie in (False, True)
    }


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_tensor_of_real_architectures_gets_the_right_group(models, arch, tie):
    prefix, top, block = EXPECTED[arch]
    if tie:  # a tied lm_head is not stored: the embeddings count once, as embed
        top = {k: v for k, v in top.items() if v != "head" or "norm" in k or "ln_f" in k}
    expected_role = dict(top)
    for i in range(NUM_LAYERS):
        expected_role.update({prefix.format(i=i) + suffix: role for suffix, role in block.items()})
    names = list(read_tensors(models[arch, tie]))
    assert sorted(names) == sorted(expected_role)

    whole = LayerGrouping(NUM_LAYERS, num_groups=2)
    split = LayerGrouping(NUM_LAYERS, num_groups=2, split_attn_mlp=True)
    for name in names:
        role = expected_role[name]
        assert tensor_role(name) == role, name
        i = layer_index(name)
        if role in ("embed", "head"):
            assert i is None and whole.group_of(name) == role and split.group_of(name) == role
        else:
            g = 0 if i < 3 else 1
            assert whole.group_of(name) == f"block{g}", name
            assert split.group_of(name) == f"block{g}.{role}", name
    embeds = [n for n in names if whole.group_of(n) == "embed"]
    assert len(embeds) == (2 if arch == "gpt2" else 1)  # gpt2: token + position embeddings


def test_layer_index():
    assert layer_index("model.layers.3.mlp.up_proj.weight") == 3
    assert layer_index("transformer.h.12.attn.c_attn.bias") == 12
    assert layer_index("gpt_neox.layers.0.attention.dense.weight") == 0
    assert layer_index("backbone.blocks.7.mixer.in_proj.weight") == 7  # generic fallback
    assert layer_index("model.language_model.layers.2.self_attn.q_proj.weight") == 2
    for name in ("model.embed_tokens.weight", "lm_head.weight", "transformer.ln_f.weight", "model.norm.weight"):
        assert layer_index(name) is None
    assert layer_index("model.head_12.weight") is None  # "h" must be a whole path component


def test_tensor_role_generic_names():
    assert tensor_role("output.weight") == "head"
    assert tensor_role("tok_embeddings.weight") == "embed"
    assert tensor_role("blocks.0.attn.qkv.weight") == "attn"
    assert tensor_role("blocks.0.ffn.w1.weight") == "mlp"
    assert tensor_role("model.layers.0.pre_feedforward_layernorm.weight") == "mlp"  # Gemma 2
    assert tensor_role("model.layers.0.post_feedforward_layernorm.weight") == "mlp"
    assert tensor_role("model.layers.0.block_sparse_moe.experts.3.w1.weight") == "mlp"  # Mixtral


def test_unknown_block_tensor_only_fails_when_split():
    name = "model.layers.0.mystery.weight"
    assert LayerGrouping(2).group_of(name) == "block0"
    with pytest.raises(CheckpointError, match="mystery"):
        LayerGrouping(2, split_attn_mlp=True).group_of(name)


def test_num_hidden_layers():
    assert num_hidden_layers({"num_hidden_layers": 28}) == 28
    assert num_hidden_layers({"n_layer": 12}) == 12  # gpt2
    assert num_hidden_layers({"text_config": {"num_hidden_layers": 4}}) == 4
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        num_hidden_layers({"hidden_size": 32})


def test_groups_partition_layers_contiguously():
    for L in range(1, 13):
        for G in range(1, L + 1):
            grouping = LayerGrouping(L, G)
            ranges = [grouping.layers_of(f"block{g}") for g in range(G)]
            assert [i for r in ranges for i in r] == list(range(L))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
            for g, r in enumerate(ranges):
                for i in r:
                    assert grouping.group_of(f"model.layers.{i}.mlp.up_proj.weight") == f"block{g}"


def test_groups_in_model_order():
    assert LayerGrouping(4, 2).groups() == ["embed", "block0", "block1", "head"]
    assert LayerGrouping(4, 2, split_attn_mlp=True).groups() == [
        "embed", "block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "head"]
    split = LayerGrouping(6, 3, split_attn_mlp=True)
    assert split.layers_of("block1.mlp") == range(2, 4)
    assert split.layers_of("embed") == range(0)


@pytest.mark.parametrize("num_groups", [0, -1, 5, 2.5])
def test_num_groups_out_of_range(num_groups):
    with pytest.raises(RecipeError, match=r"num_groups.*1\.\.4"):
        LayerGrouping(4, num_groups)


def test_unknown_group_and_layer_beyond_model():
    with pytest.raises(RecipeError, match="block0.attn"):
        LayerGrouping(4, 2).layers_of("block0.attn")  # not split
    with pytest.raises(RecipeError, match="block2"):
        LayerGrouping(4, 2).layers_of("block2")
    with pytest.raises(AutomergeError, match="layer 4"):
        LayerGrouping(4, 2).group_of("model.layers.4.mlp.up_proj.weight")
