"""The compiled one-pass kernels (methods._compiled) against the eager ones, and the fallback.

The compiled pass runs from a method's second apply on; AUTOMERGE_COMPILE=0 (set for the rest
of the suite by conftest) keeps the eager kernels. Tolerances: see methods/_compiled.py.
"""

from __future__ import annotations

import logging

import pytest
import torch

from automerge.engine import ResidentMerger
from automerge.methods import _compiled
from test_engine import live, recipe, zoo  # noqa: F401 - zoo is a fixture

# Sign election, masks and the final add in the same order as eager: bit for bit.
EXACT = {"ties", "breadcrumbs_ties"}
# One rounding per term differs (eager's add with alpha is an FMA) or the L1 rescale sums in
# another order (DARE, DELLA): fp32 relative 2^-23 per op, a few ulps in all.
COMPILED = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
            "della", "della_linear"]


@pytest.fixture
def compile_on(monkeypatch):
    monkeypatch.setenv(_compiled.ENV, "1")
    monkeypatch.setattr(_compiled, "_compiled", {})
    monkeypatch.setattr(_compiled, "_warned", False)
    monkeypatch.setattr(_compiled, "SMALL", 0)  # the tiny zoo's tensors are all small


def merger_for(zoo, dtype="float32") -> ResidentMerger:  # noqa: F811
    return ResidentMerger(base=zoo["base"], specialists={"code": zoo["code"], "lang": zoo["lang"]}, dtype=dtype)


def eager(zoo, r, dtype="float32", monkeypatch=None) -> dict[str, torch.Tensor]:  # noqa: F811
    monkeypatch.setenv(_compiled.ENV, "0")
    m = merger_for(zoo, dtype)
    m.apply(r)
    m.apply(r)
    monkeypatch.setenv(_compiled.ENV, "1")
    return live(m)


@pytest.mark.parametrize("method", COMPILED)
def test_compiled_equals_eager(method, zoo, compile_on, monkeypatch):  # noqa: F811
    params = {} if method == "linear" else {"lambda": 1.0 if method in EXACT else 0.9}
    r = recipe(zoo, method, seed=5, **params)
    expected = eager(zoo, r, monkeypatch=monkeypatch)
    m = merger_for(zoo)
    m.apply(r)  # eager: the first apply of a method never compiles
    assert not _compiled._compiled
    m.apply(r)
    plan = _compiled.plan_for(method, 2, {"rescale": False})
    assert _compiled._compiled[("merge_pass", plan, "cpu")] is not None, "the second apply ran compiled"
    got = live(m)
    for name, value in expected.items():
        if method in EXACT:
            assert torch.equal(got[name], value), name
        else:
            torch.testing.assert_close(got[name], value, rtol=4e-6, atol=1e-7, msg=name)


def test_compiled_bf16_storage_equals_eager(zoo, compile_on, monkeypatch):  # noqa: F811
    """bf16 resident tensors: the sign election's exact cancellations elect + as eager does."""
    r = recipe(zoo, "ties", seed=5)
    expected = eager(zoo, r, "bfloat16", monkeypatch)
    m = merger_for(zoo, "bfloat16")
    m.apply(r)
    m.apply(r)
    got = live(m)
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_compile_failure_falls_back_once_with_same_weights(zoo, compile_on, monkeypatch, caplog):  # noqa: F811
    """No compiler (or a broken one): one warning, then the eager kernels, same weights."""
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("no C++ compiler found")

    r_ties, r_lin = recipe(zoo, "ties", seed=5), recipe(zoo, "task_arithmetic", seed=5)
    expected = {k: eager(zoo, r, monkeypatch=monkeypatch) for k, r in (("ties", r_ties), ("ta", r_lin))}
    monkeypatch.setattr(torch, "compile", broken)
    m = merger_for(zoo)
    with caplog.at_level(logging.WARNING, logger="automerge.compile"):
        for _ in range(3):
            m.apply(r_ties)
        ties = live(m)
        m.apply(r_lin)
        m.apply(r_lin)
    assert calls, "compilation was attempted"
    warnings = [rec for rec in caplog.records if rec.name == "automerge.compile"]
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0].getMessage()
    assert all(torch.equal(ties[k], v) for k, v in expected["ties"].items())
    assert all(torch.equal(v, expected["ta"][k]) for k, v in live(m).items())


def test_failure_on_first_call_falls_back(zoo, compile_on, monkeypatch, caplog):  # noqa: F811
    """torch.compile fails lazily, at the first call of the compiled function: same fallback."""
    def lazy_failure(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: CppCompileError")
        return run

    r = recipe(zoo, "dare_ties", seed=5)
    expected = eager(zoo, r, monkeypatch=monkeypatch)
    monkeypatch.setattr(torch, "compile", lazy_failure)
    m = merger_for(zoo)
    with caplog.at_level(logging.WARNING, logger="automerge.compile"):
        m.apply(r)
        m.apply(r)
        m.apply(r)
    assert len([rec for rec in caplog.records if rec.name == "automerge.compile"]) == 1
    assert all(torch.equal(v, expected[k]) for k, v in live(m).items())


def test_compile_off_never_compiles(zoo, monkeypatch):  # noqa: F811
    monkeypatch.setenv(_compiled.ENV, "0")
    monkeypatch.setattr(_compiled, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled with AUTOMERGE_COMPILE=0"))
    m = merger_for(zoo)
    r = recipe(zoo, "ties", seed=5)
    m.apply(r)
    m.apply(r)
