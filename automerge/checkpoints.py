"""Find, validate, lazily read and atomically save Hugging Face checkpoints (safetensors only).

    base = Checkpoint.open("zoo:base")            # reads config.json and safetensors headers only
    code = Checkpoint.open("out/code-specialist")
    check_compatible(base, [code])               # same arch / names / shapes / vocab / tokenizer
    w = code.read("model.layers.0.mlp.up_proj.weight", dtype=torch.float32)
    save_checkpoint(merged_tensors, "out/merged", source=base)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from automerge.files import staged_dir
from automerge.errors import CheckpointError, IncompatibleModelsError
from automerge.names import ZOO_ADAPTERS, ZOO_MODELS as ZOO_FULL_MODELS
from automerge.layers import layer_index, num_hidden_layers

ZOO_MODELS = (*ZOO_FULL_MODELS, *ZOO_ADAPTERS)  # zoo:NAME; *-lora: PEFT adapters
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Copied verbatim from the source checkpoint next to the merged weights.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
    "chat_template.jinja", "chat_template.json",
)
EXTRA_FILES = ("generation_config.json", *TOKENIZER_FILES)

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit


def resolve_model_path(path: str | Path) -> Path:
    """A model directory from a path or `zoo:NAME`; raises CheckpointError if it does not exist."""
    text = str(path)
    if text.startswith("zoo:"):
        import automerge  # the package dir only: the core never imports automerge.zoo

        name = text.removeprefix("zoo:")
        if name not in ZOO_MODELS:
            raise CheckpointError(f"unknown zoo model {text!r}; choose one of "
                                  + ", ".join(f"zoo:{n}" for n in ZOO_MODELS))
        p = Path(automerge.__file__).parent / "zoo" / "models" / name
        if not p.exists():
            raise CheckpointError(f"zoo model {text!r} is not built (no {p}); run `automerge zoo build`")
        return p
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"model path {str(p)!r} does not exist")
    return p


def _read_header(file: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file ({name: {dtype, shape, data_offsets}}), validated."""
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"corrupt safetensors file {file}: {why}; re-download or re-save it")

    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise corrupt("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):
            raise corrupt(f"header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise corrupt(f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            ok = info["dtype"] in SAFETENSORS_DTYPES and all(isinstance(d, int) and d >= 0 for d in info["shape"])
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise corrupt(f"bad header entry for tensor {name!r}")
        if not 0 <= begin <= end <= data_size:
            raise corrupt(f"tensor {name!r} lies beyond the end of the file (truncated?)")
        numel = 1
        for d in info["shape"]:
            numel *= d
        if end - begin != numel * SAFETENSORS_DTYPES[info["dtype"]].itemsize:
            raise corrupt(f"tensor {name!r} has {end - begin} bytes for shape {info['shape']} {info['dtype']}")
    return header


def _load_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object")
    return data


class Checkpoint:
    """One HF model directory: config, tensor table, lazy per-tensor reads. Open with Checkpoint.open."""

    path: Path
    config: dict
    architecture: str
    num_layers: int
    tied_embeddings: bool
    names: list[str]

    def __init__(self, path: Path, config: dict, tensors: dict[str, tuple[Path, dict]]) -> None:
        self.path = path
        self.config = config
        self._tensors = tensors  # name -> (file, header entry), in checkpoint order
        self.names = list(tensors)
        archs = config.get("architectures") or [config.get("model_type") or "unknown"]
        self.architecture = str(archs[0])
        try:
            self.num_layers = num_hidden_layers(config)
        except CheckpointError as e:
            raise CheckpointError(f"{path / 'config.json'}: {e}") from None
        # HF's default is tied when the key is missing (GPT-2 configs omit it).
        has_head = any(layer_index(n) is None and {"lm_head", "embed_out", "output"} & set(n.split("."))
                       for n in self.names)
        self.tied_embeddings = bool(config.get("tie_word_embeddings", True)) and not has_head

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        """Validate a model dir eagerly (config, weight files, headers) without reading tensor data."""
        p = resolve_model_path(path)
        if not p.is_dir():
            raise CheckpointError(f"model path {str(p)!r} is not a directory (expected a HF model dir)")
        if not (p / "config.json").is_file():
            raise CheckpointError(f"{p} has no config.json; is this a Hugging Face model directory?")
        config = _load_json(p / "config.json")

        tensors: dict[str, tuple[Path, dict]] = {}
        if (p / INDEX_FILE).is_file():
            index = _load_json(p / INDEX_FILE)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map \
                    or not all(isinstance(f, str) for f in weight_map.values()):
                raise CheckpointError(f"{p / INDEX_FILE} has no valid weight_map (tensor name -> shard file)")
            headers = {}
            for fname in sorted(set(weight_map.values())):  # shard order: model-00001-of-..., ...
                shard = p / fname
                if not shard.is_file():
                    raise CheckpointError(f"shard {shard} named in {p / INDEX_FILE} is missing; "
                                          "the download or copy is incomplete")
                headers[fname] = _read_header(shard)
            for fname, header in headers.items():
                for name, info in _by_offset(header):
                    if weight_map.get(name) == fname:
                        tensors[name] = (p / fname, info)
            for name, fname in weight_map.items():
                if name not in tensors:
                    raise CheckpointError(f"{p / INDEX_FILE} puts tensor {name!r} in {p / fname}, "
                                          "which does not contain it")
        elif (p / SINGLE_FILE).is_file():
            tensors = {name: (p / SINGLE_FILE, info) for name, info in _by_offset(_read_header(p / SINGLE_FILE))}
        else:
            other = sorted(f.name for f in p.glob("*.bin")) + sorted(f.name for f in p.glob("*.safetensors"))
            hint = f" (found {', '.join(other)}; convert to safetensors)" if other else ""
            if (p / "adapter_config.json").is_file():
                hint = (" (this is a PEFT/LoRA adapter: use it as a specialist, read against the base, "
                        "or merge it into its base model first, e.g. merge_and_unload)")
            raise CheckpointError(f"{p} has no weights: neither {SINGLE_FILE} nor {INDEX_FILE}{hint}")
        if not tensors:
            raise CheckpointError(f"{p} holds no tensors")

        ckpt = cls(p, config, tensors)
        deepest = max((i for i in map(layer_index, ckpt.names) if i is not None), default=-1)
        if deepest >= ckpt.num_layers:
            raise CheckpointError(f"{p} has tensors for layer {deepest}, but config.json says "
                                  f"num_hidden_layers={ckpt.num_layers}")
        return ckpt

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {self.architecture}, {self.num_layers} layers)"

    def _entry(self, name: str) -> tuple[Path, dict]:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path} has no tensor {name!r}") from None

    def file_of(self, name: str) -> Path:
        """The safetensors file holding a tensor."""
        return self._entry(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(name)[1]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return SAFETENSORS_DTYPES[self._entry(name)[1]["dtype"]]

    def read(self, name: str, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """Read one tensor (only its bytes), cast on `device`; CheckpointError if it holds NaN/Inf."""
        file, _ = self._entry(name)
        t = self._load_raw(name, file).to(device)
        if not all_finite(t):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"tensor {name!r} in {file} holds {bad} NaN/Inf values; "
                                  "this checkpoint is broken (diverged training or a bad conversion)")
        if dtype is not None and dtype != t.dtype:
            t = t.to(dtype)
            if not all_finite(t):
                raise CheckpointError(f"tensor {name!r} in {file} overflows when cast to {dtype}; "
                                      "use a wider dtype (float32 or bfloat16)")
        return t


    def _load_raw(self, name: str, file: Path) -> torch.Tensor:
        """One tensor as stored (subclasses read other formats: automerge.specialists)."""
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(name)
        except SafetensorError as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {file}: {e}") from None


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in a tensor: one min/max reduction (NaN propagates, an inf is the max or the
    min), no bool copy; torch.isfinite(t).all() costs ~100× more on a CPU (measured)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def _by_offset(header: dict[str, dict]) -> list[tuple[str, dict]]:
    return sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])


# ---------------------------------------------------------------------------------------------
# Compatibility


def _vocab_size(ckpt: Checkpoint) -> int | None:
    v = ckpt.config.get("vocab_size", (ckpt.config.get("text_config") or {}).get("vocab_size"))
    return v if isinstance(v, int) else None


_TOKENIZER_KINDS = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def _tokenizer_fingerprint(file: Path) -> object:
    """Comparable content of a tokenizer file.

    tokenizer.json is compared by meaning (vocab, merges, added tokens), not bytes: re-saving it
    with another library version reformats it without changing a single token id.
    """
    if file.name != "tokenizer.json":
        return file.read_bytes()
    data = _load_json(file)
    model = data.get("model") or {}
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or ())
    vocab = model.get("vocab")
    vocab = dict(vocab) if isinstance(vocab, dict) else [tuple(v) for v in vocab or ()]  # Unigram: a list
    added = {a.get("id"): a.get("content") for a in data.get("added_tokens") or ()}
    return model.get("type"), vocab, merges, added


def _first_difference(a: object, b: object) -> str:
    """A short human hint of where two tokenizer fingerprints differ."""
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == 4 and len(b) == 4:
        if a[0] != b[0]:
            return f"model type {a[0]} vs {b[0]}"
        if a[1] != b[1]:
            if isinstance(a[1], dict) and isinstance(b[1], dict):
                diff = sorted(set(a[1].items()) ^ set(b[1].items()), key=lambda kv: kv[1])[:3]
                return f"{len(a[1])} vs {len(b[1])} vocab entries, e.g. {diff}"
            return "different vocabularies"
        if a[2] != b[2]:
            return "different BPE merges"
        return f"different added tokens: {sorted(set(a[3].items()) ^ set(b[3].items()))[:3]}"
    return "different files"


_VOCAB_FIX = ("Task vectors only make sense over the same token ids: resize/align the tokenizer "
              "and embeddings of {other} to the base's, or use a specialist fine-tuned from this base")


def names_list(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_compatible(base: Checkpoint, others: Sequence[Checkpoint]) -> None:
    """Raise IncompatibleModelsError unless every model in `others` can be merged with `base`.

    Checked in root-cause order: architecture, layers, vocab, tokenizer, tensor names, shapes, dtypes.
    """
    fingerprints: dict[Path, object] = {}  # the base's tokenizer is parsed once

    def fingerprint(file: Path) -> object:
        if file not in fingerprints:
            fingerprints[file] = _tokenizer_fingerprint(file)
        return fingerprints[file]

    for other in others:
        b, o = base.path, other.path
        if base.architecture != other.architecture:
            raise IncompatibleModelsError(
                f"architectures differ: {b / 'config.json'} is {base.architecture}, "
                f"{o / 'config.json'} is {other.architecture}; specialists must be fine-tuned from the base")
        if base.num_layers != other.num_layers:
            raise IncompatibleModelsError(
                f"layer counts differ: {b / 'config.json'} has {base.num_layers}, "
                f"{o / 'config.json'} has {other.num_layers}; specialists must be fine-tuned from the base")
        vb, vo = _vocab_size(base), _vocab_size(other)
        if vb != vo:
            raise IncompatibleModelsError(
                f"vocab sizes differ: {b / 'config.json'} has {vb}, {o / 'config.json'} has {vo}. "
                + _VOCAB_FIX.format(other=o))
        # Compare the first tokenizer file kind both ship; a model without one is not checked.
        kind = next((k for k in _TOKENIZER_KINDS if (b / k).is_file() and (o / k).is_file()), None)
        if kind is not None:
            fb, fo = fingerprint(b / kind), fingerprint(o / kind)
            if fb != fo:
                raise IncompatibleModelsError(
                    f"tokenizers differ: {b / kind} vs {o / kind} ({_first_difference(fb, fo)}). "
                    + _VOCAB_FIX.format(other=o))
        missing = set(base.names) - set(other.names)
        extra = set(other.names) - set(base.names)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{o} lacks {len(missing)} tensor(s) of {b}: {names_list(missing)}")
            if extra:
                parts.append(f"{o} has {len(extra)} tensor(s) {b} lacks: {names_list(extra)}")
            hint = ""
            if base.tied_embeddings != other.tied_embeddings:
                hint = " (one model ties lm_head to the embeddings and the other does not)"
            raise IncompatibleModelsError("; ".join(parts) + hint
                                          + "; specialists must have the base's exact tensor layout")
        for name in base.names:
            if base.shape(name) != other.shape(name):
                raise IncompatibleModelsError(
                    f"tensor {name!r} has shape {list(base.shape(name))} in {base.file_of(name)} but "
                    f"{list(other.shape(name))} in {other.file_of(name)}; specialists must be fine-tuned from the base")
            if base.dtype(name).is_floating_point != other.dtype(name).is_floating_point:
                raise IncompatibleModelsError(
                    f"tensor {name!r} is {base.dtype(name)} in {base.file_of(name)} but "
                    f"{other.dtype(name)} in {other.file_of(name)}; quantized or integer weights cannot be merged, "
                    "use the unquantized checkpoint")


# ---------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    tensors: Iterable[tuple[str, torch.Tensor]],
    out_dir: str | Path,
    *,
    source: Checkpoint,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 2**30,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a HF model dir: the given tensors (sharded, + index when > 1 shard) and source's
    config/tokenizer/generation files. All or nothing: built in a temp dir beside out_dir, then renamed.

    `tensors` is consumed once, streaming: at most one shard is held in CPU memory.
    """
    out_dir = Path(out_dir).expanduser()
    check_output_dir(out_dir, source=source, overwrite=overwrite)
    if max_shard_bytes < 1:
        raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    with staged_dir(out_dir, replace=overwrite) as tmp:
        write_model_files(tensors, tmp, source=source, dtype=dtype, max_shard_bytes=max_shard_bytes,
                          metadata=metadata)
    return out_dir


def check_output_dir(out_dir: Path, *, source: Checkpoint, overwrite: bool) -> None:
    """Refuse an output path that is a file, a non-empty directory (unless overwrite) or holds the source."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CheckpointError(f"output path {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise CheckpointError(f"output directory {out_dir} exists and is not empty; "
                                  "choose another directory or pass overwrite (--overwrite)")
    src = source.path.resolve()
    if out_dir.resolve() == src or out_dir.resolve() in src.parents:
        raise CheckpointError(f"refusing to write into {out_dir}: it holds the source model {source.path}")


def write_model_files(tensors: Iterable[tuple[str, torch.Tensor]], out_dir: Path, *, source: Checkpoint,
                      dtype: torch.dtype | None = None, max_shard_bytes: int = 2**30,
                      metadata: Mapping[str, str] | None = None) -> None:
    """save_checkpoint's files, written into the existing (staged) directory out_dir."""
    _write_shards(tensors, out_dir, source=source, dtype=dtype, max_shard_bytes=max_shard_bytes,
                  metadata=dict(metadata or {}))
    write_source_files(out_dir, source, dtype)


def write_source_files(out_dir: Path, source: Checkpoint, dtype: torch.dtype | None) -> None:
    """source's config.json (its dtype set to `dtype` when given), tokenizer and generation files."""
    config = _load_json(source.path / "config.json")
    if dtype is not None:  # record what was written, so from_pretrained picks it by default
        name = str(dtype).removeprefix("torch.")
        config["dtype"] = name
        if "torch_dtype" in config:
            config["torch_dtype"] = name
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for fname in EXTRA_FILES:
        if (source.path / fname).is_file():
            shutil.copy2(source.path / fname, out_dir / fname)


def shard_layout(sizes: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order: a shard closes when the next tensor would take it past
    max_shard_bytes (a tensor bigger than a shard gets its own). `_write_shards`'s rule."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, nbytes in sizes:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_files(n: int) -> list[str]:
    """The weight file names of a model saved in n shards."""
    return [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def write_index(out_dir: Path, weight_map: Mapping[str, str], total: int, metadata: Mapping[str, str]) -> None:
    """model.safetensors.index.json of a sharded model."""
    index = {"metadata": {"total_size": total, **metadata}, "weight_map": dict(weight_map)}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _write_shards(tensors: Iterable[tuple[str, torch.Tensor]], tmp: Path, *, source: Checkpoint,
                  dtype: torch.dtype | None, max_shard_bytes: int, metadata: dict[str, str]) -> None:
    header_meta = {"format": "pt", **{str(k): str(v) for k, v in metadata.items()}}
    expected = set(source.names)
    seen: set[str] = set()
    shard_names: list[list[str]] = []
    shard: dict[str, torch.Tensor] = {}
    shard_size = total = 0

    def flush() -> None:
        nonlocal shard, shard_size
        save_file(shard, str(tmp / f"shard-{len(shard_names):05d}.safetensors"), metadata=header_meta)
        shard_names.append(list(shard))
        shard, shard_size = {}, 0

    for name, t in tensors:
        if name in seen:
            raise CheckpointError(f"save_checkpoint got tensor {name!r} twice")
        if name not in expected:
            raise CheckpointError(f"save_checkpoint got tensor {name!r}, which {source.path} does not have")
        if tuple(t.shape) != source.shape(name):
            raise CheckpointError(f"save_checkpoint got tensor {name!r} of shape {list(t.shape)}, "
                                  f"but {source.path} has {list(source.shape(name))}")
        seen.add(name)
        # copy=True: never alias live model memory (tied or shared storage cannot be saved)
        cast = dtype if dtype is not None and t.is_floating_point() else t.dtype  # never cast int buffers
        t = t.detach().to(device="cpu", dtype=cast, copy=True).contiguous()
        nbytes = t.numel() * t.element_size()
        if shard and shard_size + nbytes > max_shard_bytes:  # a tensor bigger than a shard gets its own
            flush()
        shard[name] = t
        shard_size += nbytes
        total += nbytes
    if expected - seen:
        raise CheckpointError(f"save_checkpoint got no tensor for {names_list(expected - seen)} "
                              f"(the output would not load like {source.path})")
    flush()

    files = shard_files(len(shard_names))
    for i, fname in enumerate(files):
        os.replace(tmp / f"shard-{i:05d}.safetensors", tmp / fname)
    if len(files) > 1:
        write_index(tmp, {name: f for f, names in zip(files, shard_names) for name in names}, total, metadata)
