"""Search for merge recipes: a search space (YAML) → Optuna trials → Recipes, multi-objective,
multi-fidelity (MO-ASHA over rungs of nested evaluation subsets), resumable and distributed.

    from automerge.search import SearchSpace, SearchStudy, Worker, EngineRunner
    space = SearchSpace.load("search_spaces/demo.yaml")
    space.check_models()
    study = SearchStudy.open("demo", "sqlite:///results/demo/study.db", space)
    Worker(study, EngineRunner(space)).run()

Study format: see `automerge.search.study` (module docstring) and `automerge.study_format` (its
names, shared with the report). Optuna is imported only inside this package, the report and
`automerge.study_format`, never by the core.
"""

from automerge.pareto import (
    epsilon_net_order,
    hypervolume,
    hypervolume_contributions,
    mo_asha_order,
    non_dominated_sort,
    pareto_mask,
    to_minimization,
)
from automerge.search.scheduler import Promotion, Result, Scheduler
from automerge.search.space import SearchSpace

__all__ = [
    "SearchSpace", "Scheduler", "Result", "Promotion",
    "non_dominated_sort", "pareto_mask", "hypervolume", "hypervolume_contributions", "epsilon_net_order",
    "mo_asha_order", "to_minimization",
    "SearchStudy", "Worker", "EngineRunner", "run_search",
]


def __getattr__(name: str):  # lazy: these import optuna / torch
    if name == "SearchStudy":
        from automerge.search.study import SearchStudy

        return SearchStudy
    if name in ("Worker", "EngineRunner"):
        from automerge.search import worker

        return getattr(worker, name)
    if name == "run_search":
        from automerge.search.run import run_search

        return run_search
    raise AttributeError(name)
