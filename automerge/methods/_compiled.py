"""The task-arithmetic family as one compiled pass per tensor (torch.compile).

    plan = plan_for("ties", k=2, params=params)           # what the code depends on
    merge = compiled(merge_pass, plan, device)             # None: compilation off or failed
    merge(out, base, deltas, noise, rank, scalars(...))    # flat tensors, deltas [k, n]

Inductor turns the pure function below into one C++/OpenMP loop on a CPU (one Triton kernel
on a GPU): each entry of base, of every task vector (and of the noise) is read once and the
output written once; no intermediate touches memory. A `Plan` fixes what changes the code
(how each task vector is sparsified, consensus, normalize, k); per-trial numbers (weights,
thresholds, densities, lambda) travel in one small fp32 tensor, so a new trial never
recompiles. Compiled once per plan and resident dtype, with dynamic sizes (one compile serves
every tensor).

Same maths, same order as the engine's eager kernel, with one difference: eager CPU
`a.add_(b, alpha=c)` is a fused multiply-add, the compiled loop rounds c*b first
(inductor compiles with -ffp-contract=off). So linear, task arithmetic, dare_linear and
`base + lambda*merged` with lambda != 1 may differ from the eager kernel by one rounding per
term (relative 2^-23 in fp32); the sign election and the masks are the same.

`AUTOMERGE_COMPILE=0` turns it off (the eager kernel runs); `AUTOMERGE_COMPILE=1` is the default.
"""

from __future__ import annotations

import logging
import os
import types
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("automerge.compile")

# How one task vector is sparsified (its scalars: a, b per specialist, see `scalars`).
KEEP_ALL = "all"  # u = d
KEEP_MAGNITUDE = "magnitude"  # u = d where |d| >= a (TIES)
KEEP_BAND = "band"  # u = d where a <= |d| <= b (breadcrumbs)
KEEP_NOISE = "noise"  # u = d where noise < a (DARE)
KEEP_RANKED = "ranked"  # u = d where noise < a + b * rank (DELLA: a = density - eps, b = 2 eps)
KEEPS = (KEEP_ALL, KEEP_MAGNITUDE, KEEP_BAND, KEEP_NOISE, KEEP_RANKED)
ENV = "AUTOMERGE_COMPILE"
SMALL = 1 << 16  # the engine keeps tensors below this many entries on its eager fused kernel


COMBINES = ("linear", "sum", "consensus")


@dataclass(frozen=True)
class Plan:
    """What the compiled code depends on: how task vectors combine, how each is sparsified, k.

    Everything else is a number in `scalars`, chosen so that the neutral value is exact
    (weight sign +-1, divisor weights 0 when not normalising, lambda 1, threshold 0): a
    search's trials with one method share one compiled kernel.
    """

    combine: str
    keep: str
    k: int

    def __post_init__(self) -> None:
        if self.combine not in COMBINES:
            raise ValueError(f"combine {self.combine!r} is unknown; use one of {', '.join(COMBINES)}")
        if self.keep not in KEEPS:
            raise ValueError(f"keep {self.keep!r} is unknown; use one of {', '.join(KEEPS)}")


def scalars(*, weights, signs, div_weights, a, b, lam: float, divisor: float, device) -> torch.Tensor:
    """The per-trial numbers as one fp32 tensor [5k + 2]: weight w_i, its sign (+-1), divisor
    weight_i (0 when not normalising), keep bounds a_i and b_i, lambda, then the divisor
    (sum: the weight total or 1; linear: the base's coefficient)."""
    values = [*weights, *signs, *div_weights, *a, *b, lam, divisor]
    return torch.tensor(values, dtype=torch.float32, device=device)


# Method -> (combine, keep). Task arithmetic is linear with coefficients w_i * lambda / divisor,
# as the eager kernel computes it.
METHOD_PLANS = {
    "linear": ("linear", KEEP_ALL), "task_arithmetic": ("linear", KEEP_ALL),
    "ties": ("consensus", KEEP_MAGNITUDE), "dare_ties": ("consensus", KEEP_NOISE), "dare_linear": ("sum", KEEP_NOISE),
    "breadcrumbs": ("sum", KEEP_BAND), "breadcrumbs_ties": ("consensus", KEEP_BAND),
    "della": ("consensus", KEEP_RANKED), "della_linear": ("sum", KEEP_RANKED),
}


def plan_for(method: str, k: int, params: dict) -> Plan | None:
    """The plan for a method and its (default-filled) parameters; None where only the eager
    path computes it (a rescale other than mergekit's L1 matching)."""
    if method not in METHOD_PLANS:
        return None
    if params.get("rescale") and params.get("rescale_mode", "l1") != "l1":
        return None
    combine, keep = METHOD_PLANS[method]
    return Plan(combine=combine, keep=keep, k=k)


def _mask(plan: Plan, i: int, d: torch.Tensor, noise, rank, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if plan.keep == KEEP_MAGNITUDE:
        return d.abs() >= a[i]
    if plan.keep == KEEP_BAND:
        return (d.abs() >= a[i]) & (d.abs() <= b[i])
    if plan.keep == KEEP_NOISE:
        return noise[i] < a[i]
    return noise[i] < a[i] + rank[i] * b[i]


def merge_pass(out: torch.Tensor, base: torch.Tensor, deltas: torch.Tensor, noise: torch.Tensor | None,
               rank: torch.Tensor | None, s: torch.Tensor, *, plan: Plan) -> None:
    """out = base + lambda * combine(sparsify(d_i)) for flat tensors (deltas, noise, rank: [k, n]).

    Op for op the engine's eager chunk loop (`ResidentMerger._fused`): 0/1 float masks
    multiplied in, each weighted term rounded before the sum. The eager loop's shortcuts
    are exact identities here: a divisor of 0 -> 1 equals its clamp to the smallest weight
    (the merged value is 0 there), and x * 1, x / 1 change nothing.
    """
    k = plan.k
    w, sg, dw, a, b = (s[j * k:(j + 1) * k] for j in range(5))
    lam, divisor = s[5 * k], s[5 * k + 1]
    if plan.combine == "linear":
        # eager: out = c*b, then out += c_i d_i, rounded into out's dtype at each step
        acc = (base.float() * divisor).to(out.dtype)
        for i in range(k):
            acc = (acc.float() + deltas[i].float() * w[i]).to(out.dtype)
        out.copy_(acc)
        return
    us = []
    for i in range(k):
        d = deltas[i].float()
        us.append(d if plan.keep == KEEP_ALL else d * _mask(plan, i, d, noise, rank, a, b).float())
    merged = us[0] * w[0]
    for i in range(1, k):
        merged = merged + us[i] * w[i]
    if plan.combine == "consensus":
        sign = (merged >= 0).float() * 2 - 1
        merged = torch.zeros_like(sign)
        div = torch.zeros_like(sign)
        for i in range(k):
            agree = (us[i] * sign * sg[i] > 0).float()
            merged = merged + w[i] * us[i] * agree
            div = div + agree * dw[i]
        merged = merged / (div + (div == 0).float())
    else:
        merged = merged / divisor
    out.copy_((base.float() + merged * lam).to(out.dtype))


def kept_l1(deltas: torch.Tensor, noise: torch.Tensor | None, rank: torch.Tensor | None, s: torch.Tensor, *,
            plan: Plan) -> torch.Tensor:
    """sum_j |d_ij| over the entries `plan` keeps, per task vector (fp32): the L1 rescale's pass."""
    k = plan.k
    a, b = s[3 * k:4 * k], s[4 * k:5 * k]
    return torch.stack([(deltas[i].float().abs() * _mask(plan, i, deltas[i].float(), noise, rank, a, b).float()).sum()
                        for i in range(k)])


_compiled: dict[tuple, Callable | None] = {}
_warned = False


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def compiled(fn: Callable, plan: Plan, device: torch.device) -> Callable | None:
    """fn (merge_pass or kept_l1) compiled for `plan` on `device`; None when compilation is off
    or failed (said once, then the eager kernel runs)."""
    if not enabled():
        return None
    key = (fn.__name__, plan, device.type)
    if key not in _compiled:
        _compiled[key] = None
        try:
            _compiled[key] = torch.compile(_for_plan(fn, plan), dynamic=True, fullgraph=True)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: run the eager kernel
            disable(exc, plan, device)
    return _compiled[key]


def _for_plan(fn: Callable, plan: Plan) -> Callable:
    """fn with `plan` bound, under a code object of its own: torch.compile keeps its compiled
    graphs per code object (8 at most), so every plan gets its own rather than recompiling one."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{plan.combine}_{plan.keep}_{plan.k}")
    bound = types.FunctionType(code, fn.__globals__, code.co_name)
    bound.__kwdefaults__ = {"plan": plan}
    return bound


def disable(exc: BaseException, plan: Plan, device: torch.device) -> None:
    """Compilation failed (often only on first use): say so once; this plan runs eagerly from now on."""
    global _warned
    for name in ("merge_pass", "kept_l1"):
        _compiled[(name, plan, device.type)] = None
    if not _warned:
        _warned = True
        log.warning("torch.compile failed (%s: %s); the merge engine runs its eager kernels (same results "
                    "within float rounding, slower). %s=0 skips the attempt.",
                    type(exc).__name__, (str(exc).splitlines() or [""])[0][:200], ENV)
