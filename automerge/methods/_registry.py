"""The registry: every merge method by name, with its typed, range-checked parameters.

A `MergeMethod` ties a pure tensor function to its parameter list, so the engine
can call any method the same way, once per tensor:

    method = get_method("ties")
    params, per_model = method.check_params({"lambda": 0.8}, [{"weight": 1, "density": 0.3}, ...])
    merged = method.merge_tensor(base, deltas, per_model=per_model, params=params)

Defaults are mergekit's (docs/merge-methods.md). A per-model parameter given among the
global parameters applies to every model that does not set its own (mergekit's
rule for a top-level `parameters:` entry).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..errors import RecipeError
from ._fisher import fisher_merge
from ._linear import linear
from ._model_stock import model_stock
from ._sce import sce
from ._slerp import slerp
from ._spherical import karcher, multislerp, nuslerp, nuslerp_t
from ._swap import arcee_fusion, nearswap
from ._sparsify import RESCALE_MODES, check_della
from ._task_arithmetic import (
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    task_arithmetic,
    ties,
)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # Param.default of a parameter that has none


@dataclass(frozen=True)
class Param:
    """One typed, range-checked parameter of a method."""

    name: str
    type: type  # float, int, bool or str
    default: Any = REQUIRED
    per_model: bool = False
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    doc: str = ""
    choices: tuple[str, ...] | None = None  # for str parameters

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def allowed(self) -> str:
        """The allowed values, for error messages: "(0, 1]", "true or false", ..."""
        if self.type is bool:
            return "true or false"
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.low is None and self.high is None:
            return f"any finite {self.type.__name__}"
        lo = "(-inf" if self.low is None else ("[" if self.low_inclusive else "(") + f"{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}" + ("]" if self.high_inclusive else ")")
        return f"{lo}, {hi}"

    def in_range(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            return False
        return True

    def check(self, value: Any, *, method: str, where: str = "") -> Any:
        """`value` converted to this parameter's type; RecipeError if it does not fit."""

        def bad() -> RecipeError:
            return RecipeError(
                f"{method}: parameter '{self.name}'{where} is {value!r}; allowed: {self.allowed()}"
                + (f" ({self.doc})" if self.doc else "")
            )

        if self.type is bool:
            if not isinstance(value, bool):
                raise bad()
            return value
        if self.type is str:
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise bad()
            return value
        # Numbers: bool is an int in Python, but `density: true` is a mistake.
        wanted = numbers.Integral if self.type is int else numbers.Real
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # recipes store numbers as floats (max_iter: 20 -> 20.0)
        if isinstance(value, bool) or not isinstance(value, wanted) or not self.in_range(float(value)):
            raise bad()
        return self.type(value)


# merge(base, deltas, global_params, per_model_columns, noise, fisher) -> Tensor
MergeFn = Callable[..., torch.Tensor]
# extra cross-parameter checks: (method name, params, per_model rows, model names) -> None
CheckFn = Callable[[str, dict, list[dict], list[str]], None]


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: its parameters, how many specialists it takes, its tensor function."""

    name: str
    params: tuple[Param, ...]
    min_models: int  # specialists, not counting the base
    max_models: int | None
    random: bool  # needs `noise` (DARE, DELLA)
    mergekit_name: str | None  # None: mergekit has no such method
    doc: str
    needs_fisher: bool = False  # needs `fisher` (per-specialist diagonal Fisher)
    needs_base: bool = True  # False: mergekit runs it without base_model (linear)
    merge: MergeFn = field(default=None, repr=False, compare=False)
    extra_check: CheckFn | None = field(default=None, repr=False, compare=False)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def global_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if not p.per_model)

    @property
    def model_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.per_model)

    def _count_text(self) -> str:
        if self.max_models == self.min_models:
            return f"exactly {self.min_models}"
        if self.max_models is None:
            return f"at least {self.min_models}"
        return f"{self.min_models} to {self.max_models}"

    def check_params(
        self,
        params: Mapping[str, Any],
        per_model: Sequence[Mapping[str, Any]],
        *,
        model_names: Sequence[str] | None = None,
    ) -> tuple[dict, list[dict]]:
        """Fill defaults and check types and ranges; returns (global params, per-model params).

        Raises RecipeError naming the method, the parameter (and model), the bad
        value and the allowed range; unknown names list the known ones.
        """
        k = len(per_model)
        names = list(model_names) if model_names is not None else [str(i) for i in range(k)]
        if k < self.min_models or (self.max_models is not None and k > self.max_models):
            raise RecipeError(
                f"{self.name} merges the base with {self._count_text()} specialist model(s); got {k}"
                + (" (the base is slerp's t=0 end, the specialist its t=1 end; to slerp two specialists over "
                   "the base use nuslerp, more of them multislerp)" if self.name == "slerp" else "")
            )
        known_global = {p.name for p in self.global_params}
        known_model = {p.name for p in self.model_params}
        for key in params:
            if key not in known_global | known_model:
                raise RecipeError(self._unknown(key, known_global | known_model))
        for name, mp in zip(names, per_model):
            for key in mp:
                if key in known_global:
                    raise RecipeError(
                        f"{self.name}: '{key}' is a global parameter; set it in the recipe's parameters, "
                        f"not for model '{name}'"
                    )
                if key not in known_model:
                    raise RecipeError(self._unknown(key, known_model, f" of model '{name}'", "per-model "))

        out_global: dict[str, Any] = {}
        for p in self.global_params:
            if p.name not in params and p.required:
                raise RecipeError(f"{self.name}: parameter '{p.name}' is required ({p.allowed()}); {p.doc}")
            out_global[p.name] = p.check(params.get(p.name, p.default), method=self.name)
        out_models: list[dict] = []
        for name, mp in zip(names, per_model):
            row = {}
            for p in self.model_params:
                value = mp.get(p.name, params.get(p.name, p.default))
                if value is REQUIRED:
                    raise RecipeError(
                        f"{self.name}: parameter '{p.name}' is required for model '{name}' ({p.allowed()}); {p.doc}"
                    )
                row[p.name] = p.check(value, method=self.name, where=f" of model '{name}'")
            out_models.append(row)
        if self.extra_check is not None:
            self.extra_check(self.name, out_global, out_models, names)
        return out_global, out_models

    def _unknown(self, key: str, known: set[str], where: str = "", kind: str = "") -> str:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{self.name}: unknown parameter '{key}'{where}{hint}; known {kind}parameters: {', '.join(sorted(known)) or 'none'}"

    def merge_tensor(
        self,
        base: torch.Tensor,
        deltas: torch.Tensor,
        *,
        per_model: Mapping[str, Sequence[float]] | Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        noise: torch.Tensor | None = None,
        fisher: torch.Tensor | None = None,
        tensor_name: str = "",
    ) -> torch.Tensor:
        """Merge one tensor: base [*shape], deltas [k, *shape] (x_i - base) -> [*shape] in base's dtype.

        per_model: columns ({"weight": [w_1..w_k], ...}) or rows ([{"weight": w_1, ...}, ...]).
        Parameters are (re)checked here -- cheap next to the tensor math.
        noise: [k, *shape] from random_noise(...), required by random methods.
        fisher: [k, *shape] diagonal Fisher per specialist, required by "fisher".
        """
        label = f" for tensor '{tensor_name}'" if tensor_name else ""
        k = deltas.shape[0] if deltas.dim() > 0 else 0
        if deltas.dim() == 0 or tuple(deltas.shape[1:]) != tuple(base.shape):
            raise ValueError(f"{self.name}{label}: deltas {tuple(deltas.shape)} must be [k, *{tuple(base.shape)}]")
        if isinstance(per_model, Mapping):
            for key, values in per_model.items():
                if len(values) != k:
                    raise ValueError(f"{self.name}{label}: per-model '{key}' has {len(values)} values for {k} models")
            rows = [{key: values[i] for key, values in per_model.items()} for i in range(k)]
        else:
            rows = list(per_model)
            if len(rows) != k:
                raise ValueError(f"{self.name}{label}: {len(rows)} per-model entries for {k} models")
        g, checked = self.check_params(params, rows)
        columns = {p.name: [row[p.name] for row in checked] for p in self.model_params}
        if self.random and (noise is None or tuple(noise.shape) != tuple(deltas.shape)):
            raise ValueError(
                f"{self.name} is random: pass noise=random_noise({tuple(deltas.shape)}, seed=..., "
                f"tensor_name=...){label}"
            )
        if self.needs_fisher and (fisher is None or tuple(fisher.shape) != tuple(deltas.shape)):
            raise ValueError(f"{self.name}{label}: pass fisher= a [k, *shape] = {tuple(deltas.shape)} tensor")
        return self.merge(base, deltas, g, columns, noise, fisher)


# ---------------------------------------------------------------- parameters


def _weight(required: bool = True, low: float | None = None) -> Param:
    return Param("weight", float, REQUIRED if required else 1.0, per_model=True, low=low,
                 doc="scale of this specialist's contribution")


_DENSITY = Param("density", float, 1.0, per_model=True, low=0, high=1, low_inclusive=False,
                 doc="fraction of the task vector kept")
_GAMMA = Param("gamma", float, 0.01, per_model=True, low=0, high=1, high_inclusive=False,
               doc="fraction of largest-magnitude entries dropped as outliers")
_EPSILON = Param("epsilon", float, 0.15, per_model=True, low=0, high=0.5, high_inclusive=False,
                 doc="spread of keep probabilities by rank; density +/- epsilon must lie in (0, 1)")
_LAMBDA = Param("lambda", float, 1.0, doc="scale of the merged task vector")
_RESCALE_MODE = Param("rescale_mode", str, "l1", choices=RESCALE_MODES,
                      doc="'l1': match the L1 norm (mergekit); 'inverse_prob': divide by the keep probability (papers)")


def _normalize(default: bool) -> Param:
    return Param("normalize", bool, default, doc="divide by the sum of the weights")


def _rescale(default: bool) -> Param:
    return Param("rescale", bool, default, doc="rescale each pruned task vector to its original L1 norm")


def _nonzero_weight_sum(method: str, g: dict, rows: list[dict], names: list[str]) -> None:
    if g.get("normalize", True):
        total = sum(r["weight"] for r in rows)
        if abs(total) < 1e-8:
            raise RecipeError(
                f"{method}: the weights of models {', '.join(names)} sum to {total:g}; a normalising merge "
                "divides by that sum -- give the weights a nonzero sum"
                + (" or set normalize: false" if "normalize" in g else "")
            )


def _della_ranges(method: str, g: dict, rows: list[dict], names: list[str]) -> None:
    for name, r in zip(names, rows):
        try:
            check_della(r["density"], r["epsilon"])
        except RecipeError as err:
            raise RecipeError(f"{method}: model '{name}': {str(err).removeprefix('della: ')}") from None


# ---------------------------------------------------------------- adapters: checked params -> pure function


def _ta_merge(base, deltas, g, m, noise, fisher):
    return task_arithmetic(base, deltas, weights=m["weight"], normalize=g["normalize"], lam=g["lambda"])


def _magnitude_merge(fn):
    def merge(base, deltas, g, m, noise, fisher):
        return fn(base, deltas, weights=m["weight"], densities=m["density"], normalize=g["normalize"],
                  rescale=g["rescale"], lam=g["lambda"])
    return merge


def _crumbs_merge(fn):
    def merge(base, deltas, g, m, noise, fisher):
        return fn(base, deltas, weights=m["weight"], densities=m["density"], gammas=m["gamma"],
                  normalize=g["normalize"], rescale=g["rescale"], lam=g["lambda"])
    return merge


def _dare_merge(fn):
    def merge(base, deltas, g, m, noise, fisher):
        return fn(base, deltas, weights=m["weight"], densities=m["density"], noise=noise,
                  normalize=g["normalize"], rescale=g["rescale"], rescale_mode=g["rescale_mode"], lam=g["lambda"])
    return merge


def _della_merge(fn):
    def merge(base, deltas, g, m, noise, fisher):
        return fn(base, deltas, weights=m["weight"], densities=m["density"], epsilons=m["epsilon"], noise=noise,
                  normalize=g["normalize"], rescale=g["rescale"], rescale_mode=g["rescale_mode"], lam=g["lambda"])
    return merge


def _linear_merge(base, deltas, g, m, noise, fisher):
    return linear(base, deltas, weights=m["weight"], normalize=g["normalize"])


def _slerp_merge(base, deltas, g, m, noise, fisher):
    return slerp(base, base.to(torch.float32) + deltas[0].to(torch.float32), t=g["t"])


def _model_stock_merge(base, deltas, g, m, noise, fisher):
    return model_stock(base, deltas, filter_wise=g["filter_wise"])


def _fisher_merge(base, deltas, g, m, noise, fisher):
    return fisher_merge(base, deltas, fisher=fisher, weights=m["weight"], floor=g["fisher_floor"])


def _nuslerp_merge(base, deltas, g, m, noise, fisher):
    t = nuslerp_t(m["weight"])
    b = base.to(torch.float32)
    if g["use_base"]:  # slerp between the two task vectors, then add the base back
        v0, v1 = deltas[0].to(torch.float32), deltas[1].to(torch.float32)
        return (b + nuslerp(v0, v1, t=t, row_wise=g["nuslerp_row_wise"], flatten=g["nuslerp_flatten"])).to(base.dtype)
    x0, x1 = b + deltas[0].to(torch.float32), b + deltas[1].to(torch.float32)
    return nuslerp(x0, x1, t=t, row_wise=g["nuslerp_row_wise"], flatten=g["nuslerp_flatten"]).to(base.dtype)


def _multislerp_merge(base, deltas, g, m, noise, fisher):
    b = base.to(torch.float32)
    d = deltas.to(torch.float32)
    if deltas.shape[0] == 1:  # mergekit returns the one model as it is
        return (b + d[0]).to(base.dtype)
    points = d if g["use_base"] else b + d
    out = multislerp(points, weights=m["weight"], normalize_weights=g["normalize_weights"], eps=g["eps"])
    return (b + out if g["use_base"] else out).to(base.dtype)


def _karcher_merge(base, deltas, g, m, noise, fisher):
    b = base.to(torch.float32)
    # mergekit's order: the listed models, then base_model when it is set.
    inputs = [b + d for d in deltas.to(torch.float32)] + ([b] if g["use_base"] else [])
    return karcher(inputs, max_iter=g["max_iter"], tol=g["tol"]).to(base.dtype)


def _sce_merge(base, deltas, g, m, noise, fisher):
    return sce(base, deltas, select_topk=g["select_topk"])


def _arcee_fusion_merge(base, deltas, g, m, noise, fisher):
    return arcee_fusion(base, base.to(torch.float32) + deltas[0].to(torch.float32))


def _nearswap_merge(base, deltas, g, m, noise, fisher):
    return nearswap(base, base.to(torch.float32) + deltas[0].to(torch.float32), t=g["t"])


def _nonzero_multislerp_sum(method: str, g: dict, rows: list[dict], names: list[str]) -> None:
    if g["normalize_weights"] and len(rows) > 1:
        _nonzero_weight_sum(method, {"normalize": True}, rows, names)


def _use_base(doc: str) -> Param:
    return Param("use_base", bool, True, doc=doc)


# ---------------------------------------------------------------- the table


def _gta_method(name, fn_merge, *, normalize, rescale=None, sparsifier=None, random=False, doc):
    params = [_weight()]
    if sparsifier is not None:
        params.append(_DENSITY)
    if sparsifier == "breadcrumbs":
        params.append(_GAMMA)
    if sparsifier == "della":
        params.append(_EPSILON)
    params += [_LAMBDA, _normalize(normalize)]
    if rescale is not None:
        params.append(_rescale(rescale))
    if random:
        params.append(_RESCALE_MODE)
    return MergeMethod(
        name=name, params=tuple(params), min_models=1, max_models=None, random=random, mergekit_name=name,
        doc=doc, merge=fn_merge, extra_check=_della_ranges if sparsifier == "della" else None,
    )


_ALL = [
    MergeMethod(
        name="linear", params=(_weight(), _normalize(True)), min_models=1, max_models=None, random=False,
        mergekit_name="linear", doc="weighted average of the specialists (model soup)", needs_base=False,
        merge=_linear_merge, extra_check=_nonzero_weight_sum,
    ),
    _gta_method("task_arithmetic", _ta_merge, normalize=False,
                doc="base + lambda * sum of weighted task vectors"),
    _gta_method("ties", _magnitude_merge(ties), normalize=True, rescale=False, sparsifier="magnitude",
                doc="magnitude trim, sign election, disjoint mean (TIES)"),
    _gta_method("dare_ties", _dare_merge(dare_ties), normalize=False, rescale=True, sparsifier="random",
                random=True, doc="random drop and rescale (DARE), then sign election"),
    _gta_method("dare_linear", _dare_merge(dare_linear), normalize=False, rescale=True, sparsifier="random",
                random=True, doc="random drop and rescale (DARE), then weighted sum"),
    _gta_method("breadcrumbs", _crumbs_merge(breadcrumbs), normalize=False, rescale=False,
                sparsifier="breadcrumbs", doc="drop outliers and small entries, then weighted sum"),
    _gta_method("breadcrumbs_ties", _crumbs_merge(breadcrumbs_ties), normalize=False, rescale=False,
                sparsifier="breadcrumbs", doc="drop outliers and small entries, then sign election"),
    _gta_method("della", _della_merge(della), normalize=True, rescale=True, sparsifier="della", random=True,
                doc="rank-based random drop and rescale (DELLA), then sign election"),
    _gta_method("della_linear", _della_merge(della_linear), normalize=False, rescale=True, sparsifier="della",
                random=True, doc="rank-based random drop and rescale (DELLA), then weighted sum"),
    MergeMethod(
        name="slerp",
        params=(Param("t", float, REQUIRED, low=0, high=1,
                      doc="position on the arc: 0 = the base, 1 = the specialist"),),
        min_models=1, max_models=1, random=False, mergekit_name="slerp",
        doc="spherical interpolation between the base and one specialist", merge=_slerp_merge,
    ),
    MergeMethod(
        name="model_stock",
        params=(Param("filter_wise", bool, False, doc="cosines per row instead of per tensor"),),
        min_models=2, max_models=None, random=False, mergekit_name="model_stock",
        doc="specialists' mean pulled toward the base by their agreement (Model Stock)",
        merge=_model_stock_merge,
    ),
    MergeMethod(
        name="fisher",
        params=(_weight(required=False, low=0),
                Param("fisher_floor", float, 1e-6, low=0, high=1, low_inclusive=False,
                      doc="floor on each Fisher entry, relative to the tensor's mean Fisher")),
        min_models=1, max_models=None, random=False, mergekit_name=None, needs_fisher=True,
        doc="Fisher-weighted average (Matena & Raffel 2022)", merge=_fisher_merge,
        extra_check=_nonzero_weight_sum,
    ),
    MergeMethod(
        name="nuslerp",
        params=(_weight(),
                Param("nuslerp_flatten", bool, True, doc="one arc for the whole tensor (false: per row or column)"),
                Param("nuslerp_row_wise", bool, False,
                      doc="without flattening: slerp each column (along dim 0) instead of each row"),
                _use_base("true: slerp the two task vectors and add the base (mergekit with base_model); "
                          "false: slerp the two models themselves (mergekit without base_model)")),
        min_models=2, max_models=2, random=False, mergekit_name="nuslerp", needs_base=False,
        doc="slerp between two specialists at t = w2 / (w1 + w2), optionally about the base (NuSLERP)",
        merge=_nuslerp_merge,
    ),
    MergeMethod(
        name="multislerp",
        params=(_weight(),
                Param("normalize_weights", bool, True, doc="divide the weights by their sum"),
                Param("eps", float, 1e-8, low=0, low_inclusive=False, high=1e-2,
                      doc="numerical floor on norms"),
                _use_base("true: interpolate the task vectors and add the base (mergekit with base_model); "
                          "false: interpolate the models themselves")),
        min_models=1, max_models=None, random=False, mergekit_name="multislerp", needs_base=False,
        doc="barycentric interpolation on the hypersphere of any number of specialists (Multi-SLERP)",
        merge=_multislerp_merge, extra_check=_nonzero_multislerp_sum,
    ),
    MergeMethod(
        name="karcher",
        params=(Param("max_iter", int, 10, low=1, high=1000, doc="iterations of the Riemannian mean"),
                Param("tol", float, 1e-5, low=0, low_inclusive=False, high=1, doc="convergence tolerance"),
                _use_base("true: the base is one more averaged model (mergekit with base_model); "
                          "false: average the specialists only")),
        min_models=1, max_models=None, random=False, mergekit_name="karcher", needs_base=False,
        doc="equal-weight Karcher mean of the models on the hypersphere, scaled by their mean norm",
        merge=_karcher_merge,
    ),
    MergeMethod(
        name="sce",
        params=(Param("select_topk", float, 1.0, low=0, high=1,
                      doc="fraction of entries kept, those varying most across the specialists"),),
        min_models=1, max_models=None, random=False, mergekit_name="sce",
        doc="select by variance, weight by task-vector energy, erase minority signs (SCE)",
        merge=_sce_merge,
    ),
    MergeMethod(
        name="arcee_fusion", params=(), min_models=1, max_models=1, random=False, mergekit_name="arcee_fusion",
        doc="keep the specialist's entries whose change-times-KL importance is an outlier (Arcee Fusion)",
        merge=_arcee_fusion_merge,
    ),
    MergeMethod(
        name="nearswap",
        params=(Param("t", float, REQUIRED, low=0,
                      doc="entries within t of the base take the specialist's value, farther ones move by t"),),
        min_models=1, max_models=1, random=False, mergekit_name="nearswap",
        doc="take the specialist's value where it is near the base (NearSwap)", merge=_nearswap_merge,
    ),
]

METHODS: Mapping[str, MergeMethod] = MappingProxyType({m.name: m for m in _ALL})


def get_method(name: str) -> MergeMethod:
    """The method called `name`; RecipeError listing the known names otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(f"unknown merge method {name!r}{hint}; known: {', '.join(METHODS)}") from None
