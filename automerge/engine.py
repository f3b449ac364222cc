"""ResidentMerger: read base and specialists once, then merge into one live model per trial.

    merger = ResidentMerger(base="zoo:base", specialists={"code": "zoo:code", "lang": "zoo:lang"})
    merger.apply(recipe)        # rewrites merger.model's weights in place; no disk I/O
    evaluator.run(merger.model, ...)

What stays on the device between trials: the base tensors, the task vectors d_i = x_i - b
(stacked [k, *shape] per tensor), and statistics many trials reuse — magnitude thresholds
for TIES (exact selection, never a sort: one per density, or one histogram per fp16/bf16 task
vector that answers every density), the L1 norm of every task vector,
and the uniform noise that DARE/DELLA masks compare against (per recipe seed).

Loading reads every checkpoint tensor once, into its resident place (`automerge.resident`).
The hot methods (linear, task arithmetic, TIES, DARE) run as one fused pass over each tensor
in cache-sized chunks, writing straight into the live parameter; from a method's second apply
on, those and breadcrumbs/DELLA run as one compiled pass per tensor instead
(`methods._compiled`; eager when compilation is unavailable). Every other method calls its
pure function from `automerge.methods` on the whole tensor. All paths compute the same
numbers as `automerge.methods` (tested), so a recipe gives the same weights everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from automerge.checkpoints import Checkpoint, check_compatible, resolve_model_path, save_checkpoint
from automerge.errors import RecipeError
from automerge.layers import LayerGrouping
from automerge.methods import _compiled
from automerge.methods import (
    HALF_DTYPES,
    breadcrumbs_thresholds,
    della_rank_norm,
    MergeMethod,
    get_method,
    half_magnitude_at,
    half_magnitude_counts,
    magnitude_k,
    magnitude_threshold,
    random_noise,
)
from automerge.names import DTYPES as DTYPE_NAMES
from automerge.recipe import Recipe
from automerge.resident import empty_model, read_into
from automerge.specialists import LoraCheckpoint, open_specialist, task_vector

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Methods with a fused, chunked kernel below; the rest go through methods.merge_tensor.
FUSED = {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear"}
L1_EPS = 1e-7
# fp16/bf16 task vectors larger than this keep a magnitude histogram (128 KiB) that answers
# every TIES density; smaller ones select per density (cheap at that size).
HISTOGRAM_ABOVE = 1 << 18


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RecipeError(f"device {device!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RecipeError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          "use cuda:0 … or auto")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise RecipeError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    return dev


@dataclass
class _Tensor:
    """Everything resident for one checkpoint tensor."""

    name: str
    param: torch.Tensor  # the live model's tensor, written in place
    base: torch.Tensor  # [*shape] in the storage dtype
    deltas: torch.Tensor  # [k, *shape] task vectors in the storage dtype
    group: str = ""


class ResidentMerger:
    """Base and task vectors resident on the device; `apply` rewrites one live model in place."""

    def __init__(
        self,
        *,
        base: str | Path,
        specialists: Mapping[str, str | Path],
        device: str = "auto",
        dtype: str = "float32",
        fisher: Mapping[str, str | Path] | None = None,
        chunk_elements: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not specialists:
            raise RecipeError("ResidentMerger needs at least one specialist model")
        if dtype not in DTYPES:
            raise RecipeError(f"dtype {dtype!r} not supported; use one of {', '.join(DTYPES)}")
        self.device = pick_device(device)
        self.dtype = DTYPES[dtype]
        # Every check happens before any tensor data is read.
        self.base_checkpoint = Checkpoint.open(resolve_model_path(base))
        self.names = list(specialists)
        # A HF model dir, a PEFT LoRA adapter or a state-dict file (the latter two read against the base).
        self.checkpoints = [open_specialist(p, base=self.base_checkpoint) for p in specialists.values()]
        check_compatible(self.base_checkpoint, self.checkpoints)
        self.fisher_paths = {k: Path(v) for k, v in (fisher or {}).items()}
        # On a GPU one chunk is a whole tensor (kernel launches are the cost); on a CPU a chunk
        # fits in cache, so the fused kernel's intermediate passes never touch DRAM.
        self.chunk = chunk_elements or default_chunk(self.device)

        # Each checkpoint tensor is read once, into its resident place: the base into the live
        # parameter (then copied to the resident base), a specialist into the subtraction that
        # writes its task vector, in the resident dtype on the device (no fp32 model on the host).
        self.model = empty_model(self.base_checkpoint, self.dtype, self.device)
        filled = self.model is None
        if filled:  # renamed or unclaimed tensors: transformers knows the mapping
            self.model = AutoModelForCausalLM.from_pretrained(
                self.base_checkpoint.path, dtype=self.dtype, device_map=None
            ).to(self.device)
            self.model.eval()
            self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_checkpoint.path)

        live = self._live_tensors()
        self.tensors: list[_Tensor] = []
        with torch.no_grad():
            for name in self.base_checkpoint.names:
                param = live[name]
                if not filled:
                    read_into(param, self.base_checkpoint, name)
                base_t = param.detach().to(self.dtype).clone()
                deltas = torch.empty((len(self.checkpoints), *param.shape), dtype=self.dtype, device=self.device)
                for i, ckpt in enumerate(self.checkpoints):
                    if isinstance(ckpt, LoraCheckpoint):
                        deltas[i] = task_vector(ckpt, name, base_t).to(self.dtype)  # scale·B·A
                    else:  # x - b computed in fp32 (promotion), rounded once into the resident dtype
                        torch.sub(ckpt.read(name).to(self.device), base_t, out=deltas[i])
                self.tensors.append(_Tensor(name=name, param=param, base=base_t, deltas=deltas))
        self.num_layers = self.base_checkpoint.num_layers
        self._grouping: LayerGrouping | None = None
        self._thresholds: dict[tuple[int, int, int], float] = {}  # (tensor idx, specialist, k) -> |d| threshold
        self._magnitude_counts: dict[tuple[int, int], torch.Tensor] = {}  # (tensor idx, specialist) -> histogram
        self._l1: dict[int, torch.Tensor] = {}  # tensor idx -> ||d_i||_1 per specialist (fp32)
        self._noise_seed: int | None = None
        self._noise: dict[int, torch.Tensor] = {}
        self._fisher: dict[str, torch.Tensor] | None = None
        self._fisher_files: list[Path] | None = None  # the files self._fisher was read from
        self._buffers: _Scratch | None = None
        self._applies: dict[str, int] = {}  # method -> applies so far
        self._bands: dict[tuple[int, int, float, float], tuple[float, float] | None] = {}
        self._ranks: dict[int, torch.Tensor] = {}  # tensor idx -> DELLA rank norms [k, *shape]

    def _live_tensors(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensor name -> the live model's tensor holding it.

        Names usually agree; where transformers renames on load (GPT-NeoX's embed_out is
        lm_head in memory), the live tensor with the same shape and the same loaded values is it.
        """
        state = {k: v.data for k, v in self.model.state_dict(keep_vars=True).items()}
        names = self.base_checkpoint.names
        live = {n: state[n] for n in names if n in state}
        unclaimed = {k: v for k, v in state.items() if k not in live}
        for name in names:
            if name in live:
                continue
            stored = self.base_checkpoint.read(name, dtype=self.dtype, device=self.device)
            match = next((k for k, v in unclaimed.items() if v.shape == stored.shape and torch.equal(v, stored)), None)
            if match is None:
                raise RecipeError(
                    f"tensor {name} of {self.base_checkpoint.path} has no parameter in the loaded "
                    f"{type(self.model).__name__}; the checkpoint and its config.json disagree"
                )
            live[name] = unclaimed.pop(match)
        return live

    # -- public ----------------------------------------------------------------------------

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def grouping(self, recipe: Recipe) -> LayerGrouping:
        return recipe.grouping(self.num_layers)

    def apply(self, recipe: Recipe) -> None:
        """Write recipe's merge into self.model. Validates everything before touching a weight."""
        method = get_method(recipe.method)
        order = self._specialist_order(recipe)
        grouping = self.grouping(recipe)
        recipe.validate_for(grouping)
        resolved = {g: self._checked(method, recipe, g) for g in recipe.groups(grouping)}
        if method.random:
            self._ensure_noise(recipe.seed)
        fisher = self._ensure_fisher(recipe) if method.name == "fisher" else None
        # Compiled from a method's second apply on: a one-off merge never pays the compile.
        self._applies[method.name] = uses = self._applies.get(method.name, 0) + 1
        with torch.no_grad():
            for idx, t in enumerate(self.tensors):
                params, per_model = resolved[recipe.tensor_group(t.name, grouping)]
                per_model = [per_model[j] for j in order]
                can_fuse = fusable(method.name, params)
                # Small tensors stay eager where an eager fused kernel exists: a compiled call's
                # fixed cost (~0.1 ms) is more than that kernel's few ops on them.
                compile_it = uses > 1 and (t.base.numel() >= _compiled.SMALL or not can_fuse)
                plan = _compiled.plan_for(method.name, len(order), params) if compile_it else None
                if plan is not None and self._compiled_pass(idx, t, method.name, plan, params, per_model):
                    continue
                if can_fuse:
                    self._fused(idx, t, method.name, params, per_model)
                else:
                    self._reference(idx, t, method, params, per_model, fisher)

    def state_dict_iter(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Merged tensors under their checkpoint names, on the CPU (for saving)."""
        for t in self.tensors:
            yield t.name, t.param.detach().to("cpu")

    def save(self, out_dir: str | Path, *, dtype: str | None = None, metadata: Mapping[str, str] | None = None,
             overwrite: bool = False) -> Path:
        return save_checkpoint(
            self.state_dict_iter(), out_dir, source=self.base_checkpoint,
            dtype=DTYPES[dtype] if dtype else None, metadata=metadata, overwrite=overwrite,
        )

    # -- validation ------------------------------------------------------------------------

    def _specialist_order(self, recipe: Recipe) -> list[int]:
        """Index of each loaded specialist in recipe.models (the recipe may list them in any order)."""
        names = [m.name for m in recipe.models]
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise RecipeError(
                f"recipe names model(s) {', '.join(unknown)} that are not loaded; loaded specialists: "
                f"{', '.join(self.names)}"
            )
        missing = [n for n in self.names if n not in names]
        if missing:
            raise RecipeError(
                f"recipe gives no parameters for loaded specialist(s) {', '.join(missing)}; "
                "list every specialist (use weight 0 to leave one out)"
            )
        return [names.index(n) for n in self.names]

    @staticmethod
    def _checked(method: MergeMethod, recipe: Recipe, group: str) -> tuple[dict, list[dict]]:
        params, per_model = recipe.resolve_group(group)
        return method.check_params(params, per_model)

    # -- caches ----------------------------------------------------------------------------

    def _ensure_noise(self, seed: int) -> None:
        if self._noise_seed != seed:
            self._noise = {}
            self._noise_seed = seed

    def _noise_for(self, idx: int, t: _Tensor) -> torch.Tensor:
        noise = self._noise.get(idx)
        if noise is None:
            noise = random_noise(tuple(t.deltas.shape), seed=self._noise_seed, tensor_name=t.name).to(self.device)
            self._noise[idx] = noise
        return noise

    def _l1_norms(self, idx: int, t: _Tensor) -> torch.Tensor:
        norms = self._l1.get(idx)
        if norms is None:
            norms = t.deltas.float().abs().flatten(1).sum(1)
            self._l1[idx] = norms
        return norms

    def _threshold(self, idx: int, t: _Tensor, i: int, density: float) -> float:
        """|d| threshold keeping the int(density*n) largest entries of specialist i's task vector.

        Exact selection, memoised per (tensor, specialist, k): fp16/bf16 task vectors keep one
        cumulative histogram of their 2^15 magnitudes, so every later density is a lookup; fp32
        ones pay one O(n) radix selection per new k (`methods.smallest_magnitudes`). No sort.
        """
        d = t.deltas[i]
        n = d.numel()
        k = magnitude_k(n, density)
        key = (idx, i, k)
        thr = self._thresholds.get(key)
        if thr is None:
            if d.dtype in HALF_DTYPES and 0 < k < n and n > HISTOGRAM_ABOVE:
                counts = self._magnitude_counts.get((idx, i))
                if counts is None:
                    counts = self._magnitude_counts[(idx, i)] = half_magnitude_counts(d)
                thr = half_magnitude_at(counts, d.dtype, [n - k + 1])[0]
            else:
                thr = magnitude_threshold(d, density)
            self._thresholds[key] = thr
        return thr

    def _ensure_fisher(self, recipe: Recipe) -> dict[str, torch.Tensor]:
        """Stacked Fisher per tensor: the constructor's files first, else the recipe's `fisher:`
        entries (data estimated once, cached: `automerge.fisher.resolve_fisher`). Re-read only
        when the files change."""
        from automerge.fisher import load_fisher, resolve_fisher

        if all(n in self.fisher_paths for n in self.names):
            files = [self.fisher_paths[n] for n in self.names]
        else:
            resolved = resolve_fisher(recipe, given=self.fisher_paths, names=self.names, device=str(self.device),
                                      where="the recipe (Python: or ResidentMerger(fisher={name: FILE}))")
            files = [resolved[n] for n in self.names]
        if self._fisher is None or self._fisher_files != files:
            self._fisher = None  # free the old estimates before reading new ones
            per_model = [load_fisher(f) for f in files]
            for f, est in zip(files, per_model):
                absent = [t.name for t in self.tensors if t.name not in est]
                if absent:
                    raise RecipeError(f"Fisher file {f} has no tensor {absent[0]} ({len(absent)} missing): it was "
                                      "estimated for another model; estimate it again with `automerge fisher`")
            self._fisher = {
                t.name: torch.stack([f[t.name].to(self.device, torch.float32) for f in per_model])
                for t in self.tensors
            }
            self._fisher_files = files
        return self._fisher

    # -- merging ---------------------------------------------------------------------------

    def _reference(self, idx: int, t: _Tensor, method: MergeMethod, params: dict, per_model: list[dict],
                   fisher: dict[str, torch.Tensor] | None) -> None:
        merged = method.merge_tensor(
            t.base.float(),
            t.deltas.float(),
            per_model={key: [pm[key] for pm in per_model] for key in per_model[0]} if per_model else {},
            params=params,
            noise=self._noise_for(idx, t) if method.random else None,
            fisher=fisher[t.name] if fisher is not None else None,
            tensor_name=t.name,
        )
        t.param.copy_(merged)

    def _fused(self, idx: int, t: _Tensor, method: str, params: dict, per_model: list[dict]) -> None:
        """`fused_merge` on one resident tensor, with this merger's cached statistics."""
        k = t.deltas.shape[0]
        densities = [float(pm.get("density", 1.0)) for pm in per_model]
        thresholds = noise_rows = l1_norms = None
        if method == "ties":
            thresholds = [self._threshold(idx, t, i, d) if d < 1 else None for i, d in enumerate(densities)]
        elif method not in ("linear", "task_arithmetic"):  # dare_*
            noise = self._noise_for(idx, t)
            noise_rows = [noise[i].view(-1) for i in range(k)]
            if bool(params.get("rescale", True)):
                l1_norms = self._l1_norms(idx, t).tolist()
        fused_merge(t.param.view(-1), t.base.view(-1), [t.deltas[i].view(-1) for i in range(k)], method, params,
                    per_model, chunk=self.chunk, scratch=self._scratch, thresholds=thresholds,
                    noise_rows=noise_rows, l1_norms=l1_norms)

    def _compiled_pass(self, idx: int, t: _Tensor, method: str, plan: _compiled.Plan, params: dict,
                       per_model: list[dict]) -> bool:
        """The method as one compiled pass (`methods._compiled`); False when compilation is off or
        failed (said once), and the eager kernels run instead. Same rules as `_fused`."""
        merge = _compiled.compiled(_compiled.merge_pass, plan, self.device)
        if merge is None:
            return False
        k = plan.k
        weights = [float(pm["weight"]) for pm in per_model]
        densities = [float(pm.get("density", 1.0)) for pm in per_model]
        lam, normalize = float(params.get("lambda", 1.0)), bool(params.get("normalize", False))
        a, b, noise, rank = [0.0] * k, [0.0] * k, None, None
        if plan.keep == _compiled.KEEP_MAGNITUDE:
            a = [self._threshold(idx, t, i, d) if d < 1 else 0.0 for i, d in enumerate(densities)]
        elif plan.keep == _compiled.KEEP_BAND:
            for i, d in enumerate(densities):
                band = (0.0, float("inf")) if d >= 1 else self._band(idx, t, i, d, float(per_model[i]["gamma"]))
                a[i], b[i] = band or (float("inf"), 0.0)  # None: nothing kept
        elif plan.keep in (_compiled.KEEP_NOISE, _compiled.KEEP_RANKED):
            noise = self._noise_for(idx, t).view(k, -1)
            a = list(densities)
            if plan.keep == _compiled.KEEP_RANKED:
                rank = self._rank_norms(idx, t).view(k, -1)
                eps = [float(pm["epsilon"]) for pm in per_model]
                a = [1.0 if d >= 1 else d - e for d, e in zip(densities, eps)]
                b = [0.0 if d >= 1 else 2 * e for d, e in zip(densities, eps)]
        out, base, deltas = t.param.view(-1), t.base.view(-1), t.deltas.view(k, -1)
        div_weights, signs = list(weights), [1.0 if w > 0 else -1.0 for w in weights]
        total = sum(weights)
        if plan.combine == "linear":  # linear and task arithmetic: the eager kernel's coefficients
            if method == "linear":
                scale = 1.0 / total if normalize else 1.0
                divisor, weights, lam = total * scale, [w * scale for w in weights], 1.0
            else:
                norm = total if normalize and abs(total) >= 1e-8 else 1.0
                divisor, weights = 1.0, [w * lam / norm for w in weights]
        else:
            divisor = total if normalize and abs(total) >= 1e-8 else 1.0
        try:
            if params.get("rescale") and plan.keep != _compiled.KEEP_ALL:
                s = _compiled.scalars(weights=weights, signs=signs, div_weights=div_weights, a=a, b=b, lam=lam,
                                      divisor=divisor, device=self.device)
                kept = _compiled.compiled(_compiled.kept_l1, plan, self.device)(deltas, noise, rank, s).tolist()
                before = self._l1_norms(idx, t).tolist()
                weights = [w * (bb / aa) if d < 1 and aa >= L1_EPS and bb >= L1_EPS else w
                           for w, bb, aa, d in zip(weights, before, kept, densities)]
            s = _compiled.scalars(weights=weights, signs=signs, div_weights=div_weights if normalize else [0.0] * k,
                                  a=a, b=b, lam=lam, divisor=divisor, device=self.device)
            merge(out, base, deltas, noise, rank, s)
        except Exception as exc:  # noqa: BLE001 - a compiler failure shows on first use
            _compiled.disable(exc, plan, self.device)
            return False
        return True

    def _band(self, idx: int, t: _Tensor, i: int, density: float, gamma: float) -> tuple[float, float] | None:
        key = (idx, i, density, gamma)
        if key not in self._bands:
            self._bands[key] = breadcrumbs_thresholds(t.deltas[i], density=density, gamma=gamma)
        return self._bands[key]

    def _rank_norms(self, idx: int, t: _Tensor) -> torch.Tensor:
        ranks = self._ranks.get(idx)
        if ranks is None:
            ranks = self._ranks[idx] = torch.stack([della_rank_norm(d.float().abs()) for d in t.deltas])
        return ranks

    def _scratch(self, k: int, size: int) -> "_Scratch":
        """Chunk-sized fp32 buffers reused by every tensor and trial (the bounded scratch)."""
        if self._buffers is None or len(self._buffers.u) < k or self._buffers.keep.numel() < size:
            size = max(size, self._buffers.keep.numel() if self._buffers else 0)
            new = lambda: torch.empty(size, dtype=torch.float32, device=self.device)  # noqa: E731
            self._buffers = _Scratch(u=[new() for _ in range(k)], keep=new(), tmp=new(), mixed=new(),
                                     div=new(), sign=new())
        return self._buffers


def fused_merge(
    out: torch.Tensor,
    base: torch.Tensor,
    rows: list[torch.Tensor],
    method: str,
    params: Mapping,
    per_model: list[dict],
    *,
    chunk: int,
    scratch: Callable[[int, int], "_Scratch"],
    thresholds: list[float | None] | None = None,
    noise_rows: list[torch.Tensor] | None = None,
    l1_norms: list[float] | None = None,
) -> None:
    """The hot methods as a few elementwise passes per cache-sized chunk, straight into `out`.

    out, base and rows (one task vector per specialist) are flat views of one tensor; `method`
    passes `fusable`. ties needs `thresholds` (the |d| threshold per specialist, None where
    density >= 1); dare_* needs `noise_rows` and, when rescaling, `l1_norms` (||d_i||_1).
    `scratch(k, size)` returns chunk-sized fp32 buffers.

    Written without boolean tensors or strided views: on CPUs both run many times slower
    than float ops on contiguous rows (measured), so masks are 0/1 floats written by
    comparisons into scratch buffers, and each specialist's row is processed on its own.
    """
    k = len(rows)
    weights = [float(pm["weight"]) for pm in per_model]
    lam = float(params.get("lambda", 1.0))
    normalize = bool(params.get("normalize", False))
    if method in ("linear", "task_arithmetic"):
        _weighted_sum(out, base, rows, method, weights, lam, normalize, chunk)
        return

    n = out.numel()
    densities = [float(pm.get("density", 1.0)) for pm in per_model]
    div_weights = list(weights)  # mergekit divides by the weights, not by the L1-rescaled ones
    buf = scratch(k, min(chunk, n))
    if method != "ties" and bool(params.get("rescale", True)):
        weights = _dare_rescaled(weights, rows, densities, noise_rows, l1_norms, buf, chunk)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        c = e - s
        u = [x[:c] for x in buf.u]
        # u_i = sparsify(d_i), unweighted; weights enter below as scalars
        for i in range(k):
            _sparsify_rows(u[i], rows[i][s:e], densities[i], method,
                           thresholds[i] if method == "ties" else None,
                           None if method == "ties" else noise_rows[i][s:e], buf.keep[:c], buf.tmp[:c])
        if method in ("ties", "dare_ties"):
            mixed = _sign_consensus(u, weights, div_weights, normalize, buf, c)
        else:
            mixed = buf.mixed[:c]
            torch.mul(u[0], weights[0], out=mixed)
            for i in range(1, k):
                mixed.add_(u[i], alpha=weights[i])
            if normalize:
                total = sum(div_weights)
                mixed.div_(1.0 if abs(total) < 1e-8 else total)
        torch.add(base[s:e], mixed, alpha=lam, out=out[s:e])


def _weighted_sum(out: torch.Tensor, base: torch.Tensor, rows: list[torch.Tensor], method: str,
                  weights: list[float], lam: float, normalize: bool, chunk: int) -> None:
    """linear and task arithmetic: out = c*b + sum_i c_i d_i, chunk by chunk."""
    total = sum(weights)
    if method == "linear":
        # sum_i w_i x_i (/ sum_i w_i) = c*b + sum_i c_i d_i
        scale = 1.0 / total if normalize else 1.0
        base_coef, coef = total * scale, [w * scale for w in weights]
    else:
        divisor = total if normalize and abs(total) >= 1e-8 else 1.0
        base_coef, coef = 1.0, [w * lam / divisor for w in weights]
    n = out.numel()
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        o = out[s:e]
        if base_coef == 1.0:
            torch.add(base[s:e], rows[0][s:e], alpha=coef[0], out=o)
        else:
            torch.mul(base[s:e], base_coef, out=o)
            o.add_(rows[0][s:e], alpha=coef[0])
        for i in range(1, len(rows)):
            o.add_(rows[i][s:e], alpha=coef[i])


def _dare_rescaled(weights: list[float], rows: list[torch.Tensor], densities: list[float],
                   noise_rows: list[torch.Tensor], l1_norms: list[float], buf: "_Scratch", chunk: int) -> list[float]:
    """DARE's L1 rescale folded into the weights: w_i * ||d_i||_1 / ||kept d_i||_1 (a first pass:
    the kept norm is known only after every chunk's mask)."""
    n = rows[0].numel()
    kept = [0.0] * len(rows)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        c = e - s
        for i in range(len(rows)):
            if densities[i] >= 1:
                continue
            torch.lt(noise_rows[i][s:e], densities[i], out=buf.keep[:c])
            buf.tmp[:c].copy_(rows[i][s:e]).abs_()  # fp32 scratch from any storage dtype
            kept[i] += float(torch.dot(buf.tmp[:c], buf.keep[:c]))
    return [w * (b / a) if d < 1 and a >= L1_EPS and b >= L1_EPS else w
            for w, b, a, d in zip(weights, l1_norms, kept, densities)]


def _sparsify_rows(u: torch.Tensor, d: torch.Tensor, density: float, method: str, threshold: float | None,
                   noise: torch.Tensor | None, keep: torch.Tensor, tmp: torch.Tensor) -> None:
    """u = d where kept, else 0: TIES keeps |d| >= threshold, DARE keeps noise < density."""
    if density >= 1:
        u.copy_(d)
        return
    if method == "ties":
        tmp.copy_(d).abs_()  # abs(out=) refuses an fp32 out for bf16/fp16 storage
        torch.ge(tmp, threshold, out=keep)
    else:
        torch.lt(noise, density, out=keep)
    torch.mul(d, keep, out=u)


def _sign_consensus(u: list[torch.Tensor], weights: list[float], div_weights: list[float], normalize: bool,
                    buf: "_Scratch", c: int) -> torch.Tensor:
    """TIES' sign election and disjoint merge of one chunk, into buf.mixed[:c].

    Elected sign S = +1 where sum_i w_i u_i >= 0 else -1; entry i counts where w_i u_i S > 0.
    Each product is rounded before the sum, as methods' reference: add_(alpha=) may fuse into an
    FMA, and then exact cancellations (frequent in bf16 task vectors) elect -1."""
    keep, tmp, mixed, div, sign = buf.keep[:c], buf.tmp[:c], buf.mixed[:c], buf.div[:c], buf.sign[:c]
    torch.mul(u[0], weights[0], out=mixed)
    for i in range(1, len(u)):
        torch.mul(u[i], weights[i], out=tmp)
        mixed.add_(tmp)
    torch.ge(mixed, 0, out=sign)
    sign.mul_(2).sub_(1)
    mixed.zero_()
    div.zero_()
    for i in range(len(u)):
        torch.mul(u[i], sign, out=tmp)
        (torch.gt if weights[i] > 0 else torch.lt)(tmp, 0, out=keep)
        mixed.addcmul_(u[i], keep, value=weights[i])
        if normalize:
            div.add_(keep, alpha=div_weights[i])
    if normalize:
        if all(w > 0 for w in div_weights):
            div.clamp_min_(min(div_weights))  # 0 only where mixed is 0 too: mergekit's 0 -> 1
        else:
            torch.eq(div, 0, out=keep)
            div.add_(keep)
        mixed.div_(div)
    return mixed


@dataclass
class _Scratch:
    u: list[torch.Tensor]
    keep: torch.Tensor
    tmp: torch.Tensor
    mixed: torch.Tensor
    div: torch.Tensor
    sign: torch.Tensor


def default_chunk(device: torch.device) -> int:
    """Elements per fused-kernel chunk: cache-sized on a CPU, large on a GPU. DARE's L1 sums are
    accumulated per chunk, so the streamed and resident merges must use the same rule."""
    return 1 << 26 if device.type == "cuda" else 1 << 16


def fusable(method: str, params: Mapping) -> bool:
    """Whether the fused kernel covers this method with these (default-filled) parameters."""
    if method not in FUSED:
        return False
    if method == "ties" and params.get("rescale"):
        return False
    if method.startswith("dare") and params.get("rescale") and params.get("rescale_mode") != "l1":
        return False
    return True
