"""Model Stock (Jang et al. 2024): interpolate the specialists' mean toward the base
by how much their task vectors agree."""

from __future__ import annotations

import torch


def model_stock(base: torch.Tensor, deltas: torch.Tensor, *, filter_wise: bool = False) -> torch.Tensor:
    """c = mean pairwise cosine of the task vectors, t = N c / (1 + (N-1) c),
    result t * mean(x_i) + (1 - t) * base. Needs N >= 2 specialists.

    As mergekit: cosines over the whole tensor (filter_wise: per row, 1-D
    tensors as one row); where 1 + (N-1) c ~ 0 (|.| < 1e-6) keep the base.
    """
    n = deltas.shape[0]
    if n < 2:
        raise ValueError("model_stock needs at least 2 task vectors")
    w0 = base.to(torch.float32)
    if filter_wise:
        w0 = w0.unsqueeze(0) if w0.dim() == 1 else w0
    else:
        w0 = w0.reshape(-1)
    offsets = [d.to(torch.float32).reshape(w0.shape) for d in deltas]
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            norm_product = torch.norm(offsets[i], dim=-1) * torch.norm(offsets[j], dim=-1)
            cos.append(((offsets[i] * offsets[j]).sum(dim=-1) / norm_product.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    denominator = 1 + (n - 1) * c
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), n * c / torch.where(singular, torch.ones_like(c), denominator))
    average = sum(w0 + o for o in offsets) / n
    return (t * average + (1 - t) * w0).reshape(base.shape).to(base.dtype)
