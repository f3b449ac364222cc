"""Samplers that Optuna lacks for several objectives: CMA-ES on a weighted sum of the objectives.

CMA-ES has no multi-objective mode. `ScalarisedSampler` shows it a single-objective view of the
study (each COMPLETE trial's value = Σ wᵢ·sᵢ·vᵢ with sᵢ = +1 to maximise, −1 to minimise, and
the view maximises), while the study itself keeps every objective for fronts and reports.
CMA-ES only handles float/int parameters and a fixed search space: use it with one method.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import optuna
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


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
