"""Every method mergekit also has gives mergekit's result (fp32, same inputs) to <= 1e-5."""

from __future__ import annotations

import pytest
import torch

from automerge.methods import get_method, random_noise
from methods_helpers import make_inputs, mergekit_merge, rel_err

SHAPES = [(7,), (64,), (16, 24), (33, 17), (3, 4, 5)]
TOL = 1e-5


def ours(name, base, deltas, params, per_model, **kw):
    return get_method(name).merge_tensor(base, deltas, per_model=per_model, params=params, **kw)


def columns(per_model: list[dict]) -> dict:
    """mergekit wants per-model parameters as one list per name."""
    return {key: [m[key] for m in per_model] for key in per_model[0]}


WEIGHTS = {1: [[0.7]], 2: [[1.0, 1.0], [0.3, 0.8], [1.2, -0.4]], 3: [[0.5, 0.3, 0.9], [1.0, -0.5, 0.7]]}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("lam", [1.0, 0.6])
def test_task_arithmetic(shape, k, normalize, lam):
    base, xs, deltas = make_inputs(shape, k, seed=k)
    for weights in WEIGHTS[k]:
        pm = [{"weight": w} for w in weights]
        params = {"normalize": normalize, "lambda": lam}
        ref = mergekit_merge("task_arithmetic", base, xs, params | columns(pm))
        assert rel_err(ours("task_arithmetic", base, deltas, params, pm), ref, base) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("normalize,rescale", [(True, False), (False, False), (True, True)])
def test_ties(shape, k, normalize, rescale):
    base, xs, deltas = make_inputs(shape, k, seed=10 + k)
    for weights in WEIGHTS[k]:
        for densities in ([0.5] * k, [0.2, 0.9, 0.05][:k], [1.0, 0.3, 0.01][:k]):
            pm = [{"weight": w, "density": d} for w, d in zip(weights, densities)]
            params = {"normalize": normalize, "rescale": rescale, "lambda": 0.9}
            ref = mergekit_merge("ties", base, xs, params | columns(pm))
            assert rel_err(ours("ties", base, deltas, params, pm), ref, base) <= TOL


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.4])
def test_breadcrumbs(method, shape, k, gamma):
    base, xs, deltas = make_inputs(shape, k, seed=20 + k)
    for weights in WEIGHTS[k]:
        # 0.9 + gamma > 1 exercises the outlier cut shrinking to reach the density.
        for densities in ([0.5] * k, [0.9, 0.2, 0.7][:k], [0.05, 1.0, 0.3][:k]):
            pm = [{"weight": w, "density": d, "gamma": gamma} for w, d in zip(weights, densities)]
            for normalize, rescale in [(False, False), (True, True)]:
                params = {"normalize": normalize, "rescale": rescale, "lambda": 1.1}
                ref = mergekit_merge(method, base, xs, params | columns(pm))
                assert rel_err(ours(method, base, deltas, params, pm), ref, base) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear(shape, k, normalize):
    base, xs, deltas = make_inputs(shape, k, seed=30 + k)
    for weights in WEIGHTS[k]:
        pm = [{"weight": w} for w in weights]
        ref = mergekit_merge("linear", base, xs, {"normalize": normalize} | columns(pm))
        assert rel_err(ours("linear", base, deltas, {"normalize": normalize}, pm), ref, base) <= TOL


def _slerp_pairs():
    g = torch.Generator().manual_seed(5)
    for shape in SHAPES:
        v0 = torch.randn(shape, generator=g)
        yield "random", v0, torch.randn(shape, generator=g)
        yield "close", v0, v0 + 0.3 * torch.randn(shape, generator=g)
        yield "colinear", v0, 1.5 * v0 + 1e-4 * torch.randn(shape, generator=g)
        yield "antipodal", v0, -v0
        yield "zero_base", torch.zeros(shape), torch.randn(shape, generator=g)
        yield "tiny", 1e-10 * v0, 1e-10 * torch.randn(shape, generator=g)


@pytest.mark.parametrize("case", list(_slerp_pairs()), ids=lambda c: c[0] if isinstance(c, str) else None)
@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp(case, t):
    _, v0, v1 = case
    ref = mergekit_merge("slerp", v0, [v1], {"t": t})
    got = ours("slerp", v0, (v1 - v0).unsqueeze(0), {"t": t}, [{}])
    # v1 is rebuilt as base + delta in fp32, so compare on the weights' scale.
    scale = torch.maximum(v0.abs().max(), v1.abs().max())
    assert ((got - ref).abs().max() / scale).item() <= TOL


def test_slerp_matches_mergekit_kernel_directly():
    from mergekit.merge_methods.slerp import slerp as mk_slerp

    from automerge.methods import slerp

    for _, v0, v1 in _slerp_pairs():
        for t in (0.1, 0.7):
            ref = mk_slerp(torch.tensor([t]), v0.unsqueeze(0), v1.unsqueeze(0))[0]
            assert torch.allclose(slerp(v0, v1, t=t), ref, rtol=1e-6, atol=1e-7 * v0.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(shape, k, filter_wise):
    base, xs, deltas = make_inputs(shape, k, seed=40 + k)
    ref = mergekit_merge("model_stock", base, xs, {"filter_wise": filter_wise})
    got = ours("model_stock", base, deltas, {"filter_wise": filter_wise}, [{}] * k)
    assert rel_err(got, ref, base) <= TOL


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_singular_and_correlated(filter_wise):
    base, xs, deltas = make_inputs((6, 5), 2, seed=3)
    # Opposite task vectors: 1 + (N-1) c = 0 -> mergekit keeps the base.
    opposite = [base + deltas[0], base - deltas[0]]
    # Strongly correlated task vectors: t near 1.
    similar = [base + deltas[0], base + deltas[0] + 0.01 * deltas[1]]
    for xs in (opposite, similar):
        d = torch.stack([x - base for x in xs])
        ref = mergekit_merge("model_stock", base, xs, {"filter_wise": filter_wise})
        got = ours("model_stock", base, d, {"filter_wise": filter_wise}, [{}, {}])
        assert rel_err(got, ref, base) <= TOL


# ---------------------------------------------------------------- random methods, with mergekit drawing our mask


DARE_CASES = [
    ("dare_ties", {}),
    ("dare_linear", {}),
    ("dare_ties", {"normalize": True, "rescale": False}),
    ("dare_linear", {"normalize": True, "lambda": 0.7}),
]


@pytest.mark.parametrize("method,params", DARE_CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_dare_same_mask_as_mergekit(method, params, shape, k, patch_bernoulli):
    base, xs, deltas = make_inputs(shape, k, seed=50 + k)
    noise = random_noise(deltas.shape, seed=7, tensor_name="t")
    for weights in WEIGHTS[k]:
        pm = [{"weight": w, "density": d} for w, d in zip(weights, [0.5, 0.2, 0.9][:k])]
        got = ours(method, base, deltas, params, pm, noise=noise)
        patched = patch_bernoulli(noise)
        ref = mergekit_merge(method, base, xs, params | columns(pm))
        assert not patched.rows  # mergekit drew one mask per model
        assert rel_err(got, ref, base) <= TOL


DELLA_CASES = [
    ("della", {}),
    ("della_linear", {}),
    ("della", {"normalize": False, "rescale": False}),
    ("della_linear", {"normalize": True, "lambda": 1.3}),
]


@pytest.mark.parametrize("method,params", DELLA_CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_della_same_mask_as_mergekit(method, params, shape, k, patch_bernoulli):
    base, xs, deltas = make_inputs(shape, k, seed=60 + k)
    noise = random_noise(deltas.shape, seed=8, tensor_name="t")
    for weights in WEIGHTS[k]:
        pm = [{"weight": w, "density": d, "epsilon": e} for w, d, e in zip(weights, [0.5, 0.3, 0.7], [0.15, 0.1, 0.25])][:k]
        got = ours(method, base, deltas, params, pm, noise=noise)
        patched = patch_bernoulli(noise)
        ref = mergekit_merge(method, base, xs, params | columns(pm))
        assert not patched.rows
        assert rel_err(got, ref, base) <= TOL


# ---------------------------------------------------------------- the second wave: nuslerp ... nearswap


def _pairs_for_slerp(shape, seed):
    """Task-vector pairs: random, close, (anti)parallel, one zero, and rows colinear only in part."""
    base, xs, deltas = make_inputs(shape, 2, seed=seed)
    d0, d1 = deltas[0], deltas[1]
    yield "random", base, d0, d1
    yield "close", base, d0, d0 + 0.05 * d1
    yield "parallel", base, d0, 2.0 * d0
    yield "antipodal", base, d0, -d0
    yield "zero", base, torch.zeros_like(d0), d1
    if len(shape) == 2:
        mixed = d1.clone()
        mixed[0] = 3.0 * d0[0]  # row 0 colinear, the rest not
        yield "row_colinear", base, d0, mixed


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
def test_nuslerp(shape, use_base, flatten, row_wise):
    for case, base, d0, d1 in _pairs_for_slerp(shape, seed=70):
        for weights in ([1.0, 1.0], [0.3, 0.8], [1.0, 0.0], [0.5, -0.5], [1.2, -0.4]):
            params = {"nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
            xs = [base + d0, base + d1]
            ref = mergekit_merge("nuslerp", base if use_base else None, xs, params | {"weight": weights})
            # Task vectors as the engine forms them, x - base in fp32 (antipodal pairs amplify rounding).
            got = ours("nuslerp", base, torch.stack([x - base for x in xs]), params | {"use_base": use_base},
                       [{"weight": w} for w in weights])
            assert rel_err(got, ref, base) <= TOL, (case, weights)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_multislerp(shape, k, use_base, normalize_weights):
    base, xs, deltas = make_inputs(shape, k, seed=80 + k)
    for weights in ([1.0] * k, [0.3, 0.8, 0.5, 0.1][:k], [1.0, -0.3, 0.6, 0.2][:k]):
        params = {"normalize_weights": normalize_weights}
        ref = mergekit_merge("multislerp", base if use_base else None, xs, params | {"weight": weights})
        got = ours("multislerp", base, deltas, params | {"use_base": use_base}, [{"weight": w} for w in weights])
        assert rel_err(got, ref, base) <= TOL, weights


def test_multislerp_antipodal_pair_falls_back_to_the_weighted_sum_as_mergekit():
    base, xs, deltas = make_inputs((6, 5), 2, seed=3)
    xs = [base + deltas[0], base - deltas[0]]
    ref = mergekit_merge("multislerp", base, xs, {"weight": [1.0, 1.0]})
    got = ours("multislerp", base, torch.stack([x - base for x in xs]), {}, [{"weight": 1.0}, {"weight": 1.0}])
    assert torch.allclose(got, ref, rtol=0, atol=1e-6 * base.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("use_base", [True, False])
def test_karcher(shape, k, use_base):
    base, xs, deltas = make_inputs(shape, k, seed=90 + k, scale=0.5)
    for max_iter, tol in ((10, 1e-5), (3, 1e-5), (50, 1e-7)):
        params = {"max_iter": max_iter, "tol": tol}
        ref = mergekit_merge("karcher", base if use_base else None, xs, params)
        got = ours("karcher", base, deltas, params | {"use_base": use_base}, [{}] * k)
        assert rel_err(got, ref, base) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.1, 0.0])
def test_sce(shape, k, select_topk):
    base, xs, deltas = make_inputs(shape, k, seed=100 + k)
    ref = mergekit_merge("sce", base, xs, {"select_topk": select_topk})
    got = ours("sce", base, deltas, {"select_topk": select_topk}, [{}] * k)
    assert rel_err(got, ref, base) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_arcee_fusion(shape):
    base, xs, deltas = make_inputs(shape, 1, seed=110)
    ref = mergekit_merge("arcee_fusion", base, xs, {})
    got = ours("arcee_fusion", base, deltas, {}, [{}])
    assert torch.allclose(got, ref, rtol=0, atol=TOL * deltas.abs().max().item())
    if base.numel() >= 64:
        kept = (got != base).float().mean().item()
        assert 0 < kept < 0.5  # a real selection of outliers, not all or nothing


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 1e-3, 0.05, 0.2, 10.0])
def test_nearswap(shape, t):
    base, xs, deltas = make_inputs(shape, 1, seed=120)
    ref = mergekit_merge("nearswap", base, xs, {"t": t})
    got = ours("nearswap", base, deltas, {"t": t}, [{}])
    assert rel_err(got, ref, base + deltas[0]) <= TOL
