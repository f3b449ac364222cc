"""Trial -> recipe: how a search space turns an Optuna trial (or stored params) into a `Recipe`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

from automerge.errors import SpaceError
from automerge.search.space.schema import Choice, Range

if TYPE_CHECKING:
    from automerge.recipe import Recipe


class Suggestion:
    """Trial -> recipe for `SearchSpace` (mixed into it)."""

    def any_per_group(self, method: str | None = None) -> bool:
        from automerge.methods import METHODS

        for name in [method] if method else self.method_names:
            for p in METHODS[name].params:
                owners = [s.name for s in self.specialists] if p.per_model else [None]
                for owner in owners:
                    spec = self.param_spec(name, p.name, owner)
                    if isinstance(spec, (Range, Choice)) and spec.per_group:
                        return True
        return False

    def suggest(self, trial: "Suggester") -> "Recipe":
        """Sample one recipe with an Optuna trial (or any object with suggest_float /
        suggest_categorical / suggest_int); parameters are conditional on the method."""
        from automerge.methods import METHODS
        from automerge.recipe import ModelSpec, Recipe

        methods = self.method_names
        method = trial.suggest_categorical("method", methods) if len(methods) > 1 else methods[0]
        m = METHODS[method]
        num_groups, split = 1, False
        if self.any_per_group(method):
            g_choices = self.layer_groups.group_choices
            s_choices = self.layer_groups.split_choices
            num_groups = trial.suggest_categorical("num_groups", g_choices) if len(g_choices) > 1 else g_choices[0]
            split = trial.suggest_categorical("split_attn_mlp", s_choices) if len(s_choices) > 1 else s_choices[0]
        groups = group_names(num_groups, split)

        def value(name: str, spec: Any) -> Any:
            if isinstance(spec, Range):
                if not spec.per_group:
                    return _suggest_range(trial, name, spec)
                return {g: _suggest_range(trial, f"{name}[{g}]", spec) for g in groups}
            if isinstance(spec, Choice):
                if not spec.per_group:
                    return _suggest_choice(trial, name, spec)
                return {g: _suggest_choice(trial, f"{name}[{g}]", spec) for g in groups}
            return spec

        params: dict[str, Any] = {}
        for p in m.global_params:
            spec = self.param_spec(method, p.name)
            if spec is not None:
                params[p.name] = value(f"{method}.{p.name}", spec)
        models = []
        for s in self.specialists:
            mp: dict[str, Any] = {}
            for p in m.model_params:
                spec = self.param_spec(method, p.name, s.name)
                if spec is not None:
                    mp[p.name] = value(f"{method}.{p.name}.{s.name}", spec)
            models.append(ModelSpec(name=s.name, path=s.path, parameters=mp,
                                    fisher=self._fisher.get(s.name) if m.needs_fisher else None))
        return Recipe(method=method, base=self.base, models=models, parameters=params, num_groups=num_groups,
                      split_attn_mlp=split, seed=self.seed, dtype=self.dtype)

    def recipe_from_params(self, params: Mapping[str, Any]) -> "Recipe":
        """The recipe a finished trial's params stand for (the same as `suggest` gave)."""
        return self.suggest(_FixedSuggester(params))


class Suggester(Protocol):
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


class _FixedSuggester:
    """Replays stored params through `suggest` (a trial's params -> its recipe)."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)

    def _get(self, name: str) -> Any:
        if name not in self.params:
            raise SpaceError(f"stored trial has no parameter {name!r}: the study was made with another space")
        return self.params[name]

    def suggest_float(self, name, low, high, *, step=None, log=False):  # noqa: ANN001
        return float(self._get(name))

    def suggest_categorical(self, name, choices):  # noqa: ANN001
        return self._get(name)


def group_names(num_groups: int, split: bool) -> list[str]:
    """Per-group parameter keys: block0.. (or block0.attn, block0.mlp, ..), then 'default'
    (embeddings and head)."""
    out: list[str] = []
    for g in range(num_groups):
        out.extend([f"block{g}.attn", f"block{g}.mlp"] if split else [f"block{g}"])
    out.append("default")
    return out


def _suggest_range(trial: Suggester, name: str, spec: Range) -> float:
    if spec.low == spec.high:
        return float(spec.low)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


def _suggest_choice(trial: Suggester, name: str, spec: Choice) -> Any:
    if len(spec.choices) == 1:
        return spec.choices[0]
    return trial.suggest_categorical(name, spec.choices)

