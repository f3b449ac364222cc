"""The task-arithmetic family: sparsify each task vector, weight, combine, add to the base.

    u_i = w_i * sparsify(d_i)
    with consensus (ties, dare_ties, breadcrumbs_ties, della):
        s = sign(sum_i u_i) (0 counts as +), m_i = [sign(u_i) == s]  (a pruned 0 never matches)
        merged = sum_i m_i u_i, divisor = sum_i m_i w_i per entry (0 -> 1)
    without (task_arithmetic, dare_linear, breadcrumbs, della_linear):
        merged = sum_i u_i, divisor = sum_i w_i (-> 1 when |.| < 1e-8)
    result = base + lam * (merged / divisor if normalize else merged), in base's dtype

This is mergekit's GeneralizedTaskArithmeticMerge, op for op, in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._sparsify import (
    sparsify_breadcrumbs,
    sparsify_della,
    sparsify_magnitude,
    sparsify_random,
)

Weights = Sequence[float] | torch.Tensor
# sparsify(i, d_i) -> sparsified d_i, for specialist i
Sparsify = Callable[[int, torch.Tensor], torch.Tensor]


def _weights(weights: Weights, k: int, device: torch.device) -> torch.Tensor:
    w = torch.as_tensor(weights, dtype=torch.float32).to(device).reshape(-1)
    if w.numel() != k:
        raise ValueError(f"got {w.numel()} weights for {k} task vectors")
    return w


def _expand(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return w.view(-1, *([1] * (like.dim() - 1)))


def consensus_combine(weighted: torch.Tensor, *, weights: Weights, normalize: bool) -> torch.Tensor:
    """TIES sign election over stacked weighted task vectors u [k, *shape] -> merged delta."""
    w = _expand(_weights(weights, weighted.shape[0], weighted.device), weighted)
    majority = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
    mask = (weighted.sign() == majority).to(weighted.dtype)
    merged = (weighted * mask).sum(dim=0)
    if normalize:
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
        merged = merged / divisor
    return merged


def sum_combine(weighted: torch.Tensor, *, weights: Weights, normalize: bool) -> torch.Tensor:
    """Plain sum of stacked weighted task vectors u [k, *shape] (/ sum of weights)."""
    merged = weighted.sum(dim=0)
    if normalize:
        divisor = _weights(weights, weighted.shape[0], weighted.device).sum()
        # Keep the sum rather than divide by ~0 (mergekit's rule).
        divisor = torch.where(divisor.abs() < 1e-8, torch.ones_like(divisor), divisor)
        merged = merged / divisor
    return merged


def generalized_task_arithmetic(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    consensus: bool,
    normalize: bool,
    lam: float = 1.0,
    sparsify: Sparsify | None = None,
) -> torch.Tensor:
    """The one core every method of the family calls (see the module doc)."""
    k = deltas.shape[0]
    w = _weights(weights, k, deltas.device)
    weighted = torch.empty(deltas.shape, dtype=torch.float32, device=deltas.device)
    for i in range(k):
        d = deltas[i].to(torch.float32)
        weighted[i] = sparsify(i, d) if sparsify is not None else d
    weighted.mul_(_expand(w, weighted))
    combine = consensus_combine if consensus else sum_combine
    merged = combine(weighted, weights=w, normalize=normalize)
    if lam != 1:
        merged = merged * lam
    return (base.to(torch.float32) + merged).to(base.dtype)


def _per_model(values: Sequence | torch.Tensor | None, k: int) -> list:
    if values is None:
        return [None] * k
    values = list(values)
    if len(values) != k:
        raise ValueError(f"got {len(values)} per-model values for {k} task vectors")
    return values


# ---------------------------------------------------------------- the eight methods


def task_arithmetic(
    base: torch.Tensor, deltas: torch.Tensor, *, weights: Weights, normalize: bool = False, lam: float = 1.0
) -> torch.Tensor:
    """base + lam * sum_i w_i d_i (Ilharco et al. 2023)."""
    return generalized_task_arithmetic(base, deltas, weights=weights, consensus=False, normalize=normalize, lam=lam)


def ties(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    normalize: bool = True,
    rescale: bool = False,
    lam: float = 1.0,
    thresholds: Sequence[float | None] | None = None,
    keep_ties: bool = True,
) -> torch.Tensor:
    """TIES (Yadav et al. 2023): magnitude trim, sign election, disjoint mean.

    thresholds[i]: cached magnitude_threshold(|d_i|, densities[i]) or None.
    """
    k = deltas.shape[0]
    densities, thresholds = _per_model(densities, k), _per_model(thresholds, k)
    norm = "l1" if rescale else None

    def trim(i: int, d: torch.Tensor) -> torch.Tensor:
        return sparsify_magnitude(d, density=densities[i], threshold=thresholds[i], rescale=norm, keep_ties=keep_ties)

    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=True, normalize=normalize, lam=lam, sparsify=trim
    )


def _drop(densities, noise, rescale, rescale_mode, k) -> Sparsify:
    densities = _per_model(densities, k)
    norm = rescale_mode if rescale else None

    def drop(i: int, d: torch.Tensor) -> torch.Tensor:
        return sparsify_random(d, density=densities[i], noise=noise[i].to(d.device), rescale=norm)

    return drop


def dare_ties(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    noise: torch.Tensor,
    normalize: bool = False,
    rescale: bool = True,
    rescale_mode: str = "l1",
    lam: float = 1.0,
) -> torch.Tensor:
    """DARE (Yu et al. 2024) random drop and rescale, then TIES sign consensus.

    noise: [k, *shape] uniform [0,1) (random_noise). rescale_mode "l1" is
    mergekit's L1-norm matching; "inverse_prob" the DARE paper's 1/density.
    """
    drop = _drop(densities, noise, rescale, rescale_mode, deltas.shape[0])
    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=True, normalize=normalize, lam=lam, sparsify=drop
    )


def dare_linear(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    noise: torch.Tensor,
    normalize: bool = False,
    rescale: bool = True,
    rescale_mode: str = "l1",
    lam: float = 1.0,
) -> torch.Tensor:
    """DARE random drop and rescale, then a plain weighted sum (see dare_ties)."""
    drop = _drop(densities, noise, rescale, rescale_mode, deltas.shape[0])
    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=False, normalize=normalize, lam=lam, sparsify=drop
    )


def _crumbs(densities, gammas, thresholds, rescale, keep_ties, k) -> Sparsify:
    densities, gammas, thresholds = _per_model(densities, k), _per_model(gammas, k), _per_model(thresholds, k)
    norm = "l1" if rescale else None

    def crumbs(i: int, d: torch.Tensor) -> torch.Tensor:
        return sparsify_breadcrumbs(
            d, density=densities[i], gamma=gammas[i], thresholds=thresholds[i], rescale=norm, keep_ties=keep_ties
        )

    return crumbs


def breadcrumbs(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    gammas: Sequence[float],
    normalize: bool = False,
    rescale: bool = False,
    lam: float = 1.0,
    thresholds: Sequence[tuple[float, float] | None] | None = None,
    keep_ties: bool = True,
) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023): drop the largest (outliers)
    and the smallest entries of each task vector, then a plain weighted sum.

    thresholds[i]: cached breadcrumbs_thresholds(|d_i|, ...) or None.
    """
    crumbs = _crumbs(densities, gammas, thresholds, rescale, keep_ties, deltas.shape[0])
    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=False, normalize=normalize, lam=lam, sparsify=crumbs
    )


def breadcrumbs_ties(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    gammas: Sequence[float],
    normalize: bool = False,
    rescale: bool = False,
    lam: float = 1.0,
    thresholds: Sequence[tuple[float, float] | None] | None = None,
    keep_ties: bool = True,
) -> torch.Tensor:
    """Model Breadcrumbs, then TIES sign consensus (see breadcrumbs)."""
    crumbs = _crumbs(densities, gammas, thresholds, rescale, keep_ties, deltas.shape[0])
    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=True, normalize=normalize, lam=lam, sparsify=crumbs
    )


def _magprune(densities, epsilons, noise, rescale, rescale_mode, rank_norms, k) -> Sparsify:
    densities, epsilons, rank_norms = _per_model(densities, k), _per_model(epsilons, k), _per_model(rank_norms, k)
    norm = rescale_mode if rescale else None

    def magprune(i: int, d: torch.Tensor) -> torch.Tensor:
        return sparsify_della(
            d, density=densities[i], epsilon=epsilons[i], noise=noise[i].to(d.device), rescale=norm,
            rank_norm=rank_norms[i],
        )

    return magprune


def della(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    epsilons: Sequence[float],
    noise: torch.Tensor,
    normalize: bool = True,
    rescale: bool = True,
    rescale_mode: str = "l1",
    lam: float = 1.0,
    rank_norms: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """DELLA (Deep et al. 2024): drop with probability falling with |d|'s rank
    in its row, rescale, then TIES sign consensus.

    noise: [k, *shape] uniform [0,1); rank_norms[i]: cached della_rank_norm(|d_i|).
    rescale_mode "l1" is mergekit's; "inverse_prob" the paper's 1/p_ij.
    """
    prune = _magprune(densities, epsilons, noise, rescale, rescale_mode, rank_norms, deltas.shape[0])
    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=True, normalize=normalize, lam=lam, sparsify=prune
    )


def della_linear(
    base: torch.Tensor,
    deltas: torch.Tensor,
    *,
    weights: Weights,
    densities: Sequence[float],
    epsilons: Sequence[float],
    noise: torch.Tensor,
    normalize: bool = False,
    rescale: bool = True,
    rescale_mode: str = "l1",
    lam: float = 1.0,
    rank_norms: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """DELLA without sign consensus: a plain weighted sum (see della)."""
    prune = _magprune(densities, epsilons, noise, rescale, rescale_mode, rank_norms, deltas.shape[0])
    return generalized_task_arithmetic(
        base, deltas, weights=weights, consensus=False, normalize=normalize, lam=lam, sparsify=prune
    )
