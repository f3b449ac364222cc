"""Tensor name -> layer index -> layer group, for the architectures automerge merges.

A group is what a recipe can give its own value (a weight, a density, ...):

    embed            token (and position) embeddings; a tied lm_head is not a separate tensor
    block{g}         transformer layers split into G contiguous groups by index
    block{g}.attn    ... optionally split into attention and MLP
    block{g}.mlp
    head             final norm and output projection

Naming handled: Llama / Qwen2 / Mistral / Gemma (model.layers.N.), Phi-3 (fused qkv_proj /
gate_up_proj), GPT-2 (transformer.h.N., wte/wpe, ln_f), GPT-NeoX (gpt_neox.layers.N.,
embed_in / embed_out, final_layer_norm), and any `...layers.N.` / `...h.N.` / `...blocks.N.`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from automerge.errors import CheckpointError, RecipeError

Role = Literal["embed", "head", "attn", "mlp"]

# The block container is the path component before the index: model.layers.3, transformer.h.3,
# gpt_neox.layers.3, backbone.blocks.3, ...
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")

# Inside a block, a norm goes with the sublayer it feeds. The MLP-side norms are matched
# first because "post_attention_layernorm" contains "attention" but feeds the MLP.
_MLP_NORMS = (
    "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
    "ln_2", "ffn_norm", "post_attention_norm", "norm2",
)
_ATTN_WORDS = ("input_layernorm", "ln_1", "attn_norm", "norm1", "self_attn", "self_attention",
               "attention", "attn", "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
_MLP_WORDS = ("mlp", "feed_forward", "ffn", "moe", "experts", "gate_proj", "up_proj", "down_proj",
              "gate_up_proj", "block_sparse_moe", "c_fc", "fc1", "fc2", "dense_h_to_4h", "dense_4h_to_h")

# Outside the blocks: output projections are the head even though "embed_out" says embed.
_HEAD_WORDS = ("lm_head", "embed_out", "output")
_EMBED_WORDS = ("wte", "wpe", "embed_tokens", "embed_in", "embed_positions", "word_embeddings",
                "tok_embeddings", "embeddings", "position_embeddings")


def layer_index(tensor_name: str) -> int | None:
    """Index of the transformer block a tensor lives in, or None outside the blocks.

    >>> layer_index("model.layers.3.mlp.up_proj.weight"), layer_index("transformer.h.3.ln_1.bias")
    (3, 3)
    """
    m = _LAYER_RE.search(tensor_name)
    return int(m.group(1)) if m else None


def _parts(name: str) -> list[str]:
    return name.split(".")


def tensor_role(tensor_name: str) -> Role:
    """"embed", "head", "attn" or "mlp"; raises CheckpointError for a block tensor of unknown kind."""
    m = _LAYER_RE.search(tensor_name)
    if m is None:
        parts = _parts(tensor_name)
        if any(p in _HEAD_WORDS for p in parts):
            return "head"
        if any(p in _EMBED_WORDS or p.startswith("embed") for p in parts):
            return "embed"
        return "head"  # everything else outside the blocks: final norm (model.norm, ln_f, ...)
    inner = _parts(tensor_name[m.end():])  # path below the block, e.g. ["self_attn", "q_proj", "weight"]
    if any(p in _MLP_NORMS for p in inner):
        return "mlp"
    if any(p in _ATTN_WORDS for p in inner):
        return "attn"
    if any(p in _MLP_WORDS for p in inner):
        return "mlp"
    raise CheckpointError(
        f"cannot tell whether block tensor {tensor_name!r} belongs to attention or the MLP; "
        "use split_attn_mlp: false for this architecture (or teach automerge/layers.py its naming)"
    )


def is_block_norm(tensor_name: str) -> bool:
    """Whether a tensor is a normalisation layer inside a transformer block (input_layernorm,
    post_attention_layernorm, ln_1, ...): a recipe may give these their own value
    (``blockN.attn.norm``), as mergekit filters on ``self_attn`` / ``mlp`` leave them out.

    >>> is_block_norm("model.layers.0.input_layernorm.weight"), is_block_norm("model.norm.weight")
    (True, False)
    """
    m = _LAYER_RE.search(tensor_name)
    if m is None:
        return False
    return _names_a_norm(tensor_name[m.end():])


def is_head_norm(tensor_name: str) -> bool:
    """Whether a tensor is the final norm (model.norm, ln_f, final_layer_norm): it may take a value
    of its own (``head.norm``) apart from lm_head.

    >>> is_head_norm("model.norm.weight"), is_head_norm("lm_head.weight")
    (True, False)
    """
    return _LAYER_RE.search(tensor_name) is None and tensor_role(tensor_name) == "head" and _names_a_norm(tensor_name)


def _names_a_norm(path: str) -> bool:
    return any("norm" in p or p.startswith("ln_") for p in _parts(path))


def num_hidden_layers(config: Mapping[str, Any]) -> int:
    """Number of transformer blocks from a config.json mapping (any of the usual key spellings)."""
    if not isinstance(config, Mapping) and hasattr(config, "to_dict"):
        config = config.to_dict()  # a transformers PretrainedConfig
    for cfg in (config, config.get("text_config") or {}):  # multimodal configs nest the LM
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
    raise CheckpointError(
        "config.json has no layer count (num_hidden_layers / n_layer / num_layers); "
        "is this a causal language model config?"
    )


@dataclass(frozen=True)
class LayerGrouping:
    """Map tensor names to recipe groups: embed, block0..block{G-1} (optionally .attn/.mlp), head.

    Layer i goes to group i * num_groups // num_layers: contiguous groups whose sizes differ by <= 1.
    """

    num_layers: int
    num_groups: int = 1
    split_attn_mlp: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise RecipeError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        if not isinstance(self.num_groups, int) or not 1 <= self.num_groups <= self.num_layers:
            raise RecipeError(
                f"num_groups={self.num_groups!r} is outside 1..{self.num_layers} "
                f"(the model has {self.num_layers} layers); choose a value in that range"
            )

    def group_of(self, tensor_name: str) -> str:
        i = layer_index(tensor_name)
        if i is None:
            return tensor_role(tensor_name)  # "embed" or "head"
        if i >= self.num_layers:
            raise CheckpointError(
                f"tensor {tensor_name!r} is in layer {i}, but the model has {self.num_layers} layers "
                "(num_hidden_layers in config.json)"
            )
        block = f"block{i * self.num_groups // self.num_layers}"
        return f"{block}.{tensor_role(tensor_name)}" if self.split_attn_mlp else block

    def groups(self) -> list[str]:
        """All group names in model order."""
        blocks = [f"block{g}" for g in range(self.num_groups)]
        if self.split_attn_mlp:
            blocks = [f"{b}.{kind}" for b in blocks for kind in ("attn", "mlp")]
        return ["embed", *blocks, "head"]

    def layers_of(self, group: str) -> range:
        """Layer indices of a group; an empty range for embed and head."""
        if group in ("embed", "head"):
            return range(0)
        if group not in self.groups():
            raise RecipeError(f"unknown layer group {group!r}; groups are {', '.join(self.groups())}")
        g = int(group.removeprefix("block").split(".")[0])
        # i * G // L == g  <=>  ceil(g*L/G) <= i < ceil((g+1)*L/G)
        L, G = self.num_layers, self.num_groups
        return range(-(-g * L // G), -(-(g + 1) * L // G))
