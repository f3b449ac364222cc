"""The yardsticks of a search (baselines) and earlier rounds' recipes (warm starts), as trials."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from automerge.errors import AutomergeError, SpaceError
from automerge.search.space.schema import Choice, Range
from automerge.search.space.suggestion import group_names

if TYPE_CHECKING:
    from automerge.search.space.search_space import SearchSpace


class Baselines:
    """Baselines of `SearchSpace` (mixed into it)."""

    def baseline_trials(self) -> list["Baseline"]:
        """The yardsticks: each specialist alone, uniform linear, task arithmetic λ=1, TIES density
        0.5 — as search-space params where the space can express them (so samplers learn from
        them), else as a plain recipe."""
        from automerge.recipe import ModelSpec, Recipe

        names = self.specialist_names
        out: list[Baseline] = []

        def make(label: str, method: str, weights: Mapping[str, float], extra_model: Mapping[str, float],
                 extra: Mapping[str, Any]) -> Baseline:
            wanted = {"weight": dict(weights), **{k: {n: v for n in names} for k, v in extra_model.items()}}
            recipe = Recipe(
                method=method, base=self.base,
                models=[ModelSpec(name=s.name, path=s.path,
                                  parameters={"weight": weights[s.name], **dict(extra_model)})
                        for s in self.specialists],
                parameters=dict(extra), seed=self.seed, dtype=self.dtype)
            params = self._encode(method, wanted, dict(extra))
            if params is not None:  # the same recipe, built the way search trials are
                recipe = self.recipe_from_params(params)
            return Baseline(label=label, recipe=recipe, params=params)

        if "specialists" in self.baselines:
            for s in names:
                out.append(make(f"{s} alone", "task_arithmetic", {n: float(n == s) for n in names}, {},
                                {"lambda": 1.0}))
        if "uniform_linear" in self.baselines:
            out.append(make("uniform linear", "linear", {n: 1.0 for n in names}, {}, {"normalize": True}))
        if "task_arithmetic" in self.baselines:
            out.append(make("task arithmetic λ=1", "task_arithmetic", {n: 1.0 for n in names}, {},
                            {"lambda": 1.0}))
        if "ties" in self.baselines:
            out.append(make("ties density 0.5", "ties", {n: 1.0 for n in names}, {"density": 0.5},
                            {"lambda": 1.0}))
        return out

    def _encode(self, method: str, per_model: Mapping[str, Mapping[str, float]],
                global_values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Search-space params giving exactly these values (constant over layer groups), or None
        when the space cannot express them (method not searched, value outside a range, a fixed
        value that differs). Unnamed parameters mean the method's default."""
        from automerge.methods import METHODS

        if method not in self.method_names:
            return None
        m = METHODS[method]
        params: dict[str, Any] = {}
        if len(self.method_names) > 1:
            params["method"] = method
        groups: list[str] = []
        if self.any_per_group(method):
            g = self.layer_groups.group_choices[0]
            s = self.layer_groups.split_choices[0]
            if len(self.layer_groups.group_choices) > 1:
                params["num_groups"] = g
            if len(self.layer_groups.split_choices) > 1:
                params["split_attn_mlp"] = s
            groups = group_names(g, s)

        def put(name: str, p: Any, spec: Any, want: Any) -> bool:
            if want is None:
                if p.required:
                    return False
                want = p.default
            if spec is None:
                return want == p.default
            if isinstance(spec, Range) and spec.low == spec.high:
                return want == spec.low
            if isinstance(spec, Choice) and len(spec.choices) == 1:
                return want == spec.choices[0]
            if isinstance(spec, (Range, Choice)):
                if not spec_contains(spec, want):
                    return False
                for n in ([f"{name}[{g}]" for g in groups] if spec.per_group else [name]):
                    params[n] = want
                return True
            return spec == want

        for p in m.global_params:
            if not put(f"{method}.{p.name}", p, self.param_spec(method, p.name), global_values.get(p.name)):
                return None
        for s in self.specialists:
            for p in m.model_params:
                want = per_model.get(p.name, {}).get(s.name)
                if not put(f"{method}.{p.name}.{s.name}", p, self.param_spec(method, p.name, s.name), want):
                    return None
        return params


class Baseline(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    label: str
    recipe: Any  # Recipe
    params: dict[str, Any] | None  # search-space params, or None when the space cannot express it

    @property
    def key(self) -> str:
        return "b:" + self.label


class WarmStart(Baseline):
    """An earlier recipe evaluated first, as a search trial (iterative rounds: --warm-start)."""

    @property
    def key(self) -> str:
        return "w:" + hashlib.sha256(self.recipe.to_yaml().encode()).hexdigest()[:16]


def warm_start_trials(space: "SearchSpace", paths: Sequence[Path]) -> list[WarmStart]:
    """Recipes from earlier rounds, mapped onto this space's specialists by name.

    A specialist the recipe lacks gets weight 0 (the same merge); a recipe model the space does
    not have, or another base, is an error naming the file.
    """
    from automerge.checkpoints import resolve_model_path
    from automerge.recipe import ModelSpec, Recipe

    def same_path(a: str, b: str) -> bool:
        try:
            return resolve_model_path(a).resolve() == resolve_model_path(b).resolve()
        except AutomergeError:
            return a == b

    out = []
    names = space.specialist_names
    for path in paths:
        recipe = Recipe.load(path)
        unknown = [m.name for m in recipe.models if m.name not in names]
        if unknown:
            raise SpaceError(f"--warm-start {path}: model(s) {', '.join(unknown)} are not specialists of this "
                             f"space ({', '.join(names)}); rename them in the recipe or add them to the space")
        if recipe.base and not same_path(recipe.base, space.base):
            raise SpaceError(f"--warm-start {path}: base {recipe.base} differs from the space's base "
                             f"{space.base}; a warm start must merge the same base")
        given = {m.name: m for m in recipe.models}
        models = [ModelSpec(name=s.name, path=s.path,
                            parameters=dict(given[s.name].parameters) if s.name in given else {"weight": 0.0})
                  for s in space.specialists]
        recipe = recipe.model_copy(update={"base": space.base, "models": models})
        from automerge.search.warm_map import warm_start_params

        out.append(WarmStart(label=f"warm start: {Path(path).stem}", recipe=recipe,
                             params=warm_start_params(space, recipe, path)))
    return out


def spec_contains(spec: Any, value: Any) -> bool:
    if isinstance(spec, Range):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if spec.low == spec.high:
            return False  # constant: not an Optuna param; a baseline cannot sit on it as a param
        if not spec.low <= value <= spec.high:
            return False
        if spec.step is not None:
            k = (value - spec.low) / spec.step
            return abs(k - round(k)) < 1e-9
        return True
    if isinstance(spec, Choice):
        return len(spec.choices) > 1 and value in spec.choices
    return False
