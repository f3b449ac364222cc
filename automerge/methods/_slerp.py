"""Spherical linear interpolation between the base (t=0) and one specialist (t=1)."""

from __future__ import annotations

import torch


def slerp(
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    t: float,
    dot_threshold: float = 0.9995,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Slerp treating each whole tensor as one vector (mergekit's rule).

    Directions come from copies normalised when their norm > eps; if
    |<v0_hat, v1_hat>| > dot_threshold (nearly colinear or antipodal) fall back
    to (1-t) v0 + t v1, else [sin((1-t) theta) v0 + sin(t theta) v1] / sin(theta)
    on the raw tensors. fp32 on v0's device; result in v0's dtype.
    """
    a = v0.reshape(-1).to(torch.float32)
    b = v1.reshape(-1).to(torch.float32)
    if a.numel() == 0:
        return v0.clone()
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > eps, norm_a, torch.ones_like(norm_a))
    norm_b = torch.where(norm_b > eps, norm_b, torch.ones_like(norm_b))
    t = torch.as_tensor(t, dtype=torch.float32, device=a.device)  # 1 - t in fp32, as mergekit
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    # torch.where, not `if`: no host sync, and the same branch-free math as mergekit.
    colinear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(colinear, torch.zeros_like(dot), dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(colinear, t, torch.sin(t * theta) / sin_theta)
    return (coef_a * a + coef_b * b).reshape(v0.shape).to(v0.dtype)
