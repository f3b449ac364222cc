"""Fisher-weighted averaging (pure tensor function)."""

from __future__ import annotations

import torch

from automerge.methods import fisher_merge, linear


def setup(k=3, shape=(10, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    deltas = 0.1 * torch.randn((k, *shape), generator=g)
    fisher = torch.rand((k, *shape), generator=g)
    return base, deltas, fisher


def test_formula():
    base, deltas, f = setup()
    w = torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1)
    x = base + deltas
    expected = (w * f * x).sum(0) / (w * f).sum(0)
    got = fisher_merge(base, deltas, fisher=f, weights=[1.0, 2.0, 0.5])
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_equal_fisher_is_the_weighted_mean():
    base, deltas, _ = setup()
    f = torch.full(deltas.shape, 0.3)
    got = fisher_merge(base, deltas, fisher=f, weights=[1.0, 2.0, 0.5])
    assert torch.allclose(got, linear(base, deltas, weights=[1.0, 2.0, 0.5]), rtol=1e-5, atol=1e-6)


def test_each_entry_follows_the_model_whose_fisher_dominates():
    base, deltas, _ = setup(k=2)
    pick_first = torch.rand(base.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    f = torch.stack([pick_first.float(), (~pick_first).float()]) * 1e3 + 1e-9
    got = fisher_merge(base, deltas, fisher=f, weights=[1.0, 1.0])
    expected = torch.where(pick_first, base + deltas[0], base + deltas[1])
    assert torch.allclose(got, expected, atol=1e-6)


def test_floor_is_relative_so_the_fishers_scale_does_not_matter():
    base, deltas, f = setup()
    f = f * (f > 0.7)  # many exact zeros: the floor matters
    a = fisher_merge(base, deltas, fisher=f, weights=[1.0, 1.0, 1.0])
    b = fisher_merge(base, deltas, fisher=f * 1e-9, weights=[1.0, 1.0, 1.0])
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_zero_fisher_falls_back_to_the_weighted_mean():
    base, deltas, _ = setup()
    got = fisher_merge(base, deltas, fisher=torch.zeros(deltas.shape), weights=[1.0, 2.0, 0.5])
    assert torch.allclose(got, linear(base, deltas, weights=[1.0, 2.0, 0.5]), rtol=1e-5, atol=1e-6)
    # Entries where every specialist's Fisher is zero follow the weighted mean too.
    f = torch.zeros(deltas.shape)
    f[:, 0] = 1.0
    got = fisher_merge(base, deltas, fisher=f, weights=[1.0, 2.0, 0.5])
    assert torch.allclose(got[1:], linear(base, deltas, weights=[1.0, 2.0, 0.5])[1:], rtol=1e-5, atol=1e-6)
