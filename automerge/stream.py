"""One-off merges streamed tensor by tensor: read, merge, write (`automerge merge`, `export --model`).

    merge_to_dir(recipe, "out/merged", dtype="bfloat16")       # a HF model directory, all or nothing

`StreamedMerge` opens the base and the specialists (headers only), validates the recipe for every
tensor, then per tensor reads the base's and each specialist's bytes straight from the
safetensors file into reused buffers, computes the merge with the engine's own kernels
(`engine.fused_merge` for linear, task arithmetic, TIES, DARE; the method's pure function for the
rest), and writes the result at its place in an output shard whose header was laid out up front
from the shapes. No live transformers model and no resident task vectors: memory holds one
tensor's base, task vectors and result; linear, task arithmetic and TIES go in blocks of rows
(TIES first builds each whole fp32 task vector once, for its exact threshold).

The bytes equal `ResidentMerger.save` (tested for every streamed method): the same fp32
arithmetic, the same exact per-tensor thresholds (`methods.magnitude_threshold`, selection, no
sort), the same noise per (seed, tensor), the same shard layout, safetensors header, index,
config and tokenizer files. Methods in `RESIDENT` go through ResidentMerger instead, for the
reason given there (docs/merge-methods.md lists them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from automerge.checkpoints import (
    SAFETENSORS_DTYPES,
    Checkpoint,
    all_finite,
    check_compatible,
    check_output_dir,
    resolve_model_path,
    shard_files,
    shard_layout,
    write_index,
    write_source_files,
)
from automerge.engine import DTYPES, ResidentMerger, default_chunk, fusable, fused_merge, pick_device
from automerge.errors import CheckpointError, RecipeError
from automerge.files import staged_dir
from automerge.methods import MergeMethod, get_method, magnitude_threshold, random_noise
from automerge.recipe import Recipe
from automerge.specialists import open_specialist, task_vector

# method -> why it is merged by the resident engine rather than streamed
RESIDENT = {
    "fisher": "it needs one Fisher estimate file per specialist (given, or estimated from data by loading "
              "each model), which ResidentMerger resolves and reads whole",
}
# Linear, task arithmetic and TIES are elementwise once TIES's thresholds are known: tensors over
# plain safetensors checkpoints go in blocks of rows of at most this many entries.
BLOCK_ELEMENTS = 1 << 23
_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def resident_reason(method: str) -> str | None:
    """Why `method` is not streamed (None: it is)."""
    return RESIDENT.get(method)


@dataclass
class _Buffers:
    """The chunk-sized fp32 scratch `fused_merge` asks for (u per specialist, masks, sums)."""

    device: torch.device
    u: list[torch.Tensor] = field(default_factory=list)
    keep: torch.Tensor | None = None
    tmp: torch.Tensor | None = None
    mixed: torch.Tensor | None = None
    div: torch.Tensor | None = None
    sign: torch.Tensor | None = None

    def __call__(self, k: int, size: int) -> "_Buffers":
        if len(self.u) < k or self.keep is None or self.keep.numel() < size:
            size = max(size, self.keep.numel() if self.keep is not None else 0)
            new = lambda: torch.empty(size, dtype=torch.float32, device=self.device)  # noqa: E731
            self.u = [new() for _ in range(max(k, len(self.u)))]
            self.keep, self.tmp, self.mixed, self.div, self.sign = new(), new(), new(), new(), new()
        return self


class StreamedMerge:
    """A validated one-off merge of a recipe; `write(dir)` streams it into a model directory."""

    def __init__(self, recipe: Recipe, *, device: str = "auto") -> None:
        """Open every checkpoint (headers only) and check the recipe for every tensor; reads no weights."""
        reason = resident_reason(recipe.method)
        if reason:
            raise RecipeError(f"method {recipe.method!r} is not streamed: {reason}; use merge_to_dir")
        self.recipe = recipe
        self.method: MergeMethod = get_method(recipe.method)
        recipe.validate_for(None)
        self.device = pick_device(device)
        # As ResidentMerger: DARE's kept-L1 sum runs per chunk, so the chunk is part of the result.
        self.chunk = default_chunk(self.device)
        # linear needs no base; the first model then serves as the reference its task vectors start from.
        self.base = Checkpoint.open(resolve_model_path(recipe.base or recipe.models[0].path))
        self.specialists = [open_specialist(m.path, base=self.base) for m in recipe.models]
        check_compatible(self.base, self.specialists)
        grouping = recipe.grouping(self.base.num_layers)
        recipe.validate_for(grouping)
        self.params: dict[str, tuple[dict, list[dict]]] = {}
        checked: dict[str, tuple[dict, list[dict]]] = {}
        for name in self.base.names:
            group = recipe.tensor_group(name, grouping)
            if group not in checked:
                checked[group] = self.method.check_params(*recipe.resolve(name, grouping))
            self.params[name] = checked[group]
        self._buffers = _Buffers(self.device)
        self._rows = _RowReader(self.device)

    # -- writing -----------------------------------------------------------------------------

    def write(self, out_dir: Path, *, dtype: str | None = None, metadata: Mapping[str, str] | None = None,
              max_shard_bytes: int = 2**30) -> None:
        """Write the merged model into the existing empty directory `out_dir` (stage it: merge_to_dir)."""
        cast = DTYPES[dtype] if dtype else None
        # As save_checkpoint on ResidentMerger's fp32 tensors: floats cast, integer tensors kept.
        out_dtypes = {n: (cast or torch.float32) if self.base.dtype(n).is_floating_point else self.base.dtype(n)
                      for n in self.base.names}
        sizes = {n: _numel(self.base.shape(n)) * out_dtypes[n].itemsize for n in self.base.names}
        shards = shard_layout(list(sizes.items()), max_shard_bytes)
        header_meta = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
        files = shard_files(len(shards))
        total = 0
        with torch.no_grad():
            for fname, names in zip(files, shards):
                with _ShardFile(out_dir / fname, {n: (out_dtypes[n], self.base.shape(n)) for n in names},
                                header_meta) as shard:
                    for name in names:
                        self._merge_into(name, shard)
                        total += sizes[name]
        if len(files) > 1:
            write_index(out_dir, {n: f for f, names in zip(files, shards) for n in names}, total, dict(metadata or {}))
        write_source_files(out_dir, self.base, cast)

    def _merge_into(self, name: str, shard: "_ShardFile") -> None:
        params, per_model = self.params[name]
        shape = self.base.shape(name)
        if self._blockwise(name, params):
            thresholds = self._thresholds(name, per_model) if self.method.name == "ties" else None
            k = len(self.specialists)
            for a, b in self._rows.blocks(shape):
                n = (b - a) * _numel(shape[1:])
                base, out = self._rows.fp32(0, n), self._rows.fp32(1, n)
                deltas = [self._rows.fp32(2 + i, n) for i in range(k)]
                self._rows.read(self.base, name, a, b, into=base)
                for ckpt, d in zip(self.specialists, deltas):
                    self._rows.read(ckpt, name, a, b, into=d)
                    d.sub_(base)  # d = x - b in fp32, as task_vector
                fused_merge(out, base, deltas, self.method.name, params, per_model,
                            chunk=self.chunk, scratch=self._buffers, thresholds=thresholds)
                shard.write(name, out, first_row=a, row_numel=_numel(shape[1:]))
            return
        n, rows, k = _numel(shape), shape[0] if shape else 1, len(self.specialists)
        base = self._rows.fp32(0, n)
        self._rows.read(self.base, name, 0, rows, into=base)
        base = base.view(shape)
        deltas = self._rows.whole(k * n).view(k, *shape)
        for i, ckpt in enumerate(self.specialists):
            if type(ckpt) is Checkpoint:
                self._rows.read(ckpt, name, 0, rows, into=deltas[i].view(-1))
                deltas[i].sub_(base)  # d = x - b in fp32, as task_vector
            else:
                deltas[i] = task_vector(ckpt, name, base)  # LoRA: scale·B·A; a state dict
        noise = (random_noise(tuple(deltas.shape), seed=self.recipe.seed, tensor_name=name).to(self.device)
                 if self.method.random else None)
        if fusable(self.method.name, params):
            out = self._rows.fp32(1, n).view(shape)
            thresholds = l1_norms = None
            if self.method.name == "ties":
                thresholds = _ties_thresholds(deltas, per_model)
            elif noise is not None and bool(params.get("rescale", True)):
                l1_norms = deltas.abs().flatten(1).sum(1).tolist()
            fused_merge(out.view(-1), base.view(-1), [deltas[i].view(-1) for i in range(k)], self.method.name,
                        params, per_model, chunk=self.chunk, scratch=self._buffers, thresholds=thresholds,
                        noise_rows=[noise[i].view(-1) for i in range(k)] if noise is not None else None,
                        l1_norms=l1_norms)
        else:
            out = self.method.merge_tensor(
                base, deltas, per_model={key: [pm[key] for pm in per_model] for key in per_model[0]} if per_model else {},
                params=params, noise=noise, fisher=None, tensor_name=name,
            )
        shard.write(name, out)

    def _blockwise(self, name: str, params: dict) -> bool:
        """linear / TA / TIES (elementwise once TIES's thresholds are known) over plain safetensors
        checkpoints of float tensors: merged in blocks of rows through reused buffers."""
        return (self.method.name in ("linear", "task_arithmetic", "ties") and fusable(self.method.name, params)
                and len(self.base.shape(name)) >= 1
                and all(type(c) is Checkpoint and c.dtype(name).is_floating_point
                        for c in (self.base, *self.specialists)))

    def _thresholds(self, name: str, per_model: list[dict]) -> list[float | None]:
        """TIES's exact |d_i| threshold per specialist: one whole fp32 task vector at a time (in a
        reused buffer), built from blocks of rows."""
        out = []
        shape = self.base.shape(name)
        n = _numel(shape)
        for ckpt, pm in zip(self.specialists, per_model):
            density = float(pm.get("density", 1.0))
            if density >= 1:
                out.append(None)
                continue
            d = self._rows.whole(n)
            for a, b in self._rows.blocks(shape):
                lo, hi = a * _numel(shape[1:]), b * _numel(shape[1:])
                base = self._rows.fp32(0, hi - lo)
                self._rows.read(self.base, name, a, b, into=base)
                self._rows.read(ckpt, name, a, b, into=d[lo:hi])
                d[lo:hi].sub_(base)
            out.append(magnitude_threshold(d, density))
        return out


def _ties_thresholds(deltas: torch.Tensor, per_model: list[dict]) -> list[float | None]:
    densities = [float(pm.get("density", 1.0)) for pm in per_model]
    return [magnitude_threshold(deltas[i], d) if d < 1 else None for i, d in enumerate(densities)]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _RowReader:
    """Blocks of rows of plain safetensors checkpoints, read straight from the file into reused
    buffers (fresh multi-MB tensors cost page faults on every allocation: measured slower than
    the arithmetic), then widened to fp32 on the merge device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._raw = torch.empty(0, dtype=torch.uint8)
        self._fp32: dict[int, torch.Tensor] = {}
        self._whole = torch.empty(0, dtype=torch.float32, device=device)
        self._data_start: dict[Path, int] = {}

    @staticmethod
    def blocks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
        step = max(1, BLOCK_ELEMENTS // max(_numel(shape[1:]), 1))
        return [(a, min(shape[0], a + step)) for a in range(0, shape[0], step)] or [(0, 0)]

    def fp32(self, slot: int, n: int) -> torch.Tensor:
        """Flat fp32 buffer number `slot`, n entries (contents undefined)."""
        buf = self._fp32.get(slot)
        if buf is None or buf.numel() < n:
            buf = self._fp32[slot] = torch.empty(max(n, min(BLOCK_ELEMENTS, 1 << 20)), dtype=torch.float32,
                                                 device=self.device)
        return buf[:n]

    def whole(self, n: int) -> torch.Tensor:
        if self._whole.numel() < n:
            self._whole = torch.empty(0, dtype=torch.float32, device=self.device)  # free before growing
            self._whole = torch.empty(n, dtype=torch.float32, device=self.device)
        return self._whole[:n]

    def read(self, ckpt: Checkpoint, name: str, start: int, stop: int, *, into: torch.Tensor) -> None:
        """Rows [start, stop) of `name` widened into the flat fp32 `into`; NaN/Inf refused as `Checkpoint.read`."""
        file = ckpt.file_of(name)
        dtype, shape = ckpt.dtype(name), ckpt.shape(name)
        row_bytes = _numel(shape[1:]) * dtype.itemsize
        nbytes = (stop - start) * row_bytes
        if self._raw.numel() < nbytes:
            self._raw = torch.empty(0, dtype=torch.uint8)
            self._raw = torch.empty(nbytes, dtype=torch.uint8)
        raw = self._raw[:nbytes]
        begin = ckpt._entry(name)[1]["data_offsets"][0]
        try:
            with open(file, "rb", buffering=0) as f:
                if file not in self._data_start:
                    self._data_start[file] = 8 + int.from_bytes(f.read(8), "little")
                f.seek(self._data_start[file] + begin + start * row_bytes)
                view, got = memoryview(raw.numpy()), 0
                while got < nbytes:
                    step = f.readinto(view[got:])
                    if not step:
                        break
                    got += step
        except OSError as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {file}: {e}") from None
        if got != nbytes:
            raise CheckpointError(f"cannot read tensor {name!r} from {file}: the file is shorter than its header "
                                  "says (truncated?); re-download or re-save it")
        values = raw.view(dtype)
        if not all_finite(values):
            raise CheckpointError(f"tensor {name!r} in {file} holds {int((~torch.isfinite(values)).sum())} "
                                  f"NaN/Inf values (rows {start}-{stop - 1}); this checkpoint is broken "
                                  "(diverged training or a bad conversion)")
        into.copy_(values)


class _ShardFile:
    """A safetensors file laid out up front (header as `safetensors.torch.save_file` writes it:
    tensors by dtype size, then name; the JSON padded with spaces to 8 bytes), filled tensor by tensor."""

    def __init__(self, path: Path, tensors: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str]) -> None:
        self.path = path
        self.dtypes = {n: dt for n, (dt, _) in tensors.items()}
        order = sorted(tensors, key=lambda n: (-tensors[n][0].itemsize, n))
        header: dict[str, object] = {"__metadata__": dict(metadata)}
        self.offsets: dict[str, int] = {}
        pos = 0
        for n in order:
            dt, shape = tensors[n]
            size = _numel(shape) * dt.itemsize
            header[n] = {"dtype": _CODES[dt], "shape": list(shape), "data_offsets": [pos, pos + size]}
            self.offsets[n] = pos
            pos += size
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.size = self.data_start + pos
        self._head = len(raw).to_bytes(8, "little") + raw
        self._file = None
        self._cast = torch.empty(0, dtype=torch.uint8)

    def __enter__(self) -> "_ShardFile":
        self._file = open(self.path, "wb")
        self._file.write(self._head)
        self._file.truncate(self.size)
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def write(self, name: str, t: torch.Tensor, *, first_row: int = 0, row_numel: int = 0) -> None:
        """Write `t` (fp32, any device) cast to the tensor's dtype, from row `first_row` (rows of row_numel)."""
        dtype = self.dtypes[name]
        if t.dtype == dtype and t.device.type == "cpu":
            data = t.contiguous()
        else:
            if self._cast.numel() < t.numel() * dtype.itemsize:
                self._cast = torch.empty(0, dtype=torch.uint8)
                self._cast = torch.empty(t.numel() * dtype.itemsize, dtype=torch.uint8)
            data = self._cast[:t.numel() * dtype.itemsize].view(dtype).view(t.shape)
            data.copy_(t)  # the cast save_checkpoint does (.to(dtype)), into a reused buffer
        self._file.seek(self.data_start + self.offsets[name] + first_row * row_numel * dtype.itemsize)
        self._file.write(data.reshape(-1).view(torch.uint8).numpy().data)


def merge_to_dir(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    device: str = "auto",
    metadata: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    fisher: Mapping[str, str | Path] | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge `recipe` into the model directory `out_dir`, all or nothing: streamed, or by ResidentMerger
    for a method in RESIDENT. dtype: the output's (default the recipe's); metadata: safetensors
    header entries; files: {file name: text} written beside the weights (a model card, say);
    fisher: {model name: Fisher file} for method fisher. Everything is checked before the
    directory is staged beside out_dir (`files.staged_dir`); a failure leaves nothing."""
    out_dtype = dtype or recipe.dtype
    if out_dtype not in DTYPES:
        raise RecipeError(f"dtype {out_dtype!r} not supported; use one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir).expanduser()
    resident = resident_reason(recipe.method) is not None
    source = Checkpoint.open(resolve_model_path(recipe.base or recipe.models[0].path))
    check_output_dir(out_dir, source=source, overwrite=overwrite)
    if resident:
        merger = ResidentMerger(base=source.path, specialists={m.name: m.path for m in recipe.models},
                                device=device, dtype="float32", fisher=fisher)
        merger.apply(recipe)
    else:
        streamed = StreamedMerge(recipe, device=device)
    with staged_dir(out_dir, replace=overwrite) as tmp:
        if resident:
            from automerge.checkpoints import write_model_files

            write_model_files(merger.state_dict_iter(), tmp, source=merger.base_checkpoint,
                              dtype=DTYPES[out_dtype], metadata=metadata)
        else:
            streamed.write(tmp, dtype=out_dtype, metadata=metadata)
        for fname, text in (files or {}).items():
            (tmp / fname).write_text(text, encoding="utf-8")
    return out_dir


__all__ = ["BLOCK_ELEMENTS", "RESIDENT", "StreamedMerge", "merge_to_dir", "resident_reason"]
