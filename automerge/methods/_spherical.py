"""Merges on the hypersphere: NuSLERP (two models), Multi-SLERP (barycentric, any number) and
the Karcher mean (equal-weight Riemannian mean), as mergekit 0.1.5 computes them."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _unit_rows(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    return x / torch.norm(x, dim=-1, keepdim=True).clamp(min=eps)


def nuslerp(
    v0: torch.Tensor,
    v1: torch.Tensor,
    *,
    t: float,
    row_wise: bool = False,
    flatten: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Slerp from v0 (t=0) to v1 (t=1): over the whole tensor (flatten), per row (the last
    dimension) or per column (row_wise: along dimension 0), mergekit's `nuslerp` kernel.

    Where the two directions are (anti)parallel, 1 - cos^2 <= eps^2, interpolate linearly.
    Unlike `slerp`, a colinear pair is detected per row and the interpolation runs on the
    unnormalised tensors, so the norms interpolate too. fp32; returns v0's shape.
    """
    shape = v0.shape
    a, b = v0.to(torch.float32), v1.to(torch.float32)
    if flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    cos_theta = torch.sum(_unit_rows(a) * _unit_rows(b), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    sin_theta = torch.sin(theta)
    # t stays a Python float, as in mergekit: (1 - t) is formed in double precision.
    result = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin_theta
    result = torch.where(colinear, (1 - t) * a + t * b, result)
    if row_wise and not flatten:
        result = result.transpose(0, -1)
    return result.reshape(shape)


def nuslerp_t(weights: Sequence[float]) -> float:
    """mergekit's position on the arc from two weights: w2 / (w1 + w2), 0.5 when they sum to ~0."""
    total = sum(weights)
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def multislerp(
    tensors: torch.Tensor,
    *,
    weights: Sequence[float] | torch.Tensor,
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere of k tensors [k, *shape] -> [*shape].

    Directions are projected onto the tangent space at their weighted mean direction,
    averaged there and mapped back (exponential map); the result's norm is the weighted
    mean of the norms. One tensor is returned as it is. Where the weighted mean direction
    vanishes (|mean| < eps: antipodal inputs, or all-zero ones) the result is the weighted
    sum -- mergekit does that for two tensors and raises for more (see README).
    """
    x = tensors.to(torch.float32)
    k = x.shape[0]
    if k == 1:
        return x[0].clone()
    flat = x.reshape(k, -1)
    w = torch.as_tensor(weights, dtype=torch.float32, device=x.device).reshape(-1)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        fallback = x[0] * w[0]
        for i in range(1, k):
            fallback = fallback + x[i] * w[i]
        return fallback
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = ((units - dots * mean) * w.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    result = result * (norms.squeeze(-1) * w).sum()
    return result.view(x.shape[1:])


def karcher(
    tensors: Sequence[torch.Tensor],
    *,
    max_iter: int = 10,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Equal-weight Karcher (Riemannian) mean of the tensors' directions, scaled by their mean norm.

    mergekit's `karcher`: start from the normalised mean direction, then up to max_iter
    steps along the mean log map, stopping when the tangent's norm is < tol. Tensors whose
    norm is <= tol take no part in the direction (all of them: the result is zero), but
    their norms count in the scale. fp32.
    """
    xs = [t.to(torch.float32) for t in tensors]
    if len(xs) == 1:
        return xs[0].clone()
    alphas = [1.0 / len(xs)] * len(xs)
    norms = [torch.linalg.vector_norm(x) for x in xs]
    units = [torch.zeros_like(x) if n.item() == 0.0 else x / n for x, n in zip(xs, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(xs[0])
    alpha_sum = sum(alphas[i] for i in valid)
    valid_alphas = [alphas[i] / alpha_sum for i in valid]
    valid_units = [units[i] for i in valid]

    mean = torch.zeros_like(valid_units[0])
    for alpha, unit in zip(valid_alphas, valid_units):
        mean += alpha * unit
    mean_norm = torch.linalg.vector_norm(mean)
    mean = valid_units[0].clone() if mean_norm.item() < tol else mean / mean_norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for alpha, unit in zip(valid_alphas, valid_units):
            dot = torch.clamp(torch.dot(mean.flatten(), unit.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += alpha * (theta / torch.sin(theta)) * (unit - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent)
        if tangent_norm.item() < tol:
            break
        mean = torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = torch.linalg.vector_norm(mean)
        if unit_norm.item() > tol:
            mean = mean / unit_norm
    scale = sum(alpha * norm for alpha, norm in zip(alphas, norms))
    return scale * mean
