"""Linear merge (model soup, Wortsman et al. 2022): a weighted average of the specialists."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import RecipeError


def linear(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Sequence[float] | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """sum_i w_i x_i (/ sum_i w_i when normalize), x_i = base + deltas[i].

    The base itself is not one of the averaged models (as in mergekit, where
    linear ignores base_model). Weights summing to ~0 with normalize raise
    RecipeError instead of producing inf/NaN.
    """
    w = torch.as_tensor(weights, dtype=torch.float32).reshape(-1)
    if w.numel() != deltas.shape[0]:
        raise ValueError(f"got {w.numel()} weights for {deltas.shape[0]} task vectors")
    total = float(w.sum())
    if normalize and abs(total) < 1e-8:
        raise RecipeError(
            f"linear: weights {w.tolist()} sum to {total:g}, so normalize would divide by zero; "
            "give them a nonzero sum or set normalize: false"
        )
    b = base.to(torch.float32)
    # Accumulate sum_i w_i x_i in input order, as mergekit does.
    result = torch.zeros_like(b)
    for i, wi in enumerate(w.tolist()):
        result.add_(b + deltas[i].to(torch.float32), alpha=wi)
    if normalize:
        result.div_(total)
    return result.to(base.dtype)
