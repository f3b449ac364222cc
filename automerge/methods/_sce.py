"""SCE (Wan et al. 2024, FuseChat): select by variance, calculate weights, erase minority signs."""

from __future__ import annotations

import torch


def sce_mask(deltas: torch.Tensor, select_topk: float) -> torch.Tensor:
    """1 where the entry's variance across the task vectors is among the top `select_topk`
    fraction of the nonzero variances (k = int(nonzero * select_topk)), else 0. [*shape]."""
    if select_topk >= 1:
        return torch.ones_like(deltas[0])
    if select_topk <= 0:
        return torch.zeros_like(deltas[0])
    var = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * select_topk)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    _, indices = torch.topk(var.abs().view(-1), k=k, largest=True)
    mask.view(-1)[indices] = 1
    return mask


def sce(base: torch.Tensor, deltas: torch.Tensor, *, select_topk: float = 1.0) -> torch.Tensor:
    """base + sum_i c_i m_i d'_i / sum_i c_i m_i, mergekit's `sce`.

    d'_i: the task vectors restricted to the selected entries (`sce_mask`); c_i: mean
    square of d'_i over the tensor, normalised to sum to 1 (uniform when they sum to < 1e-6);
    m_i: 1 where d'_i has the elected sign (that of sum_i d'_i, + on ties), else 0; the
    denominator is clamped at 1e-6. One specialist with select_topk < 1 selects nothing
    (its variance is zero everywhere), as in mergekit.
    """
    d = deltas.to(torch.float32)
    b = base.to(torch.float32)
    if select_topk < 1:
        d = d * sce_mask(d, select_topk).unsqueeze(0)
    sign = d.sign()
    elected = (d.sum(dim=0) >= 0).to(d.dtype) * 2 - 1
    erase = sign == elected
    c = d.square().reshape(d.shape[0], -1).mean(dim=1)
    total = torch.sum(c).item()
    c = torch.ones_like(c) / c.shape[0] if abs(total) < 1e-6 else c / total
    c = c.view(-1, *([1] * (d.dim() - 1)))
    erased = c * erase
    merged = (d * erased).sum(dim=0) / torch.sum(erased, dim=0).clamp(min=1e-6)
    return (b + merged).to(base.dtype)
