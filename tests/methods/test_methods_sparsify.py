"""Sparsifiers: mergekit parity, tie handling, cached statistics, random statistics."""

from __future__ import annotations

import pytest
import torch
from mergekit import sparsify as mk

from automerge.errors import RecipeError
from automerge.methods import (
    breadcrumbs,
    breadcrumbs_counts,
    breadcrumbs_thresholds,
    della_keep_prob,
    della_rank_norm,
    half_magnitude_at,
    half_magnitude_counts,
    magnitude_k,
    magnitude_threshold,
    random_noise,
    smallest_magnitudes,
    sparsify_breadcrumbs,
    sparsify_della,
    sparsify_magnitude,
    sparsify_random,
    ties,
)
from methods_helpers import make_inputs


def quantized_delta(shape, seed=0, dtype=torch.bfloat16):
    """A task vector as fine-tuned half-precision checkpoints give it: many equal magnitudes."""
    g = torch.Generator().manual_seed(seed)
    b = (0.02 * torch.randn(shape, generator=g)).to(dtype)
    x = (b.float() + 1e-3 * torch.randn(shape, generator=g)).to(dtype)
    return x.float() - b.float()


@pytest.mark.parametrize("shape", [(1,), (5,), (100,), (20, 30), (2, 3, 4)])
@pytest.mark.parametrize("density", [0.001, 0.1, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("rescale", [None, "l1"])
def test_magnitude_matches_mergekit(shape, density, rescale):
    d = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ref = mk.magnitude(d, density, rescale_norm=mk.RescaleNorm.l1 if rescale else None)
    assert torch.allclose(sparsify_magnitude(d, density=density, rescale=rescale), ref, rtol=1e-6, atol=0)


def test_magnitude_keeps_at_least_one_entry_like_mergekit():
    d = torch.tensor([0.1, -3.0, 0.5])
    # int(0.1 * 3) = 0, but mergekit 0.1.5 keeps max(1, .) entries.
    assert magnitude_k(3, 0.1) == 1
    assert sparsify_magnitude(d, density=0.1).tolist() == [0.0, -3.0, 0.0]
    assert sparsify_magnitude(d, density=0.1).tolist() == mk.magnitude(d, 0.1).tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5])
def test_magnitude_ties_all_kept_or_exactly_mergekits_count(dtype, density):
    d = quantized_delta((256, 128), dtype=dtype)
    n = d.numel()
    thr = magnitude_threshold(d.abs(), density)
    assert (d.abs() == thr).sum() > 1  # the case this test is about
    got = sparsify_magnitude(d, density=density, keep_ties=False)
    ref = mk.magnitude(d, density)
    k = magnitude_k(n, density)
    assert int((got != 0).sum()) == int((ref != 0).sum()) == k - int((d.abs().flatten().topk(k).values == 0).sum())
    # Same multiset of kept magnitudes (only positions of equal-magnitude entries may differ).
    assert torch.equal(got.abs().flatten().sort().values, ref.abs().flatten().sort().values)
    # Ties at the threshold are broken by index: the earliest tied entries are kept.
    tied = (d.abs() == thr).flatten().nonzero().squeeze(1)
    kept_tied = (got.flatten()[tied] != 0)
    assert torch.equal(kept_tied, kept_tied.sort(descending=True, stable=True).values)
    # The default keeps every tied entry instead.
    assert torch.equal(sparsify_magnitude(d, density=density) != 0, (d.abs() >= thr) & (d != 0))


def test_cached_magnitude_threshold_gives_same_result():
    base, xs, deltas = make_inputs((40, 30), 3, seed=2)
    densities = [0.2, 0.5, 0.8]
    thresholds = [magnitude_threshold(d.abs(), r) for d, r in zip(deltas, densities)]
    for d, r, t in zip(deltas, densities, thresholds):
        assert torch.equal(sparsify_magnitude(d, density=r, threshold=t), sparsify_magnitude(d, density=r))
    a = ties(base, deltas, weights=[1, 0.5, 0.7], densities=densities)
    b = ties(base, deltas, weights=[1, 0.5, 0.7], densities=densities, thresholds=thresholds)
    assert torch.equal(a, b)
    q = quantized_delta((64, 64))
    t = magnitude_threshold(q.abs(), 0.3)
    for keep_ties in (True, False):
        assert torch.equal(sparsify_magnitude(q, density=0.3, threshold=t, keep_ties=keep_ties),
                           sparsify_magnitude(q, density=0.3, keep_ties=keep_ties))


@pytest.mark.parametrize("n", [10, 57, 1000])
@pytest.mark.parametrize("density,gamma", [(0.5, 0.01), (0.5, 0.1), (0.9, 0.2), (0.05, 0.3), (0.3, 0.0)])
def test_breadcrumbs_matches_mergekit(n, density, gamma):
    d = torch.randn(n, generator=torch.Generator().manual_seed(n))
    ref = mk.magnitude_outliers(d, density, gamma=gamma)
    assert torch.equal(sparsify_breadcrumbs(d, density=density, gamma=gamma), ref)


def test_breadcrumbs_small_tensor_drops_no_outliers_instead_of_everything():
    # int(0.01 * 10) = 0 outliers: keep the 5 largest (mergekit < 0.1 zeroed the tensor here).
    d = torch.arange(1.0, 11.0)
    assert sparsify_breadcrumbs(d, density=0.5, gamma=0.01).tolist() == [0] * 5 + [6, 7, 8, 9, 10]
    # int(density * n) = 0 keeps nothing, as in mergekit.
    assert sparsify_breadcrumbs(d, density=0.05, gamma=0.01).abs().sum() == 0


@pytest.mark.parametrize("density,gamma", [(0.3, 0.05), (0.6, 0.1), (0.95, 0.1)])
def test_breadcrumbs_ties_and_cache(density, gamma):
    q = quantized_delta((128, 64), seed=3)
    lo, hi = breadcrumbs_thresholds(q.abs(), density=density, gamma=gamma)
    ref = mk.magnitude_outliers(q, density, gamma=gamma)
    exact = sparsify_breadcrumbs(q, density=density, gamma=gamma, keep_ties=False)
    assert torch.equal(exact.abs().flatten().sort().values, ref.abs().flatten().sort().values)
    every = sparsify_breadcrumbs(q, density=density, gamma=gamma)
    assert torch.equal(every != 0, (q.abs() >= lo) & (q.abs() <= hi) & (q != 0))
    for keep_ties, got in ((False, exact), (True, every)):
        cached = sparsify_breadcrumbs(q, density=density, gamma=gamma, thresholds=(lo, hi), keep_ties=keep_ties)
        assert torch.equal(cached, got)
    base = torch.zeros_like(q)
    deltas = torch.stack([q, quantized_delta((128, 64), seed=4)])
    kw = dict(weights=[1.0, 0.5], densities=[density] * 2, gammas=[gamma] * 2)
    th = [breadcrumbs_thresholds(d.abs(), density=density, gamma=gamma) for d in deltas]
    assert torch.equal(breadcrumbs(base, deltas, **kw), breadcrumbs(base, deltas, **kw, thresholds=th))


# ---------------------------------------------------------------- DARE


def test_dare_keeps_where_noise_below_density_and_rescales():
    d = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    noise = random_noise((50, 40), seed=1, tensor_name="w")
    out = sparsify_random(d, density=0.3, noise=noise)
    assert torch.equal(out != 0, noise < 0.3)
    assert torch.allclose(out.abs().sum(), d.abs().sum(), rtol=1e-5)  # mergekit's L1 rule
    raw = sparsify_random(d, density=0.3, noise=noise, rescale=None)
    assert torch.equal(raw, d * (noise < 0.3))
    paper = sparsify_random(d, density=0.3, noise=noise, rescale="inverse_prob")
    assert torch.allclose(paper, raw / 0.3)
    assert torch.equal(sparsify_random(d, density=1.0, noise=noise), d)


def test_dare_statistics_match_mergekit():
    d = torch.randn(400, 500, generator=torch.Generator().manual_seed(0))
    n = d.numel()
    for density in (0.1, 0.5, 0.9):
        ours = sparsify_random(d, density=density, noise=random_noise(d.shape, seed=3, tensor_name=str(density)))
        torch.manual_seed(11)
        theirs = mk.bernoulli(d, density, rescale_norm=mk.RescaleNorm.l1)
        sigma = (density * (1 - density) / n) ** 0.5
        f_ours, f_theirs = (ours != 0).float().mean().item(), (theirs != 0).float().mean().item()
        assert abs(f_ours - density) < 5 * sigma
        assert abs(f_ours - f_theirs) < 7 * sigma
        for out in (ours, theirs):
            assert abs(out.abs().sum().item() / d.abs().sum().item() - 1) < 1e-4


# ---------------------------------------------------------------- DELLA


def test_della_rank_norm_and_keep_prob_match_mergekit(monkeypatch):
    seen = []
    draw = torch.bernoulli

    def spy(probs, *args, **kwargs):  # record the keep probabilities mergekit draws with
        seen.append(probs.clone())
        return draw(probs)

    monkeypatch.setattr(torch, "bernoulli", spy)
    for shape in [(9,), (12, 7), (3, 5, 4)]:
        d = torch.randn(shape, generator=torch.Generator().manual_seed(4))
        mk.della_magprune(d, 0.4, 0.2)
        p = della_keep_prob(d.abs(), density=0.4, epsilon=0.2)
        assert torch.equal(p.reshape(seen[-1].shape), seen[-1])  # bit-identical
        cached = della_rank_norm(d.abs())
        noise = random_noise(shape, seed=0, tensor_name="x")
        assert torch.equal(
            sparsify_della(d, density=0.4, epsilon=0.2, noise=noise, rank_norm=cached),
            sparsify_della(d, density=0.4, epsilon=0.2, noise=noise),
        )


def test_della_single_entry_rows_use_density_instead_of_crashing():
    p = della_keep_prob(torch.tensor([0.7]), density=0.4, epsilon=0.1)
    assert torch.allclose(p, torch.tensor([0.4]))
    p = della_keep_prob(torch.randn(5, 1), density=0.4, epsilon=0.1)
    assert torch.allclose(p, torch.full((5, 1), 0.4))


def test_della_rejects_density_epsilon_outside_unit_interval():
    d = torch.randn(10)
    noise = random_noise((10,), seed=0, tensor_name="x")
    for density, eps in [(0.1, 0.15), (0.9, 0.15), (0.5, 0.5)]:
        with pytest.raises(RecipeError, match="epsilon"):
            sparsify_della(d, density=density, epsilon=eps, noise=noise)
    assert torch.equal(sparsify_della(d, density=1.0, epsilon=0.15, noise=noise), d)  # no pruning, no check


def test_della_statistics_match_mergekit():
    d = torch.randn(200, 1000, generator=torch.Generator().manual_seed(0))
    density, eps = 0.4, 0.2
    ours = sparsify_della(d, density=density, epsilon=eps, noise=random_noise(d.shape, seed=5, tensor_name="w"))
    torch.manual_seed(12)
    theirs = mk.della_magprune(d, density, eps, rescale_norm=mk.RescaleNorm.l1)
    assert abs((ours != 0).float().mean().item() - density) < 0.005
    # Kept fraction by magnitude decile within rows: rises from ~density-eps to ~density+eps, like mergekit's.
    decile = (della_rank_norm(d.abs()) * 9.999).floor()
    for q in range(10):
        sel = decile == q
        f_ours, f_theirs = (ours[sel] != 0).float().mean().item(), (theirs[sel] != 0).float().mean().item()
        assert abs(f_ours - f_theirs) < 0.025
        assert abs(f_ours - (density - eps + 2 * eps * (q + 0.5) / 10)) < 0.025
    for out in (ours, theirs):
        assert abs(out.abs().sum().item() / d.abs().sum().item() - 1) < 1e-4
    paper = sparsify_della(d, density=density, epsilon=eps, noise=random_noise(d.shape, seed=5, tensor_name="w"),
                           rescale="inverse_prob")
    p = della_keep_prob(d.abs(), density=density, epsilon=eps)
    assert torch.allclose(paper[ours != 0], (d / p)[ours != 0])


# ---------------------------------------------------------------- noise


def test_noise_is_reproducible_and_keyed_by_seed_and_tensor_name():
    a = random_noise((3, 20, 10), seed=0, tensor_name="model.layers.0.mlp.up_proj.weight")
    assert a.dtype == torch.float32 and a.shape == (3, 20, 10)
    assert 0 <= a.min() and a.max() < 1
    assert torch.equal(a, random_noise((3, 20, 10), seed=0, tensor_name="model.layers.0.mlp.up_proj.weight"))
    assert not torch.equal(a, random_noise((3, 20, 10), seed=0, tensor_name="model.layers.1.mlp.up_proj.weight"))
    assert not torch.equal(a, random_noise((3, 20, 10), seed=1, tensor_name="model.layers.0.mlp.up_proj.weight"))
    # Specialist i's noise does not depend on how many specialists there are.
    assert torch.equal(a[:2], random_noise((2, 20, 10), seed=0, tensor_name="model.layers.0.mlp.up_proj.weight"))


def test_noise_seed_is_a_stable_hash():
    # A fixed value: Python's salted hash() would change between processes.
    from automerge.methods import stable_seed

    assert stable_seed(0, "w") == stable_seed(0, "w")
    assert stable_seed(0, "w") == int.from_bytes(__import__("hashlib").sha256(b"0:w").digest()[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------- selection (thresholds without a sort)


def sorted_magnitudes(x: torch.Tensor, ranks) -> list[float]:
    """The reference: r-th smallest |x| by a full sort."""
    ordered = x.float().abs().flatten().sort().values
    return [ordered[r - 1].item() for r in ranks]


def selection_cases():
    g = torch.Generator().manual_seed(7)
    yield "gaussian", torch.randn(50_000, generator=g) * 1e-3
    yield "quantized", quantized_delta((300, 200), seed=5)  # fp32 differences of bf16 weights: many ties
    tied = torch.randn(40_000, generator=g)
    tied[::3] = 0.25  # a third of the entries share one magnitude, of both signs
    tied[1::3] = -0.25
    yield "tied", tied
    yield "zeros and signed zeros", torch.tensor([0.0, -0.0] * 20_000)
    yield "constant", torch.full((30_000,), -1.5)
    yield "extremes", torch.tensor([0.0, 1e-45, 1e-38, 3.0e38, float("inf"), -float("inf")] * 5000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("force_radix", [False, True])
def test_selection_equals_sort(dtype, force_radix, monkeypatch):
    import automerge.methods._sparsify as sparsify

    if force_radix:
        monkeypatch.setattr(sparsify, "_SORT_BELOW", 0)
        monkeypatch.setattr(sparsify, "_chunks", lambda flat: iter(flat.split(4099)))  # many, uneven chunks
    for label, x in selection_cases():
        x = x.to(dtype)
        n = x.numel()
        ranks = sorted({1, 2, n // 3, n // 2, n // 2 + 1, n - 1, n})
        assert smallest_magnitudes(x, ranks) == sorted_magnitudes(x, ranks), (label, dtype)
        many = list(range(1, n + 1, max(1, n // 60)))  # a whole density grid at once
        assert smallest_magnitudes(x, many) == sorted_magnitudes(x, many), (label, dtype)
        # d and |d| give the same magnitudes
        assert smallest_magnitudes(x.abs(), ranks[:2]) == smallest_magnitudes(x, ranks[:2]), label
        for density in (0.001, 0.3, 0.5, 0.9):
            k = magnitude_k(n, density)
            assert magnitude_threshold(x, density) == sorted_magnitudes(x, [n - k + 1])[0], (label, density)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("values", [[-2.0], [0.5, -0.5], [3.0, -1.0], [0.0, 0.0]])
def test_selection_tiny_tensors(dtype, values, monkeypatch):
    import automerge.methods._sparsify as sparsify

    monkeypatch.setattr(sparsify, "_SORT_BELOW", 0)
    x = torch.tensor(values, dtype=dtype)
    n = x.numel()
    assert smallest_magnitudes(x, range(1, n + 1)) == sorted_magnitudes(x, range(1, n + 1))
    assert smallest_magnitudes(x, []) == []
    # k = 0 keeps nothing (inf), k = n keeps everything (0.0), and one entry is always kept for density > 0
    assert magnitude_threshold(x, 0.0) == float("inf")
    assert magnitude_threshold(x, 1.0) == 0.0
    assert magnitude_threshold(x, 0.01) == (0.0 if n == 1 else x.float().abs().max().item())
    with pytest.raises(ValueError, match="outside 1..%d" % n):
        smallest_magnitudes(x, [n + 1])
    with pytest.raises(ValueError, match="rank 0"):
        smallest_magnitudes(x, [0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_selected_thresholds_keep_the_sorted_sets(dtype, monkeypatch):
    """Same kept sets as sort-based thresholds, for magnitude pruning and breadcrumbs alike."""
    import automerge.methods._sparsify as sparsify

    monkeypatch.setattr(sparsify, "_SORT_BELOW", 0)
    d = quantized_delta((256, 96), seed=9).to(dtype).float()
    a = d.abs()
    n = d.numel()
    ordered = a.flatten().sort().values
    for density in (0.1, 0.5, 0.77):
        k = magnitude_k(n, density)
        thr = ordered[n - k].item()
        assert torch.equal(sparsify_magnitude(d, density=density), d * (a >= thr))
        for gamma in (0.0, 0.05):
            n_bot, n_keep = breadcrumbs_counts(n, density, gamma)
            lo, hi = ordered[n_bot].item(), ordered[n_bot + n_keep - 1].item()
            assert breadcrumbs_thresholds(a, density=density, gamma=gamma) == (lo, hi)
            assert torch.equal(sparsify_breadcrumbs(d, density=density, gamma=gamma), d * ((a >= lo) & (a <= hi)))


def test_half_histogram_answers_every_rank():
    x = quantized_delta((128, 64), seed=2).to(torch.bfloat16)
    counts = half_magnitude_counts(x)
    n = x.numel()
    assert counts.dtype == torch.int32 and counts[-1].item() == n
    ranks = list(range(1, n + 1, 97)) + [n]
    assert half_magnitude_at(counts, x.dtype, ranks) == sorted_magnitudes(x, ranks)
    with pytest.raises(TypeError, match="float16/bfloat16"):
        half_magnitude_counts(x.float())
