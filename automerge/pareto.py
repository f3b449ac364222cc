"""Pareto fronts in pure numpy: non-dominated sorting, hypervolume, contributions, ε-net order.

Every function here takes points in *minimisation* form, an array ``Y`` of shape ``[n, d]``
(rows are points, columns objectives, smaller is better). `to_minimization` turns values
with mixed directions ("maximize" / "minimize") into that form. Nothing here knows about
Optuna or studies: the search scheduler and the report both use it.

    Y = to_minimization(values, ["maximize", "maximize"])
    fronts = non_dominated_sort(Y)                 # [array of row indices of front 0, front 1, ...]
    hv = hypervolume(Y[fronts[0]], reference_point(Y))
    order = mo_asha_order(Y, tie_break="hv")        # every row, best first (MO-ASHA ranking)
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

TieBreak = Literal["hv", "epsnet"]


def to_minimization(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Values (rows = points) with one direction per column, as a float array to minimise."""
    Y = np.array(values, dtype=float)
    if Y.ndim == 1:
        Y = Y.reshape(-1, len(directions)) if Y.size else np.zeros((0, len(directions)))
    if Y.shape[1] != len(directions):
        raise ValueError(f"{Y.shape[1]} objective columns but {len(directions)} directions")
    signs = np.array([-1.0 if _is_max(d) else 1.0 for d in directions])
    return Y * signs


def _is_max(direction: object) -> bool:
    text = str(direction).lower()
    if text.endswith("maximize"):
        return True
    if text.endswith("minimize"):
        return False
    raise ValueError(f"direction {direction!r}: use 'maximize' or 'minimize'")


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a Pareto-dominates b (minimisation): no worse everywhere, strictly better somewhere."""
    return bool(np.all(a <= b) and np.any(a < b))


def _domination_matrix(Y: np.ndarray) -> np.ndarray:
    """D[i, j] = row i dominates row j."""
    le = np.all(Y[:, None, :] <= Y[None, :, :], axis=2)
    lt = np.any(Y[:, None, :] < Y[None, :, :], axis=2)
    return le & lt


def non_dominated_sort(Y: np.ndarray, D: np.ndarray | None = None) -> list[np.ndarray]:
    """Peel Pareto fronts one after another; returns row indices per front (ascending order).

    Duplicated points share a front. Rows holding NaN are not allowed (filter them first).
    ``D``: another domination relation to peel by (D[i, j] = row i dominates row j), e.g.
    `automerge.noise.noisy_domination_matrix`; it must be a sub-relation of Pareto
    dominance (hence acyclic).
    """
    Y = np.asarray(Y, dtype=float)
    n = len(Y)
    if n == 0:
        return []
    if np.isnan(Y).any():
        raise ValueError("non_dominated_sort: NaN in the objective values; drop those points first")
    D = _domination_matrix(Y) if D is None else np.asarray(D, dtype=bool)
    dominated_by = D.sum(axis=0)  # how many rows dominate each row
    remaining = np.ones(n, dtype=bool)
    fronts: list[np.ndarray] = []
    while remaining.any():
        front = np.flatnonzero(remaining & (dominated_by == 0))
        fronts.append(front)
        remaining[front] = False
        dominated_by = dominated_by - D[front].sum(axis=0)
    return fronts


def pareto_mask(Y: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows (front 0)."""
    Y = np.asarray(Y, dtype=float)
    mask = np.zeros(len(Y), dtype=bool)
    if len(Y):
        mask[non_dominated_sort(Y)[0]] = True
    return mask


def pareto_ranks(Y: np.ndarray) -> np.ndarray:
    """Front index of every row (0 = non-dominated)."""
    ranks = np.zeros(len(Y), dtype=int)
    for r, front in enumerate(non_dominated_sort(Y)):
        ranks[front] = r
    return ranks


def reference_point(Y: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """A reference point just worse than every row: worst value + margin·range (or + margin)."""
    Y = np.asarray(Y, dtype=float)
    worst = Y.max(axis=0)
    span = Y.max(axis=0) - Y.min(axis=0)
    return worst + np.where(span > 0, margin * span, margin * np.maximum(np.abs(worst), 1.0))


def hypervolume(Y: np.ndarray, ref: Sequence[float] | np.ndarray) -> float:
    """Volume dominated by the rows and bounded by ref (minimisation); rows not better than
    ref in every objective add nothing. Exact: a sweep in 2-D, slicing in higher dimensions."""
    ref = np.asarray(ref, dtype=float)
    Y = np.asarray(Y, dtype=float).reshape(-1, len(ref))
    Y = Y[np.all(Y < ref, axis=1)]
    if len(Y) == 0:
        return 0.0
    Y = Y[pareto_mask(Y)]
    Y = np.unique(Y, axis=0)
    return float(_hv(Y, ref))


def _hv(Y: np.ndarray, ref: np.ndarray) -> float:
    d = Y.shape[1]
    if len(Y) == 0:
        return 0.0
    if d == 1:
        return float(ref[0] - Y[:, 0].min())
    if d == 2:
        order = np.argsort(Y[:, 0], kind="stable")
        total, best_y = 0.0, ref[1]
        for i in order:
            x, y = Y[i]
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return total
    # Slice along the last objective: between consecutive values, the volume is the (d-1)-D
    # hypervolume of the points at or below the slice times the slab's thickness.
    order = np.argsort(Y[:, -1], kind="stable")
    Y = Y[order]
    total = 0.0
    for i in range(len(Y)):
        upper = Y[i + 1, -1] if i + 1 < len(Y) else ref[-1]
        thickness = upper - Y[i, -1]
        if thickness <= 0:
            continue
        head = Y[: i + 1, :-1]
        head = head[pareto_mask(head)]
        total += _hv(head, ref[:-1]) * thickness
    return total


def hypervolume_contributions(Y: np.ndarray, ref: Sequence[float] | np.ndarray) -> np.ndarray:
    """Exclusive contribution of each row: HV(all) − HV(all but that row)."""
    Y = np.asarray(Y, dtype=float)
    total = hypervolume(Y, ref)
    out = np.zeros(len(Y))
    for i in range(len(Y)):
        out[i] = total - hypervolume(np.delete(Y, i, axis=0), ref)
    return out


def greedy_hypervolume_order(Y: np.ndarray, ref: Sequence[float] | np.ndarray) -> np.ndarray:
    """Rows ordered by greedy hypervolume subset selection: each next row adds the most volume
    to the rows already chosen (ties: lower index first). The first k rows of the order are the
    greedy best k-subset; duplicates and rows adding nothing go last. Mutually non-dominated
    2-D rows (one front) take an O(n² log n) path; anything else the exact general one."""
    Y = np.asarray(Y, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if Y.ndim == 2 and Y.shape[1] == 2 and len(Y) > 2 and pareto_mask(Y).all():
        return _greedy_hv_front_2d(Y, ref)
    left = list(range(len(Y)))
    chosen: list[int] = []
    current = 0.0
    while left:
        gains = [hypervolume(Y[chosen + [i]], ref) - current for i in left]
        best = max(range(len(left)), key=lambda j: (gains[j], -left[j]))
        current += gains[best]
        chosen.append(left.pop(best))
    return np.array(chosen, dtype=int)


def _greedy_hv_front_2d(Y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Greedy HV order of one 2-D front: a new point's gain is the box between it and its chosen
    neighbours (x ascending means y descending on a front), clipped to the reference point."""
    import bisect

    chosen: list[int] = []
    xs: list[float] = []  # chosen x, ascending
    ys: list[float] = []  # y of the same points (descending)
    seen: set[tuple[float, float]] = set()
    left = list(range(len(Y)))
    while left:
        best_j, best_gain = 0, -1.0
        for j, i in enumerate(left):
            x, y = Y[i]
            if (x, y) in seen or x >= ref[0] or y >= ref[1]:
                gain = 0.0
            else:
                pos = bisect.bisect_right(xs, x)
                x_next = xs[pos] if pos < len(xs) else ref[0]
                y_prev = ys[pos - 1] if pos > 0 else ref[1]
                gain = max(min(x_next, ref[0]) - x, 0.0) * max(min(y_prev, ref[1]) - y, 0.0)
            if gain > best_gain or (gain == best_gain and i < left[best_j]):
                best_j, best_gain = j, gain
        i = left.pop(best_j)
        x, y = Y[i]
        pos = bisect.bisect_right(xs, x)
        xs.insert(pos, float(x))
        ys.insert(pos, float(y))
        seen.add((float(x), float(y)))
        chosen.append(i)
    return np.array(chosen, dtype=int)


def epsilon_net_order(Y: np.ndarray) -> np.ndarray:
    """Farthest-point (ε-net) order on objectives scaled to [0, 1]: start from the row closest to
    the ideal point, then repeatedly the row farthest from all rows chosen so far (ties: lower
    index). Spreads a selection across the front instead of clustering it."""
    Y = np.asarray(Y, dtype=float)
    n = len(Y)
    if n == 0:
        return np.zeros(0, dtype=int)
    lo, hi = Y.min(axis=0), Y.max(axis=0)
    Z = (Y - lo) / np.where(hi > lo, hi - lo, 1.0)
    first = int(np.argmin(np.linalg.norm(Z, axis=1)))
    chosen = [first]
    dist = np.linalg.norm(Z - Z[first], axis=1)
    dist[first] = -np.inf
    while len(chosen) < n:
        nxt = int(np.argmax(dist))  # argmax returns the lowest index among ties
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(Z - Z[nxt], axis=1))
        dist[chosen] = -np.inf
    return np.array(chosen, dtype=int)


def mo_asha_order(Y: np.ndarray, tie_break: TieBreak = "hv", ref: Sequence[float] | None = None,
                  k: int | None = None, D: np.ndarray | None = None) -> np.ndarray:
    """Every row, best first: fronts in order (non-dominated sorting), and inside each front by
    greedy hypervolume contribution ("hv", reference = `ref` or `reference_point` of all rows)
    or by ε-net order ("epsnet"). Deterministic for given rows. With `k`, only fronts reaching
    into the first k positions are ordered inside; later fronts follow by row index.

    With ``D`` (a coarser domination relation, see `non_dominated_sort`) the fronts are D's;
    inside one, rows go by their Pareto fronts among themselves, then by the tie-break — so a
    row dominated only within the noise still ranks ahead of every row of D's next front."""
    Y = np.asarray(Y, dtype=float)
    if len(Y) == 0:
        return np.zeros(0, dtype=int)
    if tie_break not in ("hv", "epsnet"):
        raise ValueError(f"tie_break {tie_break!r}: use 'hv' or 'epsnet'")
    ref_arr = reference_point(Y) if ref is None else np.asarray(ref, dtype=float)
    order: list[int] = []
    for outer in non_dominated_sort(Y, D):
        parts = [outer] if D is None else [outer[f] for f in non_dominated_sort(Y[outer])]
        for front in parts:
            if len(front) == 1 or (k is not None and len(order) >= k):
                order.extend(front.tolist())
                continue
            sub = Y[front]
            inner = greedy_hypervolume_order(sub, ref_arr) if tie_break == "hv" else epsilon_net_order(sub)
            order.extend(front[inner].tolist())
    return np.array(order, dtype=int)
