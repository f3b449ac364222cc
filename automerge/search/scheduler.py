"""MO-ASHA: asynchronous successive halving over rungs, promotion by Pareto rank.

Pure logic over what storage holds — no Optuna, no database. The worker builds, for every
rung, the finished results there and the set of parents already claimed into the next rung,
and asks `Scheduler.promotions` what may be promoted now. Because the answer is a function of
those snapshots only, a restarted (or an extra) worker derives the same state; the claim in
storage (see `study.Claims`) makes each promotion happen once.

Rule (asynchronous successive halving, Li et al. 2020; multi-objective ranking as in MO-ASHA,
Schmucker et al. 2021): at rung r with n finished *search* trials, the best ⌊n/η⌋ of them in
MO-ASHA order (non-dominated sorting, ties inside a front by greedy hypervolume contribution
or ε-net) are promotable to rung r+1; a promotable trial not yet promoted is promoted now,
without waiting for the rung to fill. With rule "asha" that is all; with rule "bounded" (the
default) the number of search promotions out of a rung never exceeds ⌊n/η⌋ — with several
objectives the top of the ranking changes often, and plain ASHA then promotes far more than
1/η of a rung (measured: 16 of 30), which spends the compute multi-fidelity should save. Baselines and reference models are always promoted (they are
the yardsticks every rung's front is shown against) and never take a search trial's place.

Noise-aware rank (``noise_z`` > 0; search spaces default to 1): the fronts of that ranking are those of
ε-dominance — a trial dominates another only when no worse on every objective and better on
one by more than ``noise_z`` paired standard errors, computed from the items both scored
(`automerge.noise`). Trials within the noise of each other share a front, so a rung of
8 items does not order them by noise; inside a front they go by plain Pareto rank, then the
tie-break. Results without item data (older studies) compare by their values alone.
``noise_z = 0`` is the plain MO-ASHA rank. The claims, and with them exactly-once promotion,
are unchanged: the rule only decides *which* trials are promotable.

Finalisation (after the sampling budget): a rung's whole Pareto front is promoted too, once
no lower rung has work left, so the search ends with its best trials fully evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from automerge.noise import noisy_domination_matrix
from automerge.pareto import TieBreak, mo_asha_order, non_dominated_sort, to_minimization
from automerge.study_format import Kind

SEARCH, BASELINE, REFERENCE = Kind.SEARCH, Kind.BASELINE, Kind.REFERENCE  # short names (the rules below)


@dataclass(frozen=True)
class Result:
    """One finished (COMPLETE, finite) trial at a rung."""

    number: int  # trial number in that rung's study
    values: tuple[float, ...]
    kind: str = SEARCH
    # per objective: `automerge.noise.objective_noise` of the trial (None: no item data)
    noise: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Promotion:
    """Promote trial `parent` of rung `rung - 1` into rung `rung`."""

    rung: int
    parent: int
    kind: str = SEARCH
    reason: str = "top"  # "top" (in the top 1/η), "front" (finalisation), "yardstick" (baseline/reference)

    @property
    def key(self) -> str:
        return promotion_key(self.parent)


def promotion_key(parent: int) -> str:
    return f"p{parent}"


class Scheduler:
    """Successive-halving promotions for `num_rungs` rungs (rung num_rungs-1 is the top)."""

    def __init__(self, *, num_rungs: int, eta: float, directions: Sequence[str], tie_break: TieBreak = "hv",
                 rule: str = "bounded", noise_z: float = 0.0):
        if num_rungs < 1:
            raise ValueError("num_rungs must be >= 1")
        if not eta > 1:
            raise ValueError(f"eta must be > 1, got {eta}")
        self.num_rungs = num_rungs
        self.eta = float(eta)
        self.directions = list(directions)
        self.tie_break = tie_break
        if rule not in ("bounded", "asha"):
            raise ValueError(f"rule {rule!r}: use 'bounded' or 'asha'")
        self.rule = rule
        if not noise_z >= 0:
            raise ValueError(f"noise_z must be >= 0, got {noise_z}")
        self.noise_z = float(noise_z)

    # -- ranking ---------------------------------------------------------------------------

    def _search(self, results: Sequence[Result]) -> list[Result]:
        ok = [r for r in results if r.kind == SEARCH and all(math.isfinite(v) for v in r.values)]
        return sorted(ok, key=lambda r: r.number)  # canonical order: same input -> same ranking

    def order(self, results: Sequence[Result], k: int | None = None) -> list[int]:
        """Trial numbers of the search results, best first (MO-ASHA order; with k, exact for the
        first k only)."""
        ok = self._search(results)
        if not ok:
            return []
        Y = to_minimization([r.values for r in ok], self.directions)
        D = None
        if self.noise_z > 0 and any(r.noise is not None for r in ok):
            D = noisy_domination_matrix(Y, [r.noise for r in ok], self.noise_z)
        return [ok[i].number for i in mo_asha_order(Y, self.tie_break, k=k, D=D)]

    def front(self, results: Sequence[Result]) -> list[int]:
        """Trial numbers of the non-dominated search results."""
        ok = self._search(results)
        if not ok:
            return []
        Y = to_minimization([r.values for r in ok], self.directions)
        return sorted(ok[i].number for i in non_dominated_sort(Y)[0])

    def promotable(self, results: Sequence[Result]) -> list[int]:
        """The best ⌊n/η⌋ search results at a rung (n = finished search trials there)."""
        n = len(self._search(results))
        k = int(math.floor(n / self.eta + 1e-9))
        if k == 0:
            return []
        return self.order(results, k=k)[:k]

    # -- promotions ------------------------------------------------------------------------

    def promotions(
        self,
        rungs: Sequence[Sequence[Result]],
        claimed: Sequence[set[int]],
        *,
        finalize: bool = False,
        busy: Sequence[bool] | None = None,
    ) -> list[Promotion]:
        """What to promote now, most valuable first (higher target rung first).

        rungs[r]: finished results at rung r. claimed[r]: parents (trial numbers at rung r-1)
        already claimed into rung r (claimed[0] is ignored). busy[r]: rung r has work claimed
        but not finished (running). finalize: the sampling budget is spent.
        """
        R = self.num_rungs
        if len(rungs) != R or len(claimed) != R:
            raise ValueError(f"expected {R} rungs of results and of claims")
        busy = list(busy) if busy is not None else [False] * R
        by_rung: list[list[Promotion]] = [[] for _ in range(R)]
        for r in range(R - 1):
            done = claimed[r + 1]
            for res in sorted(rungs[r], key=lambda x: x.number):
                if res.kind != SEARCH and res.number not in done:
                    by_rung[r + 1].append(Promotion(r + 1, res.number, res.kind, "yardstick"))
            top = self.promotable(rungs[r])
            if self.rule == "bounded":
                # Never more than ⌊n/η⌋ search promotions out of a rung in total.
                search_numbers = {x.number for x in rungs[r] if x.kind == SEARCH}
                slots = len(top) - len(done & search_numbers)
                top = [n for n in top if n not in done][: max(slots, 0)]
            for number in top:
                if number not in done:
                    by_rung[r + 1].append(Promotion(r + 1, number, SEARCH, "top"))
        if finalize:
            for r in range(R - 1):
                # Settled: nothing running at rungs <= r and nothing left to promote into them.
                settled = not any(busy[: r + 1]) and not any(by_rung[: r + 1])
                if not settled:
                    continue
                done = claimed[r + 1] | {p.parent for p in by_rung[r + 1]}
                front = set(self.front(rungs[r]))
                values = {x.number: x.values for x in rungs[r]}
                seen = {values[n] for n in done if n in values}  # a duplicate point adds nothing
                for number in self.order(rungs[r], k=1):  # the front, best contribution first
                    if number in front and number not in done and values[number] not in seen:
                        by_rung[r + 1].append(Promotion(r + 1, number, SEARCH, "front"))
                        seen.add(values[number])
        out: list[Promotion] = []
        for r in reversed(range(R)):
            out.extend(by_rung[r])
        return out


def rung_front_values(results: Sequence[Result], directions: Sequence[str]) -> np.ndarray:
    """Objective values (as given, not negated) of the non-dominated search results."""
    ok = [r for r in results if r.kind == SEARCH and all(math.isfinite(v) for v in r.values)]
    if not ok:
        return np.zeros((0, len(directions)))
    Y = to_minimization([r.values for r in ok], directions)
    return np.array([ok[i].values for i in non_dominated_sort(Y)[0]], dtype=float)
