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

from importlib import import_module as _import_module

# Imported on first use (PEP 562), so that `automerge --help` loads none of numpy, pydantic, optuna
# and torch through this package: name -> the submodule that defines it (dotted: a module below search).
_LAZY = {
    **dict.fromkeys(("epsilon_net_order", "hypervolume", "hypervolume_contributions", "mo_asha_order",
                     "non_dominated_sort", "pareto_mask", "to_minimization"), "automerge.pareto"),
    **dict.fromkeys(("Promotion", "Result", "Scheduler"), "scheduler"),
    "SearchSpace": "space",
    "SearchStudy": "study",  # optuna
    "Worker": "worker", "EngineRunner": "runner",  # torch
    "run_search": "run",
}

__all__ = [
    "SearchSpace", "Scheduler", "Result", "Promotion",
    "non_dominated_sort", "pareto_mask", "hypervolume", "hypervolume_contributions", "epsilon_net_order",
    "mo_asha_order", "to_minimization",
    "SearchStudy", "Worker", "EngineRunner", "run_search",
]


def __getattr__(name: str):
    if name in _LAZY:
        module = _LAZY[name]
        return getattr(_import_module(module if "." in module else f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
