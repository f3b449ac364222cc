"""Properties every registered method must have. A new method must add itself to CONFIGS."""

from __future__ import annotations

import pytest
import torch

from automerge.methods import METHODS, random_noise

# name -> (global params, per-model params of model i, number of specialists)
CONFIGS = {
    "linear": ({}, lambda i: {"weight": [0.6, 0.4, 0.3][i]}, 3),
    "task_arithmetic": ({"lambda": 0.8}, lambda i: {"weight": [0.6, 0.4, 0.3][i]}, 3),
    "ties": ({}, lambda i: {"weight": 1.0, "density": [0.3, 0.5, 0.8][i]}, 3),
    "dare_ties": ({}, lambda i: {"weight": 0.7, "density": [0.3, 0.5, 0.8][i]}, 3),
    "dare_linear": ({}, lambda i: {"weight": 0.7, "density": [0.3, 0.5, 0.8][i]}, 3),
    "breadcrumbs": ({}, lambda i: {"weight": 0.7, "density": 0.6, "gamma": 0.05}, 3),
    "breadcrumbs_ties": ({}, lambda i: {"weight": 0.7, "density": 0.6, "gamma": 0.05}, 3),
    "della": ({}, lambda i: {"weight": 1.0, "density": 0.5, "epsilon": 0.1}, 3),
    "della_linear": ({}, lambda i: {"weight": 0.5, "density": 0.5, "epsilon": 0.1}, 3),
    "slerp": ({"t": 0.4}, lambda i: {}, 1),
    "model_stock": ({}, lambda i: {}, 3),
    "fisher": ({}, lambda i: {"weight": [1.0, 2.0, 0.5][i]}, 3),
    "nuslerp": ({}, lambda i: {"weight": [0.6, 0.4][i]}, 2),
    "multislerp": ({}, lambda i: {"weight": [0.6, 0.4, 0.3][i]}, 3),
    "karcher": ({}, lambda i: {}, 3),
    "sce": ({"select_topk": 0.5}, lambda i: {}, 3),
    "arcee_fusion": ({}, lambda i: {}, 1),
    "nearswap": ({"t": 0.01}, lambda i: {}, 1),
}

# All weight on specialist 0 (or its equivalent): the result must be specialist 0 itself.
ONE_MODEL = {
    "linear": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "task_arithmetic": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "ties": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "dare_ties": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "dare_linear": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "breadcrumbs": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "breadcrumbs_ties": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "della": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "della_linear": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "slerp": ({"t": 1.0}, [{}]),
    "model_stock": ({}, [{}, {}]),  # with identical specialists (see the test)
    "fisher": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "nuslerp": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "multislerp": ({}, [{"weight": 1.0}, {"weight": 0.0}]),
    "karcher": ({"use_base": False}, [{}, {}]),  # with identical specialists (see the test)
    "sce": ({}, [{}]),  # no weights: one specialist alone
    # Keeps only the entries whose importance is an outlier: no setting takes the whole model.
    "arcee_fusion": None,
    "nearswap": ({"t": 1e9}, [{}]),  # every entry within t of the base
}

SHAPES = [(), (1,), (13,), (8, 6), (2, 3, 4)]


def test_every_method_has_a_conformance_config():
    assert set(CONFIGS) == set(METHODS) == set(ONE_MODEL)
    assert [n for n, v in ONE_MODEL.items() if v is None] == ["arcee_fusion"]


def inputs(shape, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    deltas = 0.05 * torch.randn((k, *shape), generator=g)
    return base, deltas


def call(name, base, deltas, params, per_model, tensor_name="model.layers.0.mlp.up_proj.weight"):
    k = deltas.shape[0]
    return METHODS[name].merge_tensor(
        base, deltas, per_model=per_model, params=params,
        noise=random_noise(deltas.shape, seed=0, tensor_name=tensor_name),
        fisher=torch.rand(deltas.shape, generator=torch.Generator().manual_seed(k)),
        tensor_name=tensor_name,
    )


def typical(name):
    params, row, k = CONFIGS[name]
    return params, [row(i) for i in range(k)], k


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_shape_dtype_finite_and_inputs_untouched(name, shape, dtype):
    params, pm, k = typical(name)
    base, deltas = inputs(shape, k, dtype)
    base0, deltas0 = base.clone(), deltas.clone()
    out = call(name, base, deltas, params, pm)
    assert out.shape == base.shape and out.dtype == base.dtype
    assert torch.isfinite(out.float()).all()
    assert torch.equal(base, base0) and torch.equal(deltas, deltas0)


@pytest.mark.parametrize("name", list(METHODS))
def test_deterministic(name):
    params, pm, k = typical(name)
    base, deltas = inputs((16, 12), k)
    assert torch.equal(call(name, base, deltas, params, pm), call(name, base, deltas, params, pm))


@pytest.mark.parametrize("name", list(METHODS))
def test_no_task_vectors_give_the_base(name):
    params, pm, k = typical(name)
    base, _ = inputs((16, 12), k)
    out = call(name, base, torch.zeros(k, 16, 12), params, pm)
    assert torch.allclose(out, base, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in METHODS if ONE_MODEL[n] is not None])
def test_all_weight_on_one_model_gives_that_model(name):
    params, pm = ONE_MODEL[name]
    base, deltas = inputs((16, 12), len(pm), seed=1)
    if name in ("model_stock", "karcher"):
        deltas = deltas[:1].expand(len(pm), -1, -1)
    out = call(name, base, deltas, params, pm)
    assert torch.allclose(out, base + deltas[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.random])
def test_random_methods_are_keyed_by_tensor_name(name):
    params, pm, k = typical(name)
    base, deltas = inputs((32, 16), k)
    a = call(name, base, deltas, params, pm, tensor_name="model.layers.0.self_attn.q_proj.weight")
    b = call(name, base, deltas, params, pm, tensor_name="model.layers.1.self_attn.q_proj.weight")
    assert torch.equal(a, call(name, base, deltas, params, pm, tensor_name="model.layers.0.self_attn.q_proj.weight"))
    assert not torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", list(METHODS))
def test_same_result_on_gpu(name):
    params, pm, k = typical(name)
    base, deltas = inputs((64, 48), k)
    noise = random_noise(deltas.shape, seed=0, tensor_name="w")
    fisher = torch.rand(deltas.shape, generator=torch.Generator().manual_seed(0))
    cpu = METHODS[name].merge_tensor(base, deltas, per_model=pm, params=params, noise=noise, fisher=fisher)
    gpu = METHODS[name].merge_tensor(base.cuda(), deltas.cuda(), per_model=pm, params=params,
                                     noise=noise.cuda(), fisher=fisher.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
