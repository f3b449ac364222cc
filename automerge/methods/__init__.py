"""Merge methods: pure tensor functions and a registry of them (no files, models or Optuna).

Everything works per tensor on a base [*shape] and stacked task vectors
deltas [k, *shape] (specialist minus base), in fp32, and returns base's dtype.
The engine calls `get_method(name).merge_tensor(...)`; the building blocks
below are public so it can pass cached statistics (thresholds, ranks, noise).
See docs/merge-methods.md for the exact semantics.
"""

from ._fisher import fisher_merge
from ._linear import linear
from ._model_stock import model_stock
from ._noise import random_noise, stable_seed
from ._registry import METHODS, REQUIRED, MergeMethod, Param, get_method
from ._sce import sce, sce_mask
from ._slerp import slerp
from ._spherical import karcher, multislerp, nuslerp, nuslerp_t
from ._swap import arcee_fusion, fusion_importance, nearswap
from ._sparsify import (
    HALF_DTYPES,
    RESCALE_MODES,
    breadcrumbs_counts,
    breadcrumbs_thresholds,
    della_keep_prob,
    della_rank_norm,
    half_magnitude_at,
    half_magnitude_counts,
    magnitude_k,
    magnitude_threshold,
    smallest_magnitudes,
    sparsify_breadcrumbs,
    sparsify_della,
    sparsify_magnitude,
    sparsify_random,
)
from ._task_arithmetic import (
    breadcrumbs,
    breadcrumbs_ties,
    consensus_combine,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    generalized_task_arithmetic,
    sum_combine,
    task_arithmetic,
    ties,
)

fisher = fisher_merge  # the building block under the method's registry name

__all__ = [
    "METHODS", "REQUIRED", "MergeMethod", "Param", "get_method", "random_noise", "stable_seed",
    "RESCALE_MODES", "magnitude_k", "magnitude_threshold", "sparsify_magnitude",
    "HALF_DTYPES", "smallest_magnitudes", "half_magnitude_counts", "half_magnitude_at",
    "breadcrumbs_counts", "breadcrumbs_thresholds", "sparsify_breadcrumbs", "sparsify_random",
    "della_rank_norm", "della_keep_prob", "sparsify_della",
    "consensus_combine", "sum_combine", "generalized_task_arithmetic",
    "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
    "della", "della_linear", "linear", "slerp", "model_stock", "fisher_merge", "fisher",
    "nuslerp", "nuslerp_t", "multislerp", "karcher", "sce", "sce_mask", "arcee_fusion", "fusion_importance",
    "nearswap",
]
