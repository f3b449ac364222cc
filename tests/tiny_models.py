"""Tiny random Hugging Face causal LMs and tokenizers for tests (offline, deterministic, fast).

    from tiny_models import save_tiny_model, make_tokenizer
    base = save_tiny_model(tmp_path / "base", arch="llama", seed=0)
    code = save_tiny_model(tmp_path / "code", base=base, seed=1, noise=0.02)   # a "specialist"

Every directory is a real HF model dir (config.json, generation_config.json, safetensors weights,
tokenizer.json + tokenizer_config.json) that AutoModelForCausalLM / AutoTokenizer load offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ARCHS = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "gpt_neox")

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
# ids 0..3 in every tiny tokenizer. Byte-level BPE never emits UNK, but naming one stops
# arch-specific tokenizer classes (Qwen2Tokenizer) from adding their own default special token.
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]
BOS_ID, EOS_ID, PAD_ID, UNK_ID = 0, 1, 2, 3
DEFAULT_VOCAB = 320  # 256 byte symbols + 4 specials + 60 merges

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# A few KB of mixed prose and code, so BPE learns merges both kinds of text use.
_TEXT = '''
The quick brown fox jumps over the lazy dog. A merge of two specialists keeps what each of them
learned, as long as both were fine-tuned from the same base model. The base model reads plain
English text and Python source code; the specialists read more of one than the other.
Documentation explains how a function is called, what it returns, and which errors it raises.
Tests check that the function returns the right value for a few small inputs and raises an
error for a bad one. The search tries many recipes and keeps the ones that score best on both
kinds of tasks: natural language and code.

def add(a, b):
    """Return the sum of a and b."""
    return a + b


class Counter:
    """Count how often each item is seen."""

    def __init__(self):
        self.counts = {}

    def update(self, items):
        for item in items:
            self.counts[item] = self.counts.get(item, 0) + 1
        return self

    def most_common(self, n=None):
        pairs = sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)
        return pairs if n is None else pairs[:n]


def test_add():
    assert add(1, 2) == 3
    assert add(-1, 1) == 0


def test_counter():
    counter = Counter().update("abracadabra")
    assert counter.most_common(1) == [("a", 5)]


import json
import os


def load_config(path):
    """Read a JSON config file and return it as a dict."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config file at {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


for i in range(10):
    if i % 2 == 0:
        print(i, "is even")
    else:
        print(i, "is odd")

The json module encodes and decodes JSON documents. The loads function parses a string and returns
the Python object it describes; the dumps function does the opposite. Both accept keyword arguments
that change how numbers, keys and indentation are handled. When the input is not valid JSON, a
JSONDecodeError is raised with the line and column where parsing stopped.
'''


def make_tokenizer(out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB) -> Path:
    """Train a tiny byte-level BPE tokenizer on built-in text and save it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unk
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines(keepends=True), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK)
    fast.save_pretrained(str(out_dir))
    # Pin the generic class: otherwise AutoTokenizer picks one from config.model_type (e.g.
    # Qwen2Tokenizer), which adds its own special tokens and changes len(tokenizer).
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def _tokenizer_len(out_dir: Path) -> int:
    return len(json.loads((out_dir / "tokenizer.json").read_text())["model"]["vocab"])


def _config(arch: str, *, vocab_size: int, num_layers: int, hidden: int, tie: bool):
    import transformers as tf

    heads = 4
    common = dict(
        vocab_size=vocab_size, tie_word_embeddings=tie,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
    )
    llama_like = dict(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=256, **common,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=None)
    if arch == "gemma":
        return tf.GemmaConfig(**llama_like, head_dim=hidden // heads)
    if arch == "phi3":
        return tf.Phi3Config(**llama_like)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_inner=2 * hidden, n_layer=num_layers, n_head=heads,
                             n_positions=256, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
                                num_attention_heads=heads, max_position_embeddings=256, **common)
    raise ValueError(f"unknown tiny arch {arch!r}; choose one of {', '.join(ARCHS)}")


def read_tensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model dir (single file or shards), in checkpoint order."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fname in files:
        with safe_open(str(model_dir / fname), framework="pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k)
    return out


def write_tensors(tensors: dict[str, torch.Tensor], out_dir: str | Path, shard_bytes: int | None = None) -> None:
    """Write tensors as model.safetensors, or as shards + index when shard_bytes is set."""
    out_dir = Path(out_dir)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shard_bytes is not None and shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.detach().contiguous().clone()  # clone: tied/shared storage can't be saved
        size += nbytes
    meta = {"format": "pt"}
    if shard_bytes is None:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata=meta)
        return
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(out_dir / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "llama",
    seed: int = 0,
    base: Path | None = None,
    noise: float = 0.02,
    num_layers: int = 4,
    hidden: int = 32,
    vocab_size: int | None = None,
    tie_embeddings: bool = False,
    dtype: torch.dtype = torch.float32,
    shard_bytes: int | None = None,
) -> Path:
    """Save a random tiny causal LM (or, with `base`, a noisy copy of base: a fake specialist).

    With `base`, config and tokenizer are copied from base and arch/num_layers/hidden/vocab_size/
    tie_embeddings are ignored; each tensor gets seeded Gaussian noise of std `noise * max(rms(tensor), 0.02)`.
    vocab_size=None: the tokenizer's size. Deterministic in (arguments, seed).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if base is not None:
        base = Path(base)
        for fname in ("config.json", "generation_config.json", *TOKENIZER_FILES):
            if (base / fname).exists():
                shutil.copy2(base / fname, out_dir / fname)
        config = json.loads((out_dir / "config.json").read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")  # the specialist's own dtype
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
        gen = torch.Generator().manual_seed(seed)
        tensors = {}
        for name, t in read_tensors(base).items():
            w = t.float()
            # floor at the init std so zero-initialised biases still differ between specialists
            rms = w.pow(2).mean().sqrt().clamp_min(0.02)
            tensors[name] = (w + noise * rms * torch.randn(w.shape, generator=gen)).to(dtype)
        write_tensors(tensors, out_dir, shard_bytes)
        return out_dir

    from transformers import AutoModelForCausalLM

    make_tokenizer(out_dir, vocab_size=vocab_size or DEFAULT_VOCAB)
    vocab = vocab_size or _tokenizer_len(out_dir)
    config = _config(arch, vocab_size=vocab, num_layers=num_layers, hidden=hidden, tie=tie_embeddings)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.to(dtype)
    # save_pretrained writes the names real Hub checkpoints use (they can differ from the
    # in-memory state_dict: gpt_neox stores embed_out.weight, the module is lm_head) and
    # leaves a tied lm_head out.
    model.save_pretrained(str(out_dir), max_shard_size=shard_bytes or 2**40)
    return out_dir


def save_tiny_family(root: str | Path, names: tuple[str, ...] = ("code", "lang"), *, noise: float = 0.2,
                     num_layers: int = 2, hidden: int = 16) -> dict[str, Path]:
    """A tiny llama base under root/base and one noisy specialist per name: {"base": .., name: ..}."""
    root = Path(root)
    base = save_tiny_model(root / "base", arch="llama", seed=0, num_layers=num_layers, hidden=hidden)
    out = {"base": base}
    for i, name in enumerate(names, start=1):
        out[name] = save_tiny_model(root / name, base=base, seed=i, noise=noise)
    return out
