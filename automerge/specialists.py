"""Specialists that are not full HF model directories, read against their base model.

    base = Checkpoint.open("zoo:base")
    code = open_specialist("out/code.pt", base=base)         # a plain state dict (torch.save)
    lang = open_specialist("out/lang-lora", base=base)       # a PEFT LoRA adapter directory
    d = task_vector(lang, "model.layers.0.self_attn.q_proj.weight", base_tensor)   # scale·B·A

Both behave like a `Checkpoint` of the base's layout (names, shapes, config, tokenizer are the
base's), so every place that takes a specialist (recipes, spaces, merge, search, eval) takes
them. A state dict is loaded with ``torch.load(weights_only=True)``: a pickle that needs code
to load is refused, naming the code it asks for. A LoRA adapter's task vector is
``scale · B·A`` per target module (``scale = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA);
modules it does not touch have a zero task vector.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import torch

from automerge.checkpoints import SAFETENSORS_DTYPES, Checkpoint, names_list, resolve_model_path
from automerge.errors import CheckpointError

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Wrappers that prefix every key: DDP/DataParallel (module.), torch.compile (_orig_mod.).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys a state dict may hold that are no weights of the base (recomputed buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".masked_bias", ".attn.bias")
_DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def is_state_dict_file(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix in STATE_DICT_SUFFIXES and p.is_file()


def is_lora_adapter(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def needs_base(path: str | Path) -> bool:
    """Whether a specialist path is read against a base (a state-dict file or a LoRA adapter)."""
    try:
        p = resolve_model_path(path)
    except CheckpointError:
        return False
    return is_state_dict_file(p) or is_lora_adapter(p)


def open_specialist(path: str | Path, *, base: Checkpoint) -> Checkpoint:
    """A specialist as a Checkpoint: a HF model dir, a PEFT LoRA adapter dir or a state-dict file."""
    p = resolve_model_path(path)
    if is_state_dict_file(p):
        return StateDictCheckpoint.load(p, base=base)
    if is_lora_adapter(p):
        return LoraCheckpoint.load(p, base=base)
    if p.is_file():
        raise CheckpointError(f"specialist {str(p)!r} is a file but not a state dict; give a HF model directory, "
                              f"a PEFT adapter directory or a {'/'.join(STATE_DICT_SUFFIXES)} state dict")
    return Checkpoint.open(p)


def task_vector(ckpt: Checkpoint, name: str, base: torch.Tensor) -> torch.Tensor:
    """d = x - b in fp32 on base's device; a LoRA adapter's exact scale·B·A (zero where untouched)."""
    if isinstance(ckpt, LoraCheckpoint):
        return ckpt.delta(name, device=base.device)
    return ckpt.read(name, dtype=torch.float32, device=base.device) - base.float()


# ------------------------------------------------------------------------------------- state dicts


def _safe_torch_load(file: Path) -> object:
    """torch.load with weights_only=True; a pickle that needs code is refused by the global it names."""
    try:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) torch.save files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it calls {found.group(1)}" if found else str(e).splitlines()[0].strip()
        raise CheckpointError(
            f"{file} is a pickle that needs code to load ({what}); automerge loads plain state dicts only "
            "(torch.load weights_only=True), never running a file's code. Re-save it from trusted code as "
            "torch.save(model.state_dict(), path) or as safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot load {file} as a torch state dict: {e}") from None


def _tensor_dict(obj: object, file: Path) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping in a loaded file (a state dict, or one under state_dict/model/module)."""
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in ("state_dict", "model", "module", "model_state_dict") if isinstance(obj.get(k), dict)]
        if nested:
            obj = obj[nested[0]]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{file} holds a {type(obj).__name__}, not a state dict (name -> tensor); "
                              "save one with torch.save(model.state_dict(), path)")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file}: entries {names_list(bad)} are not tensors; a state dict maps names "
                              "to tensors (save model.state_dict(), not a training checkpoint)")
    return {str(k): v for k, v in obj.items()}


def _resolve_key(key: str, names: set[str]) -> str:
    """A state-dict key under the base's naming: wrapper prefixes stripped, `model.` added or removed."""
    k = key
    stripped = True
    while stripped:
        stripped = False
        for pre in _WRAPPER_PREFIXES:
            if k.startswith(pre):
                k, stripped = k[len(pre):], True
    for cand in (k, "model." + k, k.removeprefix("model.")):
        if cand in names:
            return cand
    return key


class StateDictCheckpoint(Checkpoint):
    """A `*.pt` / `*.bin` state dict read against its base (the base's config and tokenizer)."""

    @classmethod
    def load(cls, file: Path, *, base: Checkpoint) -> "StateDictCheckpoint":
        raw = _tensor_dict(_safe_torch_load(file), file)
        names = set(base.names)
        state: dict[str, torch.Tensor] = {}
        unmatched = []
        for key, t in raw.items():
            name = _resolve_key(key, names)
            if name not in names:
                if key.endswith(_IGNORED_SUFFIXES) or (base.tied_embeddings and name.endswith("lm_head.weight")):
                    continue  # a recomputed buffer, or the tied output embedding saved twice
                unmatched.append(key)
                continue
            if name in state:
                raise CheckpointError(f"{file}: keys for {name!r} appear twice (after resolving prefixes)")
            state[name] = t
        missing = names - set(state)
        if unmatched or missing:
            parts = []
            if unmatched:
                parts.append(f"{len(unmatched)} key(s) match no tensor of the base, e.g. {names_list(unmatched, 3)}")
            if missing:
                parts.append(f"{len(missing)} tensor(s) of the base are missing, e.g. {names_list(missing, 3)}")
            raise CheckpointError(
                f"{file} does not hold the base {base.path}'s tensors: " + "; ".join(parts)
                + " (prefixes module./_orig_mod. are stripped and model. added or removed to match); "
                "save the full model's state_dict() of a fine-tune of this base")
        tensors = {n: (file, {"dtype": _DTYPE_CODES.get(state[n].dtype, "F32"), "shape": list(state[n].shape)})
                   for n in base.names}
        for n, t in state.items():
            if t.dtype not in _DTYPE_CODES:
                raise CheckpointError(f"{file}: tensor {n!r} has dtype {t.dtype}, which cannot be merged")
        ckpt = cls(file, base.config, tensors)
        ckpt._state = state
        ckpt.base_path = base.path
        return ckpt

    def _load_raw(self, name: str, file: Path) -> torch.Tensor:
        return self._state[name]


# ------------------------------------------------------------------------------------------- LoRA


class LoraCheckpoint(Checkpoint):
    """A PEFT LoRA adapter read against its base: the base's tensors plus scale·B·A where it targets."""

    @classmethod
    def load(cls, adapter_dir: Path, *, base: Checkpoint) -> "LoraCheckpoint":
        from safetensors.torch import load_file

        config = _adapter_config(adapter_dir)
        weights = next((adapter_dir / f for f in ADAPTER_WEIGHTS if (adapter_dir / f).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{adapter_dir} has {ADAPTER_CONFIG} but no {' or '.join(ADAPTER_WEIGHTS)}")
        raw = load_file(str(weights)) if weights.suffix == ".safetensors" else \
            _tensor_dict(_safe_torch_load(weights), weights)

        pairs, full, module_of = _lora_tensors(raw, base, weights)
        factors = _lora_factors(pairs, module_of, config, weights, base)
        for name, t in full.items():
            if tuple(t.shape) != base.shape(name):
                raise CheckpointError(f"{weights}: tensor for {name!r} is {list(t.shape)} but the base's is "
                                      f"{list(base.shape(name))}")
        tensors = {n: (weights, {"dtype": _DTYPE_CODES[base.dtype(n)], "shape": list(base.shape(n))})
                   for n in base.names}
        ckpt = cls(adapter_dir, base.config, tensors)
        ckpt.base = base
        ckpt.adapter_config = config
        ckpt._factors = factors
        ckpt._full = full
        return ckpt

    @property
    def targets(self) -> list[str]:
        """Base tensor names this adapter changes."""
        return [n for n in self.names if n in self._factors or n in self._full]

    def delta(self, name: str, *, device: str | torch.device = "cpu") -> torch.Tensor:
        """This adapter's task vector for one base tensor, fp32 on `device` (zeros where untouched)."""
        d = torch.zeros(self.base.shape(name), dtype=torch.float32, device=device)
        if name in self._full:
            d += self._full[name].to(device, torch.float32) - self.base.read(name, dtype=torch.float32, device=device)
        if name in self._factors:
            a, b, scale, transpose = self._factors[name]
            ba = (b.to(device, torch.float32) @ a.to(device, torch.float32)) * scale
            d += ba.T if transpose else ba
            if not torch.isfinite(d).all():
                raise CheckpointError(f"{self.path}: the LoRA update of {name!r} holds NaN/Inf values; "
                                      "the adapter is broken (diverged training?)")
        return d

    def _load_raw(self, name: str, file: Path) -> torch.Tensor:
        if name not in self._factors and name not in self._full:
            return self.base.read(name)
        return (self.base.read(name, dtype=torch.float32) + self.delta(name)).to(self.base.dtype(name))


def _pattern(pattern: dict, module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: the first key that ends the module's name (as PEFT matches)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _adapter_config(adapter_dir: Path) -> dict:
    """The adapter's PEFT config; only plain LoRA (not DoRA, not other PEFT types) is accepted."""
    config_file = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {config_file}: {e}") from None
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise CheckpointError(f"{config_file}: peft_type {kind!r} is not supported; only LoRA adapters "
                              "(peft_type LORA) have a task vector scale·B·A")
    if config.get("use_dora"):
        raise CheckpointError(f"{config_file}: DoRA adapters (use_dora) are not supported: their task "
                              "vector is not scale·B·A; merge it into the base (merge_and_unload) and pass "
                              "the merged model")
    return config


def _lora_tensors(raw: dict, base: Checkpoint, weights: Path):
    """(lora factors by base tensor name {"A"/"B"/"EA"/"EB": tensor}, whole tensors by name, module
    of each factored name): the adapter's keys matched to the base's tensors."""
    names = set(base.names)
    pairs: dict[str, dict[str, torch.Tensor]] = {}  # base tensor name -> {"A": .., "B": ..}
    full: dict[str, torch.Tensor] = {}  # modules_to_save / trained biases: whole tensors
    module_of: dict[str, str] = {}
    for key, t in raw.items():
        k = key.removeprefix("base_model.model.")
        m = re.match(r"^(?P<mod>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?"
                     r"(?:\.weight)?$", k)
        if m:
            mod = m.group("mod")
            name = _resolve_key(mod + ".weight", names)
            if name not in names:
                raise CheckpointError(f"{weights}: LoRA module {mod!r} has no weight in the base {base.path} "
                                      f"(looked for {mod}.weight); is this adapter for another base model?")
            ab = ("E" if m.group("emb") else "") + m.group("ab")
            pairs.setdefault(name, {})[ab] = t
            module_of[name] = mod
            continue
        if "lora_magnitude_vector" in k:
            raise CheckpointError(f"{weights}: holds DoRA magnitudes ({key}); DoRA adapters are not supported")
        # whole tensors: modules_to_save, trained biases, and the embedding PEFT saves next to an
        # embedding LoRA (base_layer; a resized vocabulary shows up as a shape mismatch below)
        for marker in (".modules_to_save.default.", ".modules_to_save.", ".base_layer."):
            k = k.replace(marker, ".")
        name = _resolve_key(k, names)
        if name not in names:
            raise CheckpointError(f"{weights}: tensor {key!r} matches no tensor of the base {base.path}; "
                                  "is this adapter for another base model?")
        full[name] = t
    if not pairs and not full:
        raise CheckpointError(f"{weights} holds no LoRA weights (no lora_A / lora_B tensors)")

    return pairs, full, module_of


def _lora_factors(pairs: dict, module_of: dict, config: dict, weights: Path, base: Checkpoint) -> dict:
    """(A, B, scale, transpose) per base tensor: the update is scale·B@A (transposed for embeddings
    and fan_in_fan_out layers), with PEFT's rank / alpha patterns and rsLoRA."""
    r_default = int(config.get("r", 8))
    alpha_default = float(config.get("lora_alpha", r_default))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float, bool]] = {}
    for name, ab in pairs.items():
        emb = "EA" in ab or "EB" in ab
        a, b = (ab.get("EA"), ab.get("EB")) if emb else (ab.get("A"), ab.get("B"))
        if a is None or b is None:
            raise CheckpointError(f"{weights}: module {module_of[name]!r} has only one of lora_A / lora_B")
        r = _pattern(rank_pattern, module_of[name], r_default)
        alpha = float(_pattern(alpha_pattern, module_of[name], alpha_default))
        if a.shape[0] != r and not emb:
            r = a.shape[0]  # the tensors are the truth; PEFT saves rank_pattern for varied ranks
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        # Linear: W += scale·B@A. Embedding (lora_embedding_A [r, vocab], _B [dim, r]): W += scale·(B@A)ᵀ.
        # fan_in_fan_out (GPT-2's Conv1D stores Wᵀ): W += scale·(B@A)ᵀ too.
        transpose = emb or fan_in_fan_out
        shape = base.shape(name)
        got = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
        if tuple(got) != tuple(shape):
            raise CheckpointError(f"{weights}: LoRA module {module_of[name]!r} makes a {list(got)} update "
                                  f"but the base tensor {name!r} is {list(shape)}; is this adapter for "
                                  "another base model?")
        factors[name] = (a, b, scale, transpose)
    return factors
