"""Sparsifiers: which entries of one task vector survive, and how it is rescaled.

Each function takes one task vector `delta` (any shape, fp32) and returns a
tensor of the same shape. As in mergekit, `density >= 1` returns `delta`
untouched (no rescale either). The statistics that do not depend on the trial
(magnitude thresholds, DELLA ranks) are separate functions, so the engine can
compute them once and pass them back in.

Ties. mergekit keeps the top entries by `argsort`, whose order among equal
magnitudes is arbitrary (not even stable on the CPU beyond ~16 entries), so no
rule can reproduce its choice. By default every entry tied at a threshold is
kept: a pure elementwise test against a cacheable threshold (no host sync).
Deltas of fp16/bf16 checkpoints have many equal magnitudes, so this keeps a
little more than mergekit (measured on N(0, 1e-3) fine-tunes of N(0, 0.02)
weights: +0.4..1% entries from fp16, +0.5..3% from bf16). `keep_ties=False`
keeps exactly mergekit's count instead, breaking ties by flattened index
(lowest first): same count and same L1 norm as mergekit, two host syncs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Sequence

import torch

from ..errors import RecipeError

RESCALE_MODES = ("l1", "inverse_prob")
_RESCALE_EPS = 1e-7  # mergekit's rescaled_masked_tensor: below this, do not rescale


# ---------------------------------------------------------------- helpers


def _keep_first(mask: torch.Tensor, count: int) -> torch.Tensor:
    """`mask` with only its first `count` True entries (flattened order) left True."""
    flat = mask.reshape(-1)
    if count >= int(flat.sum()):
        return mask
    out = torch.zeros_like(flat)
    out[flat.nonzero().squeeze(1)[: max(count, 0)]] = True
    return out.view_as(mask)


def _rescaled(
    delta: torch.Tensor,
    keep: torch.Tensor,
    rescale: str | None,
    keep_prob: float | torch.Tensor,
) -> torch.Tensor:
    """delta * keep, rescaled: "l1" matches the L1 norm of delta (mergekit's rule,
    skipped when either norm is < 1e-7); "inverse_prob" divides by the keep
    probability (the DARE paper's 1/rho; DELLA's 1/p_ij)."""
    masked = delta * keep.to(delta.dtype)
    if rescale is None:
        return masked
    if rescale == "l1":
        before = delta.abs().sum()
        after = masked.abs().sum()
        # torch.where rather than `if`: no host sync on a GPU.
        ok = (before >= _RESCALE_EPS) & (after >= _RESCALE_EPS)
        return masked * torch.where(ok, before / after, torch.ones_like(before))
    if rescale == "inverse_prob":
        return masked / keep_prob
    raise RecipeError(f"rescale mode {rescale!r} is unknown; use one of {', '.join(RESCALE_MODES)}")


# ---------------------------------------------------------------- selection (thresholds without a sort)

HALF_DTYPES = (torch.float16, torch.bfloat16)
_SORT_BELOW = 1 << 14  # below this many entries one small sort beats two passes
_PATTERNS = 1 << 15  # 15-bit magnitude keys: a half's bits, or an fp32's top 16, the sign bit dropped
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # which int16 of an fp32 holds its top 16 bits
_LOW = 1 << 16  # an fp32's low 16 bits: its rank inside a bucket


def _chunks(flat: torch.Tensor) -> Iterator[torch.Tensor]:
    """Fixed-size pieces of a flat tensor: bounds the scratch of each selection pass."""
    step = 1 << (26 if flat.device.type == "cuda" else 22)
    for start in range(0, flat.numel(), step):
        yield flat[start:start + step]


def _magnitude_keys(piece: torch.Tensor) -> torch.Tensor:
    """int16 keys ordered like |x|: for non-negative floats the bit pattern read as an integer
    orders like the value. fp16/bf16: the whole pattern (exact); fp32: its top 16 bits (a
    bucket 1/128 of an octave wide). One strided pass, no int32/int64 copy."""
    halves = piece.view(torch.int16)
    return (halves if piece.dtype in HALF_DTYPES else halves[_HIGH_HALF::2]).bitwise_and(0x7FFF)


def _key_counts(flat: torch.Tensor) -> torch.Tensor:
    counts = torch.zeros(_PATTERNS, dtype=torch.int64, device=flat.device)
    for piece in _chunks(flat):
        counts += torch.bincount(_magnitude_keys(piece), minlength=_PATTERNS)
    return counts


def half_magnitude_counts(x: torch.Tensor) -> torch.Tensor:
    """counts[p] = entries of fp16/bf16 `x` whose |x| has bit pattern <= p (cumulative, 2^15 long).

    One O(n) histogram that answers every rank at once (`half_magnitude_at`); int32 when it
    fits, to keep a cached copy small.
    """
    if x.dtype not in HALF_DTYPES:
        raise TypeError(f"half_magnitude_counts needs a float16/bfloat16 tensor, got {x.dtype}")
    flat = x.reshape(-1)
    counts = _key_counts(flat).cumsum_(0)
    return counts.to(torch.int32) if flat.numel() < 2**31 else counts


def half_magnitude_at(counts: torch.Tensor, dtype: torch.dtype, ranks: Sequence[int]) -> list[float]:
    """The r-th smallest |x| (1-based) for each r in ranks, from `half_magnitude_counts(x)`."""
    want = torch.tensor(list(ranks), dtype=counts.dtype, device=counts.device)
    patterns = torch.searchsorted(counts, want)  # the first pattern whose cumulative count reaches r
    return patterns.to(torch.int16).view(dtype).float().tolist()


def smallest_magnitudes(x: torch.Tensor, ranks: Sequence[int]) -> list[float]:
    """The r-th smallest |x| over the flattened tensor (1-based, as torch.kthvalue on |x|)
    for every r in ranks, exactly, as Python floats (x NaN-free).

    Selection over the float bit patterns, O(n), never a full sort: fp16/bf16 take one
    histogram of the 2^15 magnitude patterns; fp32 takes a histogram of its top 16 bits,
    which names each rank's bucket, then for one or two buckets a histogram of the low 16
    bits of that bucket's entries (exact, no sort: quantized task vectors can pile half
    their entries into one bucket); for more buckets it collects their entries and sorts
    them. Passes run in fixed-size chunks. Other dtypes (float64) fall back to kthvalue.
    """
    ranks = [int(r) for r in ranks]
    flat = x.reshape(-1)
    n = flat.numel()
    bad = [r for r in ranks if not 1 <= r <= n]
    if bad:
        raise ValueError(f"rank {bad[0]} is outside 1..{n} (the tensor's size)")
    if not ranks:
        return []
    if n <= _SORT_BELOW:
        ordered = flat.float().abs().sort().values
        return ordered[torch.tensor(ranks, device=flat.device) - 1].tolist()
    if flat.dtype in HALF_DTYPES:
        return half_magnitude_at(half_magnitude_counts(flat), flat.dtype, ranks)
    if flat.dtype != torch.float32:
        mags = flat.abs()
        return [torch.kthvalue(mags, r).values.item() for r in ranks]
    counts = _key_counts(flat)
    cum = counts.cumsum(0)
    want = torch.tensor(ranks, dtype=torch.int64, device=flat.device)
    where = torch.searchsorted(cum, want)  # each rank's bucket
    within = want - (cum[where] - counts[where])  # its 1-based rank inside the bucket
    targets = torch.unique(where)  # sorted
    wanted = targets.tolist()
    if len(wanted) <= 2:  # TIES, breadcrumbs: a histogram of each bucket's low 16 bits, no sort
        low_counts = {}
        for bucket in wanted:
            hist = torch.zeros(_LOW + 1, dtype=torch.int64, device=flat.device)
            for piece in _chunks(flat):
                low = piece.view(torch.int16)[1 - _HIGH_HALF::2].to(torch.int32).bitwise_and_(_LOW - 1)
                hist += torch.bincount(torch.where(_magnitude_keys(piece) == bucket, low, _LOW), minlength=_LOW + 1)
            low_counts[bucket] = hist[:_LOW].cumsum_(0)
        out = []
        for bucket, rank in zip(where.tolist(), within.tolist()):
            low = int(torch.searchsorted(low_counts[bucket], torch.tensor(rank, device=flat.device)))
            out.append(torch.tensor([(bucket << 16) | low], dtype=torch.int32).view(torch.float32).item())
        return out
    table = torch.zeros(_PATTERNS, dtype=torch.bool, device=flat.device)  # many buckets: a lookup per entry
    table[targets] = True
    picked = torch.cat([piece[table[_magnitude_keys(piece).to(torch.int32)]].abs() for piece in _chunks(flat)])
    # Buckets order like values, so sorted `picked` holds the target buckets one after another.
    picked = picked.sort().values
    sizes = counts[targets]
    starts = sizes.cumsum(0) - sizes
    return picked[starts[torch.searchsorted(targets, where)] + within - 1].tolist()


# ---------------------------------------------------------------- magnitude (TIES)


def magnitude_k(numel: int, density: float) -> int:
    """Entries magnitude pruning keeps: max(1, int(density * n)).

    mergekit 0.1.5 keeps at least one entry of a nonempty tensor for any
    density > 0 (older mergekit asserted on k = 0); we do the same.
    """
    if numel == 0 or density <= 0:
        return 0
    if density >= 1:
        return numel
    return max(1, int(float(density) * numel))


def magnitude_threshold(abs_delta: torch.Tensor, density: float) -> float:
    """The k-th largest |d| over the whole flattened tensor, k = magnitude_k(n, density).

    Entries >= this value survive magnitude pruning (see the module doc for ties).
    Returns 0.0 for density >= 1 (keep all) and inf for density <= 0. `abs_delta` may
    be d itself: only magnitudes are read (selection, see `smallest_magnitudes`).
    """
    n = abs_delta.numel()
    k = magnitude_k(n, density)
    if k >= n:
        return 0.0
    if k == 0:
        return math.inf
    return smallest_magnitudes(abs_delta, [n - k + 1])[0]


def sparsify_magnitude(
    delta: torch.Tensor,
    *,
    density: float,
    threshold: float | None = None,
    rescale: str | None = None,
    keep_ties: bool = True,
) -> torch.Tensor:
    """Keep the k = max(1, int(density*n)) entries of largest |delta| (TIES trim).

    `threshold`: a cached `magnitude_threshold(delta.abs(), density)`, used
    instead of recomputing it. Ties at the threshold: see the module doc.
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    a = delta.abs()
    if threshold is None:
        threshold = magnitude_threshold(a, density)
    if keep_ties:
        keep = a >= threshold
    else:
        above = a > threshold
        need = magnitude_k(a.numel(), density) - int(above.sum())
        keep = above | _keep_first(a == threshold, need)
    return _rescaled(delta, keep, rescale, density)


# ---------------------------------------------------------------- breadcrumbs


def breadcrumbs_counts(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(n_bot, n_keep): in ascending |d| order keep positions [n_bot, n_bot + n_keep).

    mergekit 0.1.5's rule: n_keep = int(density*n), n_top = int(gamma*n),
    n_bot = max(0, n - n_keep - n_top) -- the outlier cut shrinks when needed
    to reach the density. (Older mergekit zeroed the whole tensor when
    int(gamma*n) = 0; with n_top = 0 we simply drop no outliers.)
    """
    n_keep = int(float(density) * numel)
    n_top = int(float(gamma) * numel)
    return max(0, numel - n_keep - n_top), n_keep


def breadcrumbs_thresholds(
    abs_delta: torch.Tensor, *, density: float, gamma: float
) -> tuple[float, float] | None:
    """(lo, hi): the smallest and largest kept |d|; None when nothing is kept."""
    n = abs_delta.numel()
    n_bot, n_keep = breadcrumbs_counts(n, density, gamma)
    if n_keep == 0:
        return None
    lo, hi = smallest_magnitudes(abs_delta, [n_bot + 1, n_bot + n_keep])
    return lo, hi


def sparsify_breadcrumbs(
    delta: torch.Tensor,
    *,
    density: float,
    gamma: float,
    thresholds: tuple[float, float] | None = None,
    rescale: str | None = None,
    keep_ties: bool = True,
) -> torch.Tensor:
    """Drop the top `gamma` fraction of |delta| (outliers) and the smallest, keeping
    int(density*n) entries in between (Model Breadcrumbs).

    int(density*n) = 0 keeps nothing (as mergekit). `thresholds`: cached
    `breadcrumbs_thresholds(...)`. Ties at either bound: see the module doc.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    n_bot, n_keep = breadcrumbs_counts(n, density, gamma)
    if n_keep == 0:
        return torch.zeros_like(delta)
    a = delta.abs()
    if thresholds is None:
        thresholds = breadcrumbs_thresholds(a, density=density, gamma=gamma)
    lo, hi = thresholds
    if keep_ties:
        keep = (a >= lo) & (a <= hi)
    elif lo == hi:
        keep = _keep_first(a == lo, n_keep)
    else:
        # Strictly inside, plus as many tied entries at each bound as the
        # sorted positions [n_bot, n_bot + n_keep) hold.
        keep = (a > lo) & (a < hi)
        keep |= _keep_first(a == lo, int((a <= lo).sum()) - n_bot)
        keep |= _keep_first(a == hi, n_bot + n_keep - int((a < hi).sum()))
    return _rescaled(delta, keep, rescale, density)


# ---------------------------------------------------------------- random (DARE)


def sparsify_random(
    delta: torch.Tensor,
    *,
    density: float,
    noise: torch.Tensor,
    rescale: str | None = "l1",
) -> torch.Tensor:
    """Keep each entry where noise < density (DARE), then rescale.

    `noise`: uniform [0,1) of delta's shape (a row of `random_noise`). The
    default "l1" rescale is mergekit's; "inverse_prob" is the DARE paper's 1/rho.
    """
    if density >= 1:
        return delta
    return _rescaled(delta, noise < density, rescale, density)


# ---------------------------------------------------------------- DELLA magprune


def della_rank_norm(abs_delta: torch.Tensor) -> torch.Tensor:
    """Rank of |d| within its row, scaled to [0, 1] (smallest 0, largest 1).

    As mergekit: 1-D tensors are one row; otherwise ranks run along dim 1.
    Equal magnitudes are ranked by index (stable sort). A row of one entry
    gets 0.5 (mergekit produces NaN there and crashes). Depends on the
    specialist only, so the engine may cache it.
    """
    x = abs_delta if abs_delta.dim() >= 2 else abs_delta.reshape(1, -1)
    m = x.shape[1]
    if m <= 1:
        return torch.full(abs_delta.shape, 0.5, dtype=torch.float32, device=abs_delta.device)
    order = torch.argsort(x, dim=1, stable=True)
    positions = torch.arange(m, device=x.device).view(1, m, *([1] * (x.dim() - 2)))
    ranks = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
    # Same fp32 ops as mergekit's (rank - min) / (max - min): bit-identical p.
    return (ranks.to(torch.float32) / (m - 1)).reshape(abs_delta.shape)


def check_della(density: float, epsilon: float) -> None:
    """DELLA needs density +/- epsilon inside (0, 1) (when it prunes at all)."""
    if density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
        raise RecipeError(
            f"della: density {density} +/- epsilon {epsilon} must lie in (0, 1); "
            "lower epsilon or move density away from 0 and 1"
        )


def della_keep_prob(
    abs_delta: torch.Tensor,
    *,
    density: float,
    epsilon: float,
    rank_norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """p_ij = density - epsilon + 2*epsilon*rank_norm (larger |d| -> more likely kept)."""
    check_della(density, epsilon)
    if rank_norm is None:
        rank_norm = della_rank_norm(abs_delta)
    return (density - epsilon) + rank_norm * 2 * epsilon


def sparsify_della(
    delta: torch.Tensor,
    *,
    density: float,
    epsilon: float,
    noise: torch.Tensor,
    rescale: str | None = "l1",
    rank_norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """DELLA MAGPRUNE: keep where noise < p_ij, then rescale ("l1": mergekit;
    "inverse_prob": the DELLA paper's 1/p_ij). `rank_norm`: cached della_rank_norm."""
    if density >= 1:
        return delta
    p = della_keep_prob(delta.abs(), density=density, epsilon=epsilon, rank_norm=rank_norm)
    return _rescaled(delta, noise < p, rescale, p)
