"""The samplers a search space can name (`SAMPLERS`), and the one Optuna lacks for several
objectives: CMA-ES on a weighted sum of the objectives.

A sampler is one `SamplerKind` entry in `SAMPLERS`: its name (the space's ``sampler:``), a factory
``(space, seed) -> optuna sampler`` and the Optuna type it builds. Adding one is an entry here;
tests/search/test_samplers.py builds and runs every entry.

CMA-ES has no multi-objective mode. `ScalarisedSampler` shows it a single-objective view of the
study (each COMPLETE trial's value = Σ wᵢ·sᵢ·vᵢ with sᵢ = +1 to maximise, −1 to minimise, and
the view maximises), while the study itself keeps every objective for fronts and reports.
CMA-ES only handles float/int parameters and a fixed search space: use it with one method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from automerge.search.space import SearchSpace


class _ScalarView:
    """A read view of a multi-objective study as one maximised objective."""

    def __init__(self, study: optuna.Study, weights: Sequence[float], directions: Sequence[str]):
        self._study = study
        self._coef = [float(w) * (1.0 if str(d).endswith("maximize") else -1.0) for w, d in zip(weights, directions)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def direction(self) -> StudyDirection:
        return StudyDirection.MAXIMIZE

    @property
    def directions(self) -> list[StudyDirection]:
        return [StudyDirection.MAXIMIZE]

    def _is_multi_objective(self) -> bool:
        return False

    def scalar(self, values: Sequence[float] | None) -> float | None:
        if values is None:
            return None
        return float(sum(c * v for c, v in zip(self._coef, values)))

    def _convert(self, t: FrozenTrial) -> FrozenTrial:
        if t.state != TrialState.COMPLETE or t.values is None or len(t.values) == 1:
            return t
        c = copy.copy(t)
        c._values = [self.scalar(t.values)]
        return c

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return [self._convert(t) for t in self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return [self._convert(t) for t in self._study.get_trials(deepcopy=deepcopy, states=states)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class ScalarisedSampler(BaseSampler):
    """Run a single-objective sampler (CMA-ES) on a weighted sum of a study's objectives."""

    def __init__(self, base: BaseSampler, *, weights: Sequence[float], directions: Sequence[str]):
        self.base = base
        self.weights = list(weights)
        self.directions = list(directions)

    def _view(self, study: optuna.Study) -> Any:
        return _ScalarView(study, self.weights, self.directions)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self.base.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(self._view(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        view = self._view(study)
        scalar = view.scalar(values)
        self.base.after_trial(view, trial, state, None if scalar is None else [scalar])

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class SamplerKind:
    """A sampler a space can name."""

    name: str
    build: Callable[["SearchSpace", int], BaseSampler]  # (space, seed) -> the rung-0 sampler
    optuna_type: type[BaseSampler]  # what `build` gives (for a wrapper: the sampler it wraps)
    help: str
    needs: str | None = None  # a package it needs beyond optuna, checked when a space is loaded
    fixed_space: bool = False  # float/int parameters of one method only (else it samples independently)


def _tpe(space: "SearchSpace", seed: int) -> BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=10)


def _nsga2(space: "SearchSpace", seed: int) -> BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(8, min(50, (space.budget.trials or 50) // 4)))


def _gp(space: "SearchSpace", seed: int) -> BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)


def _random(space: "SearchSpace", seed: int) -> BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(space: "SearchSpace", seed: int) -> BaseSampler:
    return ScalarisedSampler(optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=10,
                                                          warn_independent_sampling=False),
                             weights=[o.weight for o in space.objectives], directions=space.directions)


SAMPLERS: Mapping[str, SamplerKind] = {k.name: k for k in (
    SamplerKind("tpe", _tpe, optuna.samplers.TPESampler, "multivariate TPE, grouped, constant liar (default)"),
    SamplerKind("nsga2", _nsga2, optuna.samplers.NSGAIISampler, "NSGA-II, population budget/4 in [8, 50]"),
    SamplerKind("gp", _gp, optuna.samplers.GPSampler, "Gaussian-process Bayesian optimisation"),
    SamplerKind("random", _random, optuna.samplers.RandomSampler, "uniform random"),
    SamplerKind("cmaes", _cmaes, optuna.samplers.CmaEsSampler, "CMA-ES on the weighted sum of the objectives "
                "(objectives[].weight)", needs="cmaes", fixed_space=True),
)}


def make_sampler(space: "SearchSpace", slot: int = 0) -> BaseSampler:
    """The rung-0 sampler named in the space, seeded for the `slot`-th sampled trial (samplers
    read their history from the study; a per-slot seed keeps parallel workers from drawing the
    same random start-up points and makes each slot's draw reproducible given the history)."""
    seed = (space.seed * 1_000_003 + slot) % 2**32
    return SAMPLERS[space.sampler].build(space, seed)
