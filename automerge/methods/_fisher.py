"""Fisher-weighted averaging (Matena & Raffel 2022): a per-entry weighted mean of
the specialists, each entry weighted by that specialist's diagonal Fisher."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fisher_merge(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    fisher: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    floor: float = 1e-6,
) -> torch.Tensor:
    """sum_i w_i F_i x_i / sum_i w_i F_i, x_i = base + deltas[i], per entry.

    fisher: [k, *shape] diagonal Fisher of each specialist (>= 0), weights >= 0
    with a positive sum. Each F_i is floored at `floor` x the mean Fisher of this
    tensor over all specialists -- a relative floor, so the result does not depend
    on the Fisher's overall scale (token count, loss reduction) -- which turns
    entries no specialist's Fisher cares about into the plain weighted mean.
    If the tensor's Fisher is zero everywhere (e.g. untouched by the sample),
    the result is the plain weighted mean sum_i w_i x_i / sum_i w_i.
    """
    k = deltas.shape[0]
    w = torch.as_tensor(weights, dtype=torch.float32).to(deltas.device).reshape(-1)
    if w.numel() != k or fisher.shape != deltas.shape:
        raise ValueError(f"fisher merge needs {k} weights and fisher of shape {tuple(deltas.shape)}")
    f = fisher.to(device=deltas.device, dtype=torch.float32).clamp(min=0)
    scale = f.mean()
    # All-zero Fisher: every entry floors to the same value -> plain weighted mean.
    lowest = torch.where(scale > 0, scale * floor, torch.ones_like(scale))
    wf = f.clamp(min=lowest) * w.view(-1, *([1] * (f.dim() - 1)))
    # In task-vector form: base + sum_i c_i d_i with sum_i c_i = 1, same value, less rounding.
    merged = (wf * deltas.to(torch.float32)).sum(dim=0) / wf.sum(dim=0)
    return (base.to(torch.float32) + merged).to(base.dtype)
