"""Helpers (imported by the tests here) for comparing automerge.methods with mergekit's own tensor-level code, in-process."""

from __future__ import annotations

import torch


def mergekit_merge(name: str, base: torch.Tensor | None, xs: list[torch.Tensor], parameters: dict) -> torch.Tensor:
    """Run mergekit's registered method `name` on one tensor group (xs, then the base, as
    run_merge orders them when base_model is not among the models; base None: no base)."""
    from mergekit.merge_methods.base import TensorGroup
    from mergekit.merge_methods.registry import get

    if name == "linear" or base is None:  # mergekit's linear ignores the base: average the listed models only
        group = TensorGroup.from_tensors(list(xs))
    else:
        group = TensorGroup.from_tensors([*xs, base], base_index=len(xs))
    return get(name)([group], parameters=parameters)[0]


def rel_err(ours: torch.Tensor, ref: torch.Tensor, base: torch.Tensor) -> float:
    """Max error of the merged change, relative to the reference change (stricter than on weights)."""
    change = (ref - base).abs().max().clamp_min(1e-12)
    return ((ours - ref).abs().max() / change).item()


def make_inputs(shape, k: int, seed: int, scale: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = [base + scale * torch.randn(shape, generator=g) for _ in range(k)]
    deltas = torch.stack([x - base for x in xs])
    return base, xs, deltas


class PatchedBernoulli:
    """Make mergekit's torch.bernoulli draw `noise[i] < p` for its i-th call, so a
    random mergekit merge uses exactly the mask our noise gives."""

    def __init__(self, noise: torch.Tensor):
        self.rows = list(noise.unbind(0))

    def __call__(self, p, *args, **kwargs):
        return (self.rows.pop(0) < p).to(p.dtype)


