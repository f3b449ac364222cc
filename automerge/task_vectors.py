"""Task-vector analysis: how each specialist moved the base's weights, and where they collide.

    a = analyze_task_vectors("zoo:base", {"code": "zoo:code", "lang": "zoo:lang"})
    a.table            # one row per (layer, kind, pair): norms, cosine, sign conflicts, mask overlap
    a.advice()         # what the figures suggest for the search space, in sentences

A *unit* is one layer (``embed``, ``0`` … ``L-1``, ``head``) and one tensor kind (``embed``,
``attn``, ``mlp``, ``head``; see `automerge.layers.tensor_role`); rows with layer ``all`` sum a
kind over every layer. Per unit, from the task vectors d_i = x_i − b of its tensors:

- ``norm_a``, ``norm_b``: ‖d_i‖₂ over the unit's entries, for the pair ``a|b``;
- ``cosine``: d_i·d_j / (‖d_i‖‖d_j‖);
- ``conflict@ρ``: TIES at density ρ keeps, per tensor, the entries with |d_i| ≥ the k-th largest
  (k = int(ρ·n), as `automerge.methods.magnitude_threshold`); among the nonzero entries both i and j
  keep, the fraction whose signs differ (what TIES' sign election has to throw away);
- ``overlap@ρ``: |K_i ∩ K_j| / |K_i ∪ K_j| of those kept masks (Jaccard; 0 = disjoint top-k).

It streams: one tensor's task vectors are in memory at a time (only sums are kept), so a 7B pair
needs a few GB of host memory (the largest tensor, the embedding, times the number of models).
Specialists may be HF dirs, LoRA adapters or state-dict files (`automerge.specialists`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from automerge.checkpoints import Checkpoint, check_compatible, resolve_model_path
from automerge.errors import AutomergeError
from automerge.layers import layer_index, tensor_role
from automerge.methods import magnitude_threshold
from automerge.specialists import open_specialist, task_vector

DENSITIES = (0.2, 0.5, 0.8)
KINDS = ("embed", "attn", "mlp", "head")


class AnalysisError(AutomergeError):
    """The analysis cannot run (fewer than two specialists, bad densities, ...)."""


@dataclass
class _Sums:
    """Running sums of one unit (everything the figures need, nothing per entry)."""

    n: int = 0
    tensors: int = 0
    sq: dict[int, float] = field(default_factory=dict)  # specialist -> Σ d²
    dot: dict[tuple[int, int], float] = field(default_factory=dict)  # pair -> Σ d_i d_j
    both: dict[tuple[int, int, float], int] = field(default_factory=dict)  # pair, ρ -> |K_i ∩ K_j| (nonzero)
    differ: dict[tuple[int, int, float], int] = field(default_factory=dict)  # ... of which signs differ
    union: dict[tuple[int, int, float], int] = field(default_factory=dict)  # |K_i ∪ K_j|

    def add(self, other: "_Sums") -> None:
        self.n += other.n
        self.tensors += other.tensors
        for mine, theirs in ((self.sq, other.sq), (self.dot, other.dot), (self.both, other.both),
                             (self.differ, other.differ), (self.union, other.union)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


def unit_of(tensor_name: str) -> tuple[str, str]:
    """(layer, kind) of a tensor: ("3", "attn"), ("embed", "embed"), ("head", "head")."""
    i = layer_index(tensor_name)
    kind = tensor_role(tensor_name)
    return (str(i) if i is not None else kind), kind


def _tensor_sums(deltas: torch.Tensor, densities: Sequence[float]) -> _Sums:
    """The sums of one tensor's stacked task vectors [k, n] (fp32)."""
    k = deltas.shape[0]
    s = _Sums(n=deltas.shape[1], tensors=1)
    for i in range(k):
        s.sq[i] = float(torch.dot(deltas[i], deltas[i]))
    kept = {}
    for i in range(k):
        a = deltas[i].abs()
        for rho in densities:
            kept[i, rho] = (a >= magnitude_threshold(a, rho)) & (a > 0)
    sign = torch.sign(deltas)
    for i, j in itertools.combinations(range(k), 2):
        s.dot[i, j] = float(torch.dot(deltas[i], deltas[j]))
        for rho in densities:
            both = kept[i, rho] & kept[j, rho]
            s.both[i, j, rho] = int(both.sum())
            s.differ[i, j, rho] = int((both & (sign[i] != sign[j])).sum())
            s.union[i, j, rho] = int((kept[i, rho] | kept[j, rho]).sum())
    return s


@dataclass
class TaskVectorAnalysis:
    names: list[str]
    densities: tuple[float, ...]
    num_layers: int
    units: dict[tuple[str, str], _Sums]  # in model order

    # -- figures ------------------------------------------------------------------------

    @property
    def table(self):
        """pandas DataFrame: one row per (layer, kind, pair), then the per-kind `all` rows."""
        import pandas as pd

        rows = []
        totals: dict[str, _Sums] = {}
        for (layer, kind), s in self.units.items():
            totals.setdefault(kind, _Sums()).add(s)
        everything = _Sums()
        for s in totals.values():
            everything.add(s)
        entries = [*self.units.items(), *((("all", kind), s) for kind, s in totals.items()),
                   (("all", "all"), everything)]
        for (layer, kind), s in entries:
            for i, j in itertools.combinations(range(len(self.names)), 2):
                ni, nj = math.sqrt(s.sq.get(i, 0.0)), math.sqrt(s.sq.get(j, 0.0))
                row = {"layer": layer, "kind": kind, "pair": f"{self.names[i]}|{self.names[j]}",
                       "params": s.n, "tensors": s.tensors,
                       "norm_a": ni, "norm_b": nj,
                       "cosine": s.dot.get((i, j), 0.0) / (ni * nj) if ni > 0 and nj > 0 else math.nan}
                for rho in self.densities:
                    both, union = s.both.get((i, j, rho), 0), s.union.get((i, j, rho), 0)
                    row[f"conflict@{rho:g}"] = s.differ.get((i, j, rho), 0) / both if both else math.nan
                    row[f"overlap@{rho:g}"] = both / union if union else math.nan
                rows.append(row)
        return pd.DataFrame(rows)

    def norms(self):
        """pandas DataFrame: ‖d_i‖ per unit (rows) and specialist (columns)."""
        import pandas as pd

        return pd.DataFrame([{"layer": layer, "kind": kind,
                              **{n: math.sqrt(s.sq.get(i, 0.0)) for i, n in enumerate(self.names)}}
                             for (layer, kind), s in self.units.items()])

    # -- advice -------------------------------------------------------------------------

    def advice(self) -> list[str]:
        """What the figures suggest for the search space: one sentence per finding, strongest first."""
        t = self.table
        rho = 0.5 if 0.5 in self.densities else self.densities[len(self.densities) // 2]
        col = f"conflict@{rho:g}"
        out: list[str] = []
        overall = t[(t.layer == "all") & (t.kind == "all")]
        blocks = t[~t.layer.isin(["all", "embed", "head"])].copy()
        if not blocks.empty and self.num_layers >= 3:
            blocks["third"] = [("first", "middle", "last")[min(2, int(layer) * 3 // self.num_layers)]
                               for layer in blocks.layer]
            # conflicts weighted by the kept entries they are rates of: sum the counts back
            blocks["kept"] = blocks.apply(lambda r: self._both(r, rho), axis=1)
            blocks["differ"] = blocks[col].fillna(0) * blocks["kept"]
            g = blocks.groupby(["third", "kind"])[["differ", "kept"]].sum()
            g = g[g.kept > 0]
            if not g.empty:
                rates = g.differ / g.kept
                (third, kind), worst = rates.idxmax(), float(rates.max())
                mean = float(g.differ.sum() / g.kept.sum())
                what = {"attn": "attention", "mlp": "MLP"}[kind]
                if worst >= 1.15 * mean and worst - mean >= 0.02:
                    out.append(f"{what} task vectors conflict most in the {third} third of the layers "
                               f"({worst:.0%} of the entries TIES keeps at density {rho:g} disagree in sign, "
                               f"vs {mean:.0%} overall): use per-group densities (density: {{per_group: true}}, "
                               "layer_groups: {num_groups: 3, split_attn_mlp: true}).")
                else:
                    out.append(f"sign conflicts are even across layers and kinds ({mean:.0%} at density {rho:g}, "
                               f"at most {worst:.0%} in the {third} third's {what}): one density per specialist "
                               "is enough; per-group densities add search dimensions for little.")
        for _, r in overall.iterrows():
            a, b = r.pair.split("|")
            cos = r.cosine
            if cos == cos:  # not NaN
                if cos >= 0.3:
                    out.append(f"{a} and {b} moved the weights in similar directions (cosine {cos:.2f}): "
                               "their task vectors add up; keep the weight sum near 1 (linear, or "
                               "task_arithmetic with weights ≤ 1).")
                elif abs(cos) < 0.1:
                    out.append(f"{a} and {b} are nearly orthogonal (cosine {cos:+.2f}): task arithmetic with "
                               "weights near 1 adds both behaviours with little interference; search weights "
                               "in [0.5, 1.5].")
                elif cos <= -0.1:
                    out.append(f"{a} and {b} pull against each other (cosine {cos:+.2f}): expect a trade-off "
                               "front; TIES/DARE (sign election, sparsity) over plain task arithmetic.")
            na, nb = r["norm_a"], r["norm_b"]
            if min(na, nb) > 0 and max(na, nb) / min(na, nb) >= 2:
                big, small = (a, b) if na > nb else (b, a)
                out.append(f"{big}'s task vector is {max(na, nb) / min(na, nb):.1f}× {small}'s: equal weights "
                           f"let {big} dominate; search {small}'s weight over a wider range (up to "
                           f"{min(3.0, max(na, nb) / min(na, nb)):.1f}).")
            low = r[f"overlap@{self.densities[0]:g}"]
            if low == low and low < 0.1:
                out.append(f"at density {self.densities[0]:g} the top entries of {a} and {b} barely overlap "
                           f"(Jaccard {low:.2f}): sparse merges (TIES/DARE at low density) keep both with few "
                           "collisions.")
        return out

    def _both(self, row, rho: float) -> int:
        i, j = (self.names.index(n) for n in row.pair.split("|"))
        return self.units[(row.layer, row.kind)].both.get((i, j, rho), 0)

    # -- output -------------------------------------------------------------------------

    def plot(self, path: str | Path, *, density: float | None = None) -> Path:
        """A PNG of heatmaps (layer × kind): each task vector's norm, then per pair the cosine, the
        sign-conflict rate and the top-k overlap at `density` (default 0.5)."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from automerge.files import atomic_path

        rho = density if density is not None else (0.5 if 0.5 in self.densities else self.densities[0])
        t = self.table
        layers = ["embed", *[str(i) for i in range(self.num_layers)], "head"]
        kinds = [k for k in KINDS if any(kind == k for _, kind in self.units)]
        pairs = list(dict.fromkeys(t.pair))
        panels: list[tuple[str, Callable[[str, str], float], str, tuple[float, float] | None]] = []
        nt = self.norms().set_index(["layer", "kind"])
        for n in self.names:
            panels.append((f"‖d‖ {n}", lambda l, k, n=n: nt[n].get((l, k), math.nan), "viridis", None))
        ti = t.set_index(["layer", "kind", "pair"])
        for p in pairs:
            for metric, cmap, lim in (("cosine", "coolwarm", (-1, 1)), (f"conflict@{rho:g}", "magma", (0, 1)),
                                      (f"overlap@{rho:g}", "cividis", (0, 1))):
                panels.append((f"{metric} {p}", lambda l, k, p=p, m=metric: ti[m].get((l, k, p), math.nan), cmap,
                               lim))
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig = Figure(figsize=(4.2 * cols, 0.28 * len(layers) * rows + 1.2 * rows), dpi=100)
        FigureCanvasAgg(fig)
        for idx, (title, value, cmap, lim) in enumerate(panels):
            ax = fig.add_subplot(rows, cols, idx + 1)
            grid = np.array([[value(layer, kind) for kind in kinds] for layer in layers], dtype=float)
            kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
            im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, **kw)
            for y, x in zip(*np.nonzero(np.isfinite(grid))):
                ax.text(x, y, f"{grid[y, x]:.2f}", ha="center", va="center", fontsize=6, color="white",
                        path_effects=[_outline()])
            ax.set_xticks(range(len(kinds)), kinds)
            ax.set_yticks(range(len(layers)), layers)
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.05)
        fig.suptitle(f"task vectors vs the base: {', '.join(self.names)}", fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return Path(path)


def _outline():
    from matplotlib import patheffects

    return patheffects.withStroke(linewidth=1.5, foreground="black")


def analyze_task_vectors(
    base: str | Path,
    specialists: Mapping[str, str | Path],
    *,
    densities: Sequence[float] = DENSITIES,
    device: str = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
) -> TaskVectorAnalysis:
    """Stream every tensor's task vectors once and sum the figures per (layer, kind) unit."""
    if len(specialists) < 2:
        raise AnalysisError(f"the analysis compares task vectors: give at least two specialists "
                            f"(got {len(specialists)})")
    bad = [d for d in densities if not 0 < d < 1]
    if bad or not densities:
        raise AnalysisError(f"densities must lie in (0, 1), got {list(densities)}")
    densities = tuple(sorted(set(float(d) for d in densities)))
    b = Checkpoint.open(resolve_model_path(base))
    ckpts = [open_specialist(p, base=b) for p in specialists.values()]
    check_compatible(b, ckpts)
    units: dict[tuple[str, str], _Sums] = {}
    order = sorted(b.names, key=lambda n: (-1 if unit_of(n)[1] == "embed" else
                                           1 << 30 if unit_of(n)[1] == "head" else layer_index(n) or 0))
    floats = [n for n in order if b.dtype(n).is_floating_point]
    for step, name in enumerate(floats):
        x = b.read(name, dtype=torch.float32, device=device)
        deltas = torch.stack([task_vector(c, name, x).reshape(-1) for c in ckpts])
        units.setdefault(unit_of(name), _Sums()).add(_tensor_sums(deltas, densities))
        del x, deltas
        if progress is not None:
            progress(step + 1, len(floats), name)
    return TaskVectorAnalysis(names=list(specialists), densities=densities, num_layers=b.num_layers, units=units)
