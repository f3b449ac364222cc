"""MO-ASHA promotion logic on synthetic objectives with known fronts (no storage, no models)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from automerge.pareto import non_dominated_sort, to_minimization
from automerge.search.scheduler import BASELINE, REFERENCE, SEARCH, Result, Scheduler

MAX2 = ["maximize", "maximize"]


def staircase(n_fronts: int, per_front: int, start: int = 0) -> list[Result]:
    """Points on concentric quarter circles: front k has radius 1 - 0.1k (all maximised)."""
    out = []
    num = start
    for k in range(n_fronts):
        r = 1.0 - 0.1 * k
        for j in range(per_front):
            a = (j + 0.5) / per_front * math.pi / 2
            out.append(Result(num, (r * math.cos(a), r * math.sin(a))))
            num += 1
    return out


def test_promotable_is_the_top_third_by_pareto_rank():
    res = staircase(3, 3)  # fronts {0,1,2}, {3,4,5}, {6,7,8}
    s = Scheduler(num_rungs=3, eta=3, directions=MAX2)
    assert sorted(s.promotable(res)) == [0, 1, 2]  # k = 9/3 = 3 = exactly the first front
    assert s.front(res) == [0, 1, 2]
    random.Random(0).shuffle(res)  # input order does not matter
    assert sorted(s.promotable(res)) == [0, 1, 2]


def test_tie_inside_a_front_broken_by_hypervolume_contribution():
    # One front of 5 on a circle plus dominated points: with k = 2 the greedy HV pick is the
    # pair that covers the most volume, not the two extremes.
    front = staircase(1, 5)
    dominated = [Result(10 + i, (0.1, 0.1)) for i in range(1)]
    s = Scheduler(num_rungs=2, eta=3, directions=MAX2, tie_break="hv")
    top = s.promotable(front + dominated)  # 6 results -> k = 2
    assert len(top) == 2 and set(top) <= {0, 1, 2, 3, 4}
    assert 2 in top  # the middle of the arc contributes most on its own
    e = Scheduler(num_rungs=2, eta=3, directions=MAX2, tie_break="epsnet")
    top_e = e.promotable(front + dominated)
    assert top_e[0] == 2 and top_e[1] in (0, 4)  # ε-net: then the farthest point, an extreme


def test_minimize_direction_flips_ranking():
    res = [Result(0, (1.0,)), Result(1, (2.0,)), Result(2, (3.0,))]
    assert Scheduler(num_rungs=2, eta=3, directions=["minimize"]).promotable(res) == [0]
    assert Scheduler(num_rungs=2, eta=3, directions=["maximize"]).promotable(res) == [2]


def test_no_promotion_before_eta_results_and_asynchronous_growth():
    s = Scheduler(num_rungs=3, eta=3, directions=MAX2)
    res = staircase(1, 2)
    assert s.promotions([res, [], []], [set(), set(), set()]) == []
    res = staircase(3, 3)[:3]  # 3 results: promote 1 now, without waiting for the rung to fill
    p = s.promotions([res, [], []], [set(), set(), set()])
    assert [(x.rung, x.parent, x.reason) for x in p] == [(1, p[0].parent, "top")]


def test_claimed_promotions_are_not_repeated_and_bounded_rule_caps_them():
    s = Scheduler(num_rungs=2, eta=3, directions=MAX2)  # bounded (default)
    early = [Result(0, (0.5, 0.5)), Result(1, (0.1, 0.1)), Result(2, (0.2, 0.2))]
    p = s.promotions([early, []], [set(), set()])
    assert [x.parent for x in p] == [0]
    # 0 was promoted; three better results arrive: k = 6/3 = 2, one slot left -> exactly one more
    later = early + [Result(3, (0.9, 0.9)), Result(4, (0.8, 0.8)), Result(5, (0.7, 0.7))]
    p = s.promotions([later, []], [set(), {0}])
    assert [x.parent for x in p] == [3]
    # plain ASHA promotes everything currently in the top k
    a = Scheduler(num_rungs=2, eta=3, directions=MAX2, rule="asha")
    assert [x.parent for x in a.promotions([later, []], [set(), {0}])] == [3, 4]


def test_yardsticks_always_promoted_and_never_take_a_slot():
    s = Scheduler(num_rungs=3, eta=3, directions=MAX2)
    res = [Result(0, (0.9, 0.1), BASELINE), Result(1, (0.5, 0.5), REFERENCE), *staircase(1, 3, start=2)]
    p = s.promotions([res, [], []], [set(), set(), set()])
    kinds = sorted((x.parent, x.kind) for x in p)
    assert (0, BASELINE) in kinds and (1, REFERENCE) in kinds
    assert len([x for x in p if x.kind == SEARCH]) == 1  # k = 3 search results / 3
    # a yardstick at rung 1 goes on to rung 2 as well, before anything at lower rungs
    p2 = s.promotions([res, [Result(0, (0.9, 0.1), BASELINE)], []], [set(), {0, 1, 3}, set()])
    assert p2[0].rung == 2 and p2[0].kind == BASELINE


def test_finalize_promotes_each_front_once_lower_rungs_settled():
    s = Scheduler(num_rungs=3, eta=3, directions=MAX2)
    r0 = staircase(2, 3)  # front {0,1,2}
    # rung 0 busy: no front promotion yet
    p = s.promotions([r0, [], []], [set(), {0, 1}, set()], finalize=True, busy=[True, False, False])
    assert {x.reason for x in p} == set()
    p = s.promotions([r0, [], []], [set(), {0, 1}, set()], finalize=True, busy=[False, False, False])
    assert [(x.rung, x.parent, x.reason) for x in p] == [(1, 2, "front")]
    # rung 1's front goes to the full rung only when nothing is pending below
    r1 = [Result(0, (0.7, 0.7)), Result(1, (0.2, 0.9)), Result(2, (0.1, 0.1))]
    p = s.promotions([r0, r1, []], [set(), {0, 1, 2}, set()], finalize=True, busy=[False, False, False])
    assert sorted(x.parent for x in p if x.rung == 2) == [0, 1]


def test_synthetic_successive_halving_keeps_the_true_front():
    """Noisy low rungs, exact top rung: after simulated ASHA the top rung holds most of the true
    front, and the rung sizes shrink by η."""
    rng = np.random.default_rng(0)
    n = 81
    truth = rng.random((n, 2))
    truth = np.column_stack([truth[:, 0], 1 - truth[:, 0] ** 2 * truth[:, 1] - 0.5 * truth[:, 1]])
    noise = [0.05, 0.02, 0.0]
    s = Scheduler(num_rungs=3, eta=3, directions=MAX2)
    rungs: list[list[Result]] = [[], [], []]
    mapping: list[dict[int, int]] = [{}, {}, {}]  # trial number at rung -> config id
    claimed: list[set[int]] = [set(), set(), set()]
    order = list(range(n))
    while True:
        p = s.promotions(rungs, claimed, finalize=not order, busy=[False] * 3)
        if p:
            x = p[0]
            claimed[x.rung].add(x.parent)
            cfg = mapping[x.rung - 1][x.parent]
            num = len(rungs[x.rung])
            mapping[x.rung][num] = cfg
            vals = truth[cfg] + rng.normal(0, noise[x.rung], 2)
            rungs[x.rung].append(Result(num, tuple(vals)))
            continue
        if not order:
            break
        cfg = order.pop(0)
        num = len(rungs[0])
        mapping[0][num] = cfg
        rungs[0].append(Result(num, tuple(truth[cfg] + rng.normal(0, noise[0], 2))))
    sizes = [len(r) for r in rungs]
    assert sizes[0] == 81 and 27 <= sizes[1] <= 27 + 15 and sizes[2] <= sizes[1] // 2 + 10
    true_front = set(non_dominated_sort(to_minimization(truth, MAX2))[0].tolist())
    top_cfgs = {mapping[2][r.number] for r in rungs[2]}
    assert len(true_front & top_cfgs) >= 0.6 * len(true_front)


def test_bad_arguments():
    with pytest.raises(ValueError):
        Scheduler(num_rungs=2, eta=1, directions=MAX2)
    with pytest.raises(ValueError):
        Scheduler(num_rungs=0, eta=3, directions=MAX2)
    with pytest.raises(ValueError):
        Scheduler(num_rungs=2, eta=3, directions=MAX2).promotions([[]], [set()])


def test_finalize_skips_duplicates_of_promoted_points():
    s = Scheduler(num_rungs=2, eta=3, directions=MAX2)
    same = [Result(i, (0.5, 0.5)) for i in range(4)]  # e.g. identical merges
    p = s.promotions([same, []], [set(), {0}], finalize=True, busy=[False, False])
    assert p == []  # 0 already carries that point to the next rung
    p = s.promotions([same, []], [set(), set()], finalize=True, busy=[False, False])
    assert [x.parent for x in p] == [0]  # top-1 by ⌊4/3⌋; its duplicates are not promoted again
