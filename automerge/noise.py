"""Error bars: per-item scores, standard errors, paired differences with confidence intervals,
and verdicts that never name a winner inside the noise. Pure numpy; nothing here knows Optuna.

Every task score is a pooled ratio over the items a rung scored: ``r = Σ num_i / Σ den_i``.
For a log-likelihood task ``num_i`` is item i's summed log-probability and ``den_i`` its number
of continuation tokens, so ``r`` is nats/token and the stored score ``token_prob = exp(r)``; for
multiple choice ``num_i`` is 0/1 (or p_correct) and ``den_i = 1``. `ItemScores` keeps exactly
these two arrays, in the task's fixed item order, so any two trials of a rung (nested subsets:
rung r scores the first n_r items) are compared item by item.

    a = ItemScores(metric="token_prob", num=lls, den=tokens)
    a.score(), a.standard_error()                            # the stored score ± its SE
    d = paired_difference({"code_body_ll": a}, {"code_body_ll": b}, {"code_body_ll": 1.0},
                          scale="units")                     # a − b in nats/token, 95 % CI
    verdict([d_code, d_nl], ["maximize", "maximize"])       # "dominates" | ... | "indistinguishable"

Rules and why:

* **Standard error** (one trial, one task): the delta method on the ratio —
  SE(r) = sd_i(num_i − r·den_i) / (√n · mean(den)), times |f′(r)| for the score f(r) (exp for
  token_prob). It is the linearisation a bootstrap over items approximates, without resampling.
* **Paired difference** (two trials, one objective = weighted mean of task scores): over the
  items both trials saw (the common prefix per task), a bootstrap over items with the *same*
  resampled items for both trials, so the item difficulty that both share cancels — paired
  differences are many times tighter than two independent error bars. The interval is
  Hesterberg's expanded percentile interval (2015): percentiles at α′ with
  z(α′/2) = √(n/(n−1))·t(α/2, n−1), which corrects the plain percentile interval's
  under-coverage at the 8-40 items of a proxy rung. Seeded: the same inputs give the same CI.
* **Verdict** (two trials, every objective): "dominates" only when the CI excludes zero in
  A's favour on at least one objective and in B's favour on none; "dominated" the mirror;
  "trade-off" when each wins one significantly; otherwise "indistinguishable" — a verdict of its
  own, never a tie broken by the point estimates.
* **Noise-aware domination** (the scheduler's rank): A ε-dominates B when A is no worse on every
  objective by the point values *and* better on one by more than z paired standard errors
  (z·SE of A − B from the items both saw). It is a sub-relation of Pareto dominance, so it is
  acyclic and non-dominated sorting with it is well defined; trials within the noise of each
  other share a front instead of being ordered by noise.

Units (``scale="units"``): an objective whose tasks are all log-likelihood tasks is shown in
nats/token (the mean per-token log-likelihood, weighted over its tasks; a gain in it is a loss
reduction); one of multiple-choice tasks in accuracy; anything else on the stored score's scale.
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from automerge.study_format import Attr

ITEMS_ATTR = Attr.ITEM_SCORES  # trial user attr: {task: `ItemScores.encode()`} (one write per trial)
LL_METRICS = ("token_prob", "ll_per_token")  # pooled log-likelihood: units are nats/token
Scale = Literal["score", "units"]
DEFAULT_RESAMPLES = 2000


# ------------------------------------------------------------------------------------ item data


@dataclass(frozen=True, eq=False)
class ItemScores:
    """One task's per-item results of one evaluation (see the module doc)."""

    metric: str
    num: np.ndarray  # per item: summed log-prob (ll) or correctness (mc)
    den: np.ndarray  # per item: continuation tokens (ll) or 1 (mc)

    def __post_init__(self) -> None:
        num = np.asarray(self.num, dtype=np.float64).reshape(-1)
        den = np.asarray(self.den, dtype=np.float64).reshape(-1)
        if num.shape != den.shape:
            raise ValueError(f"item scores: {num.size} numerators but {den.size} denominators")
        object.__setattr__(self, "num", num)
        object.__setattr__(self, "den", den)

    @property
    def n(self) -> int:
        return int(self.num.size)

    def head(self, n: int) -> "ItemScores":
        """The first n items (the items a lower rung scored)."""
        return ItemScores(metric=self.metric, num=self.num[:n], den=self.den[:n])

    def ratio(self) -> float:
        d = float(self.den.sum())
        return float(self.num.sum()) / d if d > 0 else math.nan

    def score(self, scale: Scale = "score") -> float:
        return float(_link(self.metric, scale)(np.array([self.ratio()]))[0])

    def standard_error(self, scale: Scale = "score") -> float:
        """Delta-method SE of `score` (nan with fewer than 2 items)."""
        if self.n < 2:
            return math.nan
        r = self.ratio()
        resid = self.num - r * self.den
        se_r = float(np.std(resid, ddof=1)) / (math.sqrt(self.n) * float(self.den.mean()))
        return abs(_slope(self.metric, scale, r)) * se_r

    # -- storage: a small JSON object (Optuna user attrs are JSON) --------------------------

    def encode(self) -> dict[str, Any]:
        """{"metric", "n", "num": base64 float32, "den": base64 float32 (absent when all 1)}."""
        out: dict[str, Any] = {"metric": self.metric, "n": self.n, "num": _b64(self.num)}
        if not np.all(self.den == 1.0):
            out["den"] = _b64(self.den)
        return out

    @classmethod
    def decode(cls, data: Mapping[str, Any]) -> "ItemScores":
        num = _unb64(data["num"])
        den = _unb64(data["den"]) if data.get("den") else np.ones_like(num)
        if int(data.get("n", num.size)) != num.size:
            raise ValueError(f"item scores: header says {data.get('n')} items, data holds {num.size}")
        return cls(metric=str(data["metric"]), num=num, den=den)


def items_from_attrs(user_attrs: Mapping[str, Any]) -> dict[str, ItemScores]:
    """Task -> ItemScores of a trial's user attrs (tasks without stored items are absent; an
    unreadable entry is skipped: error bars are a view, never a reason to fail)."""
    out = {}
    stored = user_attrs.get(ITEMS_ATTR)
    for task, value in (stored.items() if isinstance(stored, Mapping) else ()):
        try:
            out[str(task)] = ItemScores.decode(value)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
    return out


def _b64(x: np.ndarray) -> str:
    return base64.b64encode(np.asarray(x, dtype="<f4").tobytes()).decode("ascii")


def _unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


def _link(metric: str, scale: Scale):
    """The score as a function of the pooled ratio r."""
    if metric == "token_prob" and scale == "score":
        return np.exp
    if metric == "ppl" and scale == "score":
        return lambda r: np.exp(-r)
    return lambda r: r  # ll_per_token, nats/token units, accuracies, other means


def _slope(metric: str, scale: Scale, r: float) -> float:
    if metric == "token_prob" and scale == "score":
        return math.exp(r)
    if metric == "ppl" and scale == "score":
        return -math.exp(-r)
    return 1.0


def unit_of(metrics: Sequence[str]) -> str:
    """The unit of an objective whose tasks have these primary metrics, at scale "units"."""
    ms = set(metrics)
    if ms and ms <= set(LL_METRICS):
        return "nats/token"
    if len(ms) == 1:
        return next(iter(ms))
    return "score"


def objective_value(tasks: Mapping[str, ItemScores], weights: Mapping[str, float], scale: Scale = "score") -> float:
    """Weighted mean of the tasks' scores (scale "score" reproduces the stored objective)."""
    total = sum(weights.values())
    return sum(w * tasks[t].score(scale) for t, w in weights.items()) / total


def objective_loss(tasks: Mapping[str, ItemScores], weights: Mapping[str, float]) -> float | None:
    """The objective as a loss in nats/token (−`objective_value` at scale "units") when all its
    tasks are log-likelihood tasks with items; None otherwise."""
    if not all(t in tasks and tasks[t].metric in LL_METRICS and tasks[t].n >= 1 for t in weights):
        return None
    return -objective_value(tasks, weights, "units")


def objective_se(tasks: Mapping[str, ItemScores], weights: Mapping[str, float], scale: Scale = "score") -> float:
    """SE of `objective_value` (tasks' items are independent)."""
    total = sum(weights.values())
    return math.sqrt(sum((w / total * tasks[t].standard_error(scale)) ** 2 for t, w in weights.items()))


# ---------------------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class Difference:
    """A − B on one objective: point estimate, CI at `level`, bootstrap SE, items used."""

    estimate: float
    low: float
    high: float
    se: float
    n: int  # items per task both trials saw (the smallest over the objective's tasks)
    level: float = 0.95

    def favours(self, direction: str = "maximize") -> int:
        """+1: the CI excludes 0 in A's favour; -1: in B's favour; 0: inside the noise."""
        sign = 1.0 if direction == "maximize" else -1.0
        lo, hi = sorted((sign * self.low, sign * self.high))
        return 1 if lo > 0 else (-1 if hi < 0 else 0)


def t_quantile(p: float, df: float) -> float:
    """Student-t quantile by the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5), for p
    around 0.95-0.99: within 1e-3 of the exact value for df ≥ 5, 5e-3 for df = 3-4, 1 % for
    df = 2; df = 1 is exact (Cauchy). (No SciPy dependency for one quantile.)"""
    if df <= 0:
        return math.inf
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    z = NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def expanded_alpha(level: float, n: int) -> float:
    """Hesterberg's expanded-percentile α′ for n items: z(1 − α′/2) = √(n/(n−1))·t(1 − α/2, n−1)."""
    alpha = 1.0 - level
    if n < 2:
        return 0.0
    z = math.sqrt(n / (n - 1)) * t_quantile(1 - alpha / 2, n - 1)
    return 2 * (1 - NormalDist().cdf(z))


@functools.lru_cache(maxsize=64)
def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] multinomial counts: how often each item is drawn in each bootstrap sample
    (read-only, cached: every comparison with the same n and seed resamples the same items)."""
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    counts.setflags(write=False)
    return counts


def paired_difference(a: Mapping[str, ItemScores], b: Mapping[str, ItemScores], weights: Mapping[str, float], *,
                      scale: Scale = "score", level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0) -> Difference:
    """A − B on the objective Σ w_t score_t / Σ w_t over the items both saw (see the module doc)."""
    total = sum(weights.values())
    est = 0.0
    boot = np.zeros(resamples)
    n_min = None
    for k, t in enumerate(sorted(weights)):
        ia, ib = a[t], b[t]
        n = min(ia.n, ib.n)
        if n == 0:
            raise ValueError(f"task {t}: no item both trials scored")
        n_min = n if n_min is None else min(n_min, n)
        cols = np.stack([ia.num[:n], ia.den[:n], ib.num[:n], ib.den[:n]], axis=1)  # [n, 4]
        sums = _resample_counts(n, resamples, seed + 7919 * k) @ cols  # [B, 4]: resampled sums
        f, g = _link(ia.metric, scale), _link(ib.metric, scale)
        w = weights[t] / total
        full = cols.sum(axis=0)
        est += w * float(f(full[0:1] / full[1:2])[0] - g(full[2:3] / full[3:4])[0])
        boot += w * (f(sums[:, 0] / sums[:, 1]) - g(sums[:, 2] / sums[:, 3]))
    assert n_min is not None
    alpha = expanded_alpha(level, n_min)
    if n_min < 2 or alpha <= 0:
        lo, hi = -math.inf, math.inf
    else:
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    se = float(np.std(boot, ddof=1)) if n_min >= 2 else math.inf
    return Difference(estimate=est, low=float(lo), high=float(hi), se=se, n=int(n_min), level=level)


VERDICTS = ("dominates", "dominated", "trade-off", "indistinguishable")


def verdict(diffs: Sequence[Difference], directions: Sequence[str]) -> str:
    """A against B from the per-objective differences A − B (rule in the module doc)."""
    signs = [d.favours(direction) for d, direction in zip(diffs, directions)]
    wins, losses = any(s > 0 for s in signs), any(s < 0 for s in signs)
    if wins and not losses:
        return "dominates"
    if losses and not wins:
        return "dominated"
    if wins and losses:
        return "trade-off"
    return "indistinguishable"


# ------------------------------------------------------------------------- noise-aware ranking


def influence(items: ItemScores, scale: Scale = "score") -> np.ndarray:
    """Per-item linearised contribution ψ_i to the score (Σ ψ = 0): score ≈ f(r) + mean(ψ)
    around the items' ratio, so Var(score) ≈ Σ ψ² / (n(n−1)) and, for two trials on the same
    items, Var(A − B) ≈ Σ (ψA − ψB)² / (n(n−1))."""
    r = items.ratio()
    return _slope(items.metric, scale, r) * (items.num - r * items.den) / float(items.den.mean())


def objective_noise(tasks: Mapping[str, ItemScores], weights: Mapping[str, float],
                    scale: Scale = "score") -> np.ndarray | None:
    """One vector per trial and objective such that, for two trials with vectors u and v on the
    same items, SE(A − B) = ‖u − v‖ (the tasks' items concatenated, each task scaled by its
    weight share and 1/√(n(n−1))). None when a task has fewer than 2 items or is missing."""
    total = sum(weights.values())
    parts = []
    for t in sorted(weights):
        it = tasks.get(t)
        if it is None or it.n < 2:
            return None
        parts.append(influence(it, scale) * (weights[t] / total) / math.sqrt(it.n * (it.n - 1)))
    return np.concatenate(parts)


def items_for(per_item_sd: float, half_width: float, level: float = 0.95) -> int:
    """Items per task a paired difference needs for a CI of ± `half_width`, given the per-item
    SD of the difference (normal approximation: n = (z·sd / h)²)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return max(2, math.ceil((z * per_item_sd / half_width) ** 2))


def noisy_domination_matrix(Y: np.ndarray, noise: Sequence[Sequence[np.ndarray | None]], z: float) -> np.ndarray:
    """D[i, j] = row i ε-dominates row j (minimisation; rule in the module doc). ``noise[i][k]``:
    row i's `objective_noise` vector for objective k (None: no item data; such pairs use plain
    Pareto dominance). Pairs whose vectors differ in length (different items) likewise."""
    Y = np.asarray(Y, dtype=float)
    n, d = Y.shape
    le = np.all(Y[:, None, :] <= Y[None, :, :], axis=2)
    lt = Y[:, None, :] < Y[None, :, :]  # [i, j, k]: i strictly better on k
    if z <= 0:
        return le & lt.any(axis=2)
    margin = np.zeros((n, n, d))
    for k in range(d):
        vecs = [noise[i][k] if noise[i] is not None else None for i in range(n)]
        lengths = {v.size for v in vecs if v is not None}
        if len(lengths) != 1 or any(v is None for v in vecs):
            # mixed item sets: compare only the pairs that share them
            for i in range(n):
                for j in range(n):
                    u, v = vecs[i], vecs[j]
                    if u is not None and v is not None and u.size == v.size:
                        margin[i, j, k] = z * float(np.linalg.norm(u - v))
            continue
        V = np.stack(vecs)
        sq = (V * V).sum(axis=1)
        var = np.maximum(sq[:, None] + sq[None, :] - 2 * V @ V.T, 0.0)
        margin[:, :, k] = z * np.sqrt(var)
    gap = Y[None, :, :] - Y[:, None, :]  # [i, j, k] = Y_j − Y_i: how much better i is on k
    significant = (gap > margin) & lt
    return le & significant.any(axis=2)
