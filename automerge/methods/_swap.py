"""Two-model merges that take the specialist's value entry by entry: Arcee Fusion and NearSwap."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fusion_importance(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|x - base| times the row's KL(softmax(x) || softmax(base)) over the last dimension."""
    eps = 1e-8
    p = F.softmax(x, dim=-1) + eps
    q = F.softmax(base, dim=-1) + eps
    kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
    return (x - base).abs() * kl


def _quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """sorted(values)[int(q * (n - 1))] with q * (n - 1) in fp32, mergekit's rounding."""
    flat = values.reshape(-1)
    index = (torch.tensor(qs, dtype=torch.float32) * (flat.numel() - 1)).long().tolist()
    # kthvalue is 1-based and needs no full sort of a large tensor.
    return [torch.kthvalue(flat, i + 1).values for i in index]


def arcee_fusion(base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Keep the specialist's entries whose importance is an upper outlier, the base elsewhere.

    importance = `fusion_importance`; threshold = median + 1.5 (q3 - q1) of the importance
    over the whole tensor; result = base + (x - base) * [importance >= threshold]. Quantiles
    are exact at every size (mergekit samples 10^6 entries at random above that: see README).
    fp32; returns base's dtype.
    """
    b = base.to(torch.float32)
    s = x.to(torch.float32)
    importance = fusion_importance(s, b)
    q1, median, q3 = _quantiles(importance, (0.25, 0.5, 0.75))
    threshold = median + 1.5 * (q3 - q1)
    mask = (importance >= threshold).to(torch.float32)
    return (b + (s - b) * mask).to(base.dtype)


def nearswap(base: torch.Tensor, x: torch.Tensor, *, t: float) -> torch.Tensor:
    """w x + (1 - w) base with w = clamp(t / max(|base - x|, 1e-6), 0, 1) entry by entry:
    entries where the two models are within t of each other take the specialist's value,
    farther ones move toward it by t. fp32; returns base's dtype."""
    a = base.to(torch.float32)
    b = x.to(torch.float32)
    w = (t / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return (w * b + (1 - w) * a).to(base.dtype)
