"""Parameter checking: defaults, types, ranges, model counts, clear messages."""

from __future__ import annotations

import pytest
import torch

from automerge.errors import RecipeError
from automerge.methods import METHODS, REQUIRED, get_method, random_noise

ALL = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
       "della", "della_linear", "slerp", "model_stock", "fisher",
       "nuslerp", "multislerp", "karcher", "sce", "arcee_fusion", "nearswap"]


def test_all_methods_registered():
    assert list(METHODS) == ALL
    for name, m in METHODS.items():
        assert m.name == name and m.doc
        assert m.mergekit_name == (None if name == "fisher" else name)
        assert m.random == (name.startswith(("dare", "della")))


# The defaults of docs/merge-methods.md's table / mergekit's registry.
DEFAULTS = {
    "linear": {"normalize": True},
    "task_arithmetic": {"normalize": False, "lambda": 1.0},
    "ties": {"normalize": True, "rescale": False, "lambda": 1.0},
    "dare_ties": {"normalize": False, "rescale": True, "rescale_mode": "l1"},
    "dare_linear": {"normalize": False, "rescale": True, "rescale_mode": "l1"},
    "breadcrumbs": {"normalize": False, "rescale": False},
    "breadcrumbs_ties": {"normalize": False, "rescale": False},
    "della": {"normalize": True, "rescale": True, "rescale_mode": "l1"},
    "della_linear": {"normalize": False, "rescale": True},
    "model_stock": {"filter_wise": False},
    "fisher": {"fisher_floor": 1e-6},
    "nuslerp": {"nuslerp_flatten": True, "nuslerp_row_wise": False, "use_base": True},
    "multislerp": {"normalize_weights": True, "eps": 1e-8, "use_base": True},
    "karcher": {"max_iter": 10, "tol": 1e-5, "use_base": True},
    "sce": {"select_topk": 1.0},
}
MODEL_DEFAULTS = {
    "ties": {"density": 1.0},
    "breadcrumbs": {"density": 1.0, "gamma": 0.01},
    "della": {"density": 1.0, "epsilon": 0.15},
    "fisher": {"weight": 1.0},
}


@pytest.mark.parametrize("name", ALL)
def test_defaults(name):
    m = get_method(name)
    needs = {p.name: 0.5 for p in m.params if p.required}
    g_req = {k: v for k, v in needs.items() if not m.param(k).per_model}
    pm_req = {k: v for k, v in needs.items() if m.param(k).per_model}
    g, pm = m.check_params(g_req, [dict(pm_req) for _ in range(m.min_models)])
    for key, value in DEFAULTS.get(name, {}).items():
        assert g[key] == value, key
    for key, value in MODEL_DEFAULTS.get(name, {}).items():
        assert all(row[key] == value for row in pm), key
    # Every default passes its own check.
    for p in m.params:
        if p.default is not REQUIRED:
            assert p.check(p.default, method=name) == p.default


def test_weight_is_required_as_in_mergekit():
    with pytest.raises(RecipeError, match=r"ties: parameter 'weight' is required for model 'code'"):
        get_method("ties").check_params({}, [{"density": 0.5}], model_names=["code"])
    with pytest.raises(RecipeError, match=r"slerp: parameter 't' is required"):
        get_method("slerp").check_params({}, [{}])


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_density_out_of_range(density):
    with pytest.raises(RecipeError) as err:
        get_method("ties").check_params({}, [{"weight": 1, "density": density}], model_names=["code"])
    msg = str(err.value)
    assert "ties" in msg and "'density'" in msg and "model 'code'" in msg and repr(density) in msg
    assert "(0, 1]" in msg


def test_other_ranges_named_in_messages():
    cases = [
        ("slerp", {"t": 1.5}, [{}], "'t'", "[0, 1]"),
        ("breadcrumbs", {}, [{"weight": 1, "gamma": 1.0}], "'gamma'", "[0, 1)"),
        ("della", {}, [{"weight": 1, "epsilon": -0.1}], "'epsilon'", "[0, 0.5)"),
        ("dare_ties", {"rescale_mode": "l2"}, [{"weight": 1}], "'rescale_mode'", "'l1', 'inverse_prob'"),
        ("ties", {"normalize": "yes"}, [{"weight": 1}], "'normalize'", "true or false"),
        ("ties", {"lambda": float("inf")}, [{"weight": 1}], "'lambda'", "any finite float"),
        ("fisher", {}, [{"weight": -1}], "'weight'", "[0, inf)"),
        ("fisher", {"fisher_floor": 0}, [{}], "'fisher_floor'", "(0, 1]"),
    ]
    for name, params, pm, param, allowed in cases:
        with pytest.raises(RecipeError) as err:
            get_method(name).check_params(params, pm)
        assert param in str(err.value) and allowed in str(err.value) and name in str(err.value)


def test_della_density_epsilon_combination():
    m = get_method("della")
    with pytest.raises(RecipeError, match=r"della: model 'b': density 0.1 \+/- epsilon 0.15 must lie in \(0, 1\)"):
        m.check_params({}, [{"weight": 1, "density": 0.5}, {"weight": 1, "density": 0.1}], model_names=["a", "b"])
    with pytest.raises(RecipeError, match="della_linear"):
        get_method("della_linear").check_params({}, [{"weight": 1, "density": 0.9, "epsilon": 0.1}])
    m.check_params({}, [{"weight": 1, "density": 1.0}])  # density 1 prunes nothing: no constraint


def test_zero_weight_sum_is_an_error_for_normalising_methods():
    with pytest.raises(RecipeError, match=r"linear: the weights .* sum to 0.*normalize: false"):
        get_method("linear").check_params({}, [{"weight": 1.0}, {"weight": -1.0}])
    get_method("linear").check_params({"normalize": False}, [{"weight": 1.0}, {"weight": -1.0}])
    with pytest.raises(RecipeError, match=r"fisher: the weights"):
        get_method("fisher").check_params({}, [{"weight": 0.0}, {"weight": 0.0}])


def test_zero_weight_sum_task_arithmetic_follows_mergekit():
    # mergekit divides by 1 instead of ~0 for the no-consensus family: finite, documented.
    m = get_method("task_arithmetic")
    base, deltas = torch.zeros(4), torch.ones(2, 4)
    out = m.merge_tensor(base, deltas, per_model={"weight": [1.0, -1.0]}, params={"normalize": True})
    assert torch.isfinite(out).all()


def test_model_counts():
    with pytest.raises(RecipeError, match=r"slerp merges the base with exactly 1 specialist.*got 2.*t=0"):
        get_method("slerp").check_params({"t": 0.5}, [{}, {}])
    with pytest.raises(RecipeError, match=r"model_stock merges the base with at least 2 .*got 1"):
        get_method("model_stock").check_params({}, [{}])
    with pytest.raises(RecipeError, match=r"at least 1"):
        get_method("ties").check_params({}, [])


def test_unknown_names():
    with pytest.raises(RecipeError, match=r"unknown merge method 'tie'.*did you mean 'ties'.*linear, task_arithmetic"):
        get_method("tie")
    with pytest.raises(RecipeError, match=r"ties: unknown parameter 'desnity'.*did you mean 'density'.*known parameters:"):
        get_method("ties").check_params({"desnity": 0.5}, [{"weight": 1}])
    with pytest.raises(RecipeError, match=r"ties: unknown parameter 'gamma' of model '0'; known per-model parameters: density, weight"):
        get_method("ties").check_params({}, [{"weight": 1, "gamma": 0.1}])
    with pytest.raises(RecipeError, match=r"'lambda' is a global parameter"):
        get_method("ties").check_params({}, [{"weight": 1, "lambda": 0.1}])


def test_per_model_parameter_given_globally_applies_to_every_model():
    g, pm = get_method("ties").check_params({"density": 0.3, "weight": 0.5}, [{"density": 0.7}, {}])
    assert "density" not in g and "weight" not in g
    assert pm == [{"weight": 0.5, "density": 0.7}, {"weight": 0.5, "density": 0.3}]


def test_values_are_converted():
    g, pm = get_method("ties").check_params({"lambda": 2}, [{"weight": 1, "density": torch.tensor(0.5)}])
    assert type(g["lambda"]) is float and type(pm[0]["weight"]) is float and pm[0]["density"] == 0.5


def test_merge_tensor_accepts_rows_or_columns_and_checks_inputs():
    m = get_method("ties")
    base, deltas = torch.randn(5, 4), torch.randn(2, 5, 4)
    rows = [{"weight": 1.0, "density": 0.5}, {"weight": 0.5, "density": 0.3}]
    cols = {"weight": [1.0, 0.5], "density": [0.5, 0.3]}
    assert torch.equal(m.merge_tensor(base, deltas, per_model=rows, params={}),
                       m.merge_tensor(base, deltas, per_model=cols, params={}))
    with pytest.raises(ValueError, match="3 values for 2 models"):
        m.merge_tensor(base, deltas, per_model={"weight": [1, 1, 1]}, params={})
    with pytest.raises(ValueError, match="must be"):
        m.merge_tensor(base, deltas[:, :3], per_model=rows, params={})
    with pytest.raises(RecipeError, match="density"):
        m.merge_tensor(base, deltas, per_model={"weight": [1, 1], "density": [0.5, 2.0]}, params={})


def test_random_methods_need_noise_and_fisher_needs_fisher():
    base, deltas = torch.randn(5, 4), torch.randn(2, 5, 4)
    pm = {"weight": [1.0, 1.0], "density": [0.5, 0.5]}
    for name in ("dare_ties", "dare_linear", "della", "della_linear"):
        with pytest.raises(ValueError, match="random_noise"):
            get_method(name).merge_tensor(base, deltas, per_model=pm, params={}, tensor_name="w")
        with pytest.raises(ValueError, match="random_noise"):  # wrong shape
            get_method(name).merge_tensor(base, deltas, per_model=pm, params={}, noise=torch.rand(1, 5, 4))
    with pytest.raises(ValueError, match="fisher"):
        get_method("fisher").merge_tensor(base, deltas, per_model={"weight": [1.0, 1.0]}, params={})
    noise = random_noise(deltas.shape, seed=0, tensor_name="w")
    get_method("dare_ties").merge_tensor(base, deltas, per_model=pm, params={}, noise=noise)


SECOND_WAVE = ["nuslerp", "multislerp", "karcher", "sce", "arcee_fusion", "nearswap"]


@pytest.mark.parametrize("name", SECOND_WAVE)
def test_parameters_and_defaults_are_mergekits(name):
    """Same parameter names and defaults as mergekit 0.1.5's spec (use_base stands for base_model;
    sce's int8_mask only changes mergekit's mask storage, not the result)."""
    registry = pytest.importorskip("mergekit.merge_methods.registry")
    from mergekit.merge_methods.base import MISSING

    spec = registry.get(name).spec
    theirs = {p.name: (None if p.default is MISSING else p.default) for p in spec.parameters}
    theirs.pop("int8_mask", None)
    ours = {p.name: (None if p.required else p.default) for p in get_method(name).params if p.name != "use_base"}
    assert ours == theirs


@pytest.mark.parametrize("name,params,per_model,fragment", [
    ("nuslerp", {}, [{"weight": 1.0}], "exactly 2"),
    ("nuslerp", {}, [{"weight": 1.0}] * 3, "exactly 2"),
    ("nuslerp", {}, [{"weight": 1.0}, {}], "'weight' is required"),
    ("multislerp", {}, [{"weight": 1.0}, {"weight": -1.0}], "sum to 0"),
    ("multislerp", {"eps": 0.0}, [{"weight": 1.0}], "'eps'"),
    ("karcher", {"max_iter": 0}, [{}], "'max_iter'"),
    ("karcher", {"tol": 0.5, "max_iter": 2.5}, [{}], "'max_iter'"),
    ("sce", {"select_topk": 1.5}, [{}], "'select_topk'"),
    ("sce", {}, [{"weight": 1.0}], "unknown parameter 'weight'"),
    ("arcee_fusion", {}, [{}, {}], "exactly 1"),
    ("nearswap", {}, [{}], "'t' is required"),
    ("nearswap", {"t": -0.1}, [{}], "'t'"),
])
def test_second_wave_parameters_are_checked(name, params, per_model, fragment):
    with pytest.raises(RecipeError, match=fragment):
        get_method(name).check_params(params, per_model)
