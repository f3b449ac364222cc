"""Non-dominated sorting, hypervolume, contributions and ε-net order on known point sets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from automerge.pareto import (
    epsilon_net_order,
    greedy_hypervolume_order,
    hypervolume,
    hypervolume_contributions,
    mo_asha_order,
    non_dominated_sort,
    pareto_mask,
    pareto_ranks,
    to_minimization,
)


def test_to_minimization_negates_maximised_columns():
    Y = to_minimization([[1.0, 2.0]], ["maximize", "minimize"])
    assert Y.tolist() == [[-1.0, 2.0]]
    with pytest.raises(ValueError):
        to_minimization([[1.0]], ["up"])


def test_non_dominated_sort_known_fronts():
    # three staircases: front 0 = a, b, c; front 1 = d, e; front 2 = f; g duplicates a.
    Y = np.array([[1, 5], [2, 3], [4, 1], [3, 5], [5, 3], [6, 6], [1, 5]], dtype=float)
    fronts = non_dominated_sort(Y)
    assert [f.tolist() for f in fronts] == [[0, 1, 2, 6], [3, 4], [5]]
    assert pareto_mask(Y).tolist() == [True, True, True, False, False, False, True]
    assert pareto_ranks(Y).tolist() == [0, 0, 0, 1, 1, 2, 0]


def test_non_dominated_sort_matches_brute_force():
    rng = np.random.default_rng(0)
    Y = rng.integers(0, 6, size=(40, 3)).astype(float)
    ranks = pareto_ranks(Y)
    for i, j in itertools.permutations(range(len(Y)), 2):
        if np.all(Y[i] <= Y[j]) and np.any(Y[i] < Y[j]):
            assert ranks[i] < ranks[j]
    for f in non_dominated_sort(Y):  # no point in a front dominates another of the same front
        for i, j in itertools.permutations(f, 2):
            assert not (np.all(Y[i] <= Y[j]) and np.any(Y[i] < Y[j]))


def test_hypervolume_2d_exact():
    Y = np.array([[1, 3], [2, 2], [3, 1]], dtype=float)
    # staircase under ref (4, 4): 3*1 + 2*1 + 1*1 ... = columns: x in [1,2): 4-3=1 -> 1; [2,3): 2; [3,4): 3
    assert hypervolume(Y, [4, 4]) == pytest.approx(6.0)
    assert hypervolume(np.vstack([Y, [[3, 3]]]), [4, 4]) == pytest.approx(6.0)  # dominated point adds nothing
    assert hypervolume(np.array([[5.0, 0.0]]), [4, 4]) == 0.0  # outside the reference box
    assert hypervolume(np.zeros((0, 2)), [1, 1]) == 0.0


def test_hypervolume_3d_matches_monte_carlo():
    rng = np.random.default_rng(1)
    Y = rng.random((12, 3))
    ref = np.ones(3)
    exact = hypervolume(Y, ref)
    samples = rng.random((200_000, 3))
    dominated = np.zeros(len(samples), dtype=bool)
    for y in Y:
        dominated |= np.all(samples >= y, axis=1)
    assert exact == pytest.approx(dominated.mean(), abs=0.01)


def test_hypervolume_contributions_and_greedy_order():
    Y = np.array([[1, 3], [2, 2], [3, 1], [2.5, 2.5]], dtype=float)
    c = hypervolume_contributions(Y, [4, 4])
    assert c.tolist() == pytest.approx([1.0, 0.75, 1.0, 0.0])  # (2.5, 2.5) covers a quarter of (2, 2)'s box
    order = greedy_hypervolume_order(Y, [4, 4])
    assert order[0] == 1  # the middle point alone dominates the most (2*2 = 4)
    assert order[-1] == 3  # dominated point adds nothing: last


def test_epsilon_net_spreads_selection():
    # a dense cluster near (0, 1) and two far points: the net picks the spread first
    Y = np.array([[0.0, 1.0], [0.01, 0.99], [0.02, 0.98], [1.0, 0.0], [0.5, 0.5]])
    order = epsilon_net_order(Y).tolist()
    assert sorted(order) == list(range(5))
    assert set(order[:3]) == {0, 3, 4} or set(order[:3]) == {1, 3, 4} or set(order[:3]) == {2, 3, 4}
    assert order[0] == 4  # closest to the ideal point (0, 0) after scaling


@pytest.mark.parametrize("tie_break", ["hv", "epsnet"])
def test_mo_asha_order_is_fronts_first_and_deterministic(tie_break):
    rng = np.random.default_rng(2)
    Y = rng.random((30, 2))
    order = mo_asha_order(Y, tie_break)
    ranks = pareto_ranks(Y)
    assert sorted(order.tolist()) == list(range(30))
    assert np.all(np.diff(ranks[order]) >= 0)  # fronts in order
    assert mo_asha_order(Y, tie_break).tolist() == order.tolist()


def test_fast_2d_greedy_matches_the_general_greedy():
    from automerge import pareto

    rng = np.random.default_rng(3)
    a = np.sort(rng.random(25))
    Y = np.column_stack([a, 1 - a**0.7])  # one front (x up, y down)
    Y = np.vstack([Y, Y[4]])  # a duplicate
    ref = np.array([1.1, 1.1])
    fast = pareto._greedy_hv_front_2d(Y, ref)
    slow_left, chosen, current = list(range(len(Y))), [], 0.0
    while slow_left:
        gains = [hypervolume(Y[chosen + [i]], ref) - current for i in slow_left]
        j = max(range(len(slow_left)), key=lambda j: (round(gains[j], 12), -slow_left[j]))
        current += gains[j]
        chosen.append(slow_left.pop(j))
    assert fast.tolist() == chosen
