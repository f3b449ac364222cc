"""README "Differences from mergekit, on purpose" against what the two libraries actually do.

Each case runs automerge's method and mergekit 0.1.5's on one small tensor. A case where the
results differ must have its bullet in the section's list; a case where they are equal must not
(and the section's opening paragraph says it is equal). A bullet left behind after a fix, or a
difference nobody wrote down, fails here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from automerge.methods import get_method, random_noise
from methods_helpers import mergekit_merge, rel_err

README = Path(__file__).resolve().parents[2] / "README.md"
TOL = 1e-5


def section() -> tuple[str, str]:
    """(opening paragraph, bullet list) of the section."""
    text = README.read_text(encoding="utf-8")
    body = text.split("### Differences from mergekit, on purpose", 1)[1]
    body = re.split(r"^#{2,3} ", body, maxsplit=1, flags=re.M)[0]
    intro, _, rest = body.partition("\n- ")
    return intro, "- " + rest


def ours(name, base, deltas, params, per_model, **kw):
    return get_method(name).merge_tensor(base, deltas, per_model=per_model, params=params, **kw)


def _one(delta: list[float]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    base = torch.linspace(-1.0, 1.0, len(delta))
    d = torch.tensor([delta])
    return base, [base + d[0]], d


def ties_threshold_ties() -> bool:
    """|d| tied at the k-th largest: we keep every tied entry, mergekit exactly k of them."""
    base, xs, d = _one([4.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.5])  # density 0.5: k = 4, three 2s tie
    pm = [{"weight": 1.0, "density": 0.5}]
    got = ours("ties", base, d, {"lambda": 1.0}, pm)
    ref = mergekit_merge("ties", base, xs, {"lambda": 1.0, "weight": [1.0], "density": [0.5]})
    return rel_err(got, ref, base) > TOL


def tiny_tensor_tiny_density() -> bool:
    """int(density·n) = 0: both keep the largest entry (mergekit 0.1.5: k = max(1, ·))."""
    base, xs, d = _one([0.3, -0.9, 0.1, 0.5, -0.2, 0.05, 0.7])
    for method, extra in (("ties", {}), ("breadcrumbs_ties", {"gamma": 0.01})):
        pm = [{"weight": 1.0, "density": 0.1, **extra}]
        got = ours(method, base, d, {"lambda": 1.0}, pm)
        ref = mergekit_merge(method, base, xs, {"lambda": 1.0, "weight": [1.0], "density": [0.1],
                                                **{k: [v] for k, v in extra.items()}})
        if rel_err(got, ref, base) > TOL:
            return True
    return False


def breadcrumbs_no_outliers() -> bool:
    """int(γ·n) = 0: neither drops an outlier."""
    base, xs, d = _one([0.3, -0.9, 0.1, 0.5, -0.2, 0.05, 0.7])
    pm = [{"weight": 1.0, "density": 0.5, "gamma": 0.1}]
    got = ours("breadcrumbs", base, d, {"lambda": 1.0}, pm)
    ref = mergekit_merge("breadcrumbs", base, xs, {"lambda": 1.0, "weight": [1.0], "density": [0.5], "gamma": [0.1]})
    assert got.count_nonzero() != base.count_nonzero() or not torch.equal(got, base)
    return rel_err(got, ref, base) > TOL


def dare_masks_from_global_rng() -> bool:
    """Our DARE mask is a function of (seed, tensor name); mergekit's follows the global RNG."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(64, generator=g)
    d = 0.1 * torch.randn(1, 64, generator=g)
    pm = [{"weight": 1.0, "density": 0.5}]
    mk, am = [], []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        mk.append(mergekit_merge("dare_ties", base, [base + d[0]], {"weight": [1.0], "density": [0.5]}))
        am.append(ours("dare_ties", base, d, {}, pm, noise=random_noise(d.shape, seed=0, tensor_name="t")))
    assert torch.equal(am[0], am[1])  # ours ignores the global RNG
    return not torch.equal(mk[0], mk[1])


def compute_dtype() -> bool:
    """fp16 inputs: we merge in fp32 and round once; mergekit computes in fp16 (the config's dtype)."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(64, 64, generator=g).half()
    xs = [(base.float() + 0.05 * torch.randn(64, 64, generator=g)).half() for _ in range(3)]
    weights = [0.3, 0.45, 0.25]
    ref = mergekit_merge("task_arithmetic", base, xs, {"weight": weights, "lambda": 1.0})   # in fp16
    deltas = torch.stack([x.float() - base.float() for x in xs])
    got = ours("task_arithmetic", base.float(), deltas, {"lambda": 1.0}, [{"weight": w} for w in weights])
    return not torch.equal(got.half(), ref.half())


def multislerp_vanishing_mean() -> bool:
    """Three task vectors whose weighted mean direction vanishes: we give the weighted sum,
    mergekit raises (it falls back only for two)."""
    base = torch.zeros(3)
    d = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = ours("multislerp", base, d, {}, [{"weight": 1.0}] * 3)
    try:
        ref = mergekit_merge("multislerp", base, [base + x for x in d], {"weight": [1.0] * 3})
    except Exception:
        return True
    return rel_err(got, ref, base) > TOL or not torch.isfinite(ref).all()


def arcee_fusion_large_tensor() -> bool:
    """Above 10⁶ entries mergekit estimates the importance quantile from a random sample: two of its
    runs disagree (ours is exact, the same every run)."""
    g = torch.Generator().manual_seed(9)
    base = torch.randn(1100, 1000, generator=g)
    x = base + 0.1 * torch.randn(1100, 1000, generator=g)
    torch.manual_seed(0)
    a = mergekit_merge("arcee_fusion", base, [x], {})
    torch.manual_seed(1)
    b = mergekit_merge("arcee_fusion", base, [x], {})
    mine = [ours("arcee_fusion", base, (x - base)[None], {}, [{}]) for _ in range(2)]
    assert torch.equal(mine[0], mine[1])
    return not (torch.equal(a, b) and torch.equal(a, mine[0]))


@dataclass(frozen=True)
class Case:
    bullet: str  # regex that finds the case's bullet in the list
    equal_phrase: str  # regex the opening paragraph matches when the case is equal
    differs: Callable[[], bool]


CASES = {
    "ties-ties-at-threshold": Case(r"\*\*TIES magnitude pruning\*\*", r"(?!)", ties_threshold_ties),
    "k-is-0": Case(r"k = 0|tiny tensor", r"max\(1, int\(density·n\)\)", tiny_tensor_tiny_density),
    "breadcrumbs-gamma-n-0": Case(r"[Bb]readcrumbs", r"breadcrumbs with int\(γ·n\) = 0 drops no outliers",
                                  breadcrumbs_no_outliers),
    "dare-della-masks": Case(r"\*\*DARE/DELLA masks\*\*", r"(?!)", dare_masks_from_global_rng),
    "compute-dtype": Case(r"\*\*Compute dtype\*\*", r"(?!)", compute_dtype),
    "multislerp-vanishing-mean": Case(r"\*\*Multi-SLERP\*\*", r"(?!)", multislerp_vanishing_mean),
    "arcee-fusion-quantiles": Case(r"\*\*Arcee Fusion\*\*", r"(?!)", arcee_fusion_large_tensor),
}

# A bullet about what is imported rather than computed: the test that shows it, by name.
CHECKED_ELSEWHERE = {
    r"\*\*mergekit import\*\*": ("tests/test_mergekit_import.py",
                                  "test_a_filter_finer_than_a_layer_group_is_refused_naming_both_tensors"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_readme_differences_match_mergekit(name):
    case = CASES[name]
    intro, bullets = section()
    differs = case.differs()
    listed = re.search(case.bullet, bullets) is not None
    assert listed == differs, (f"{name}: automerge and mergekit {'differ' if differs else 'agree'}, but the README "
                               f"{'lists' if listed else 'does not list'} it under Differences from mergekit")
    if not differs:
        assert re.search(case.equal_phrase, intro.replace("\n", " ")), f"{name}: say in the intro that it is equal"


def test_every_bullet_is_checked():
    _, bullets = section()
    items = re.findall(r"^- \*\*(.+?)\*\*", bullets, re.M)
    assert items
    root = README.parent
    for pattern, (path, test) in CHECKED_ELSEWHERE.items():
        assert re.search(rf"^def {test}\(", (root / path).read_text(encoding="utf-8"), re.M), (path, test)
    for item in items:
        assert any(re.search(c.bullet, f"**{item}**") for c in CASES.values()) or any(
            re.search(p, f"**{item}**") for p in CHECKED_ELSEWHERE), f"bullet {item!r} has no case here"
