"""The search space: a YAML file, validated by pydantic, and the map from an Optuna trial to a Recipe.

    space = SearchSpace.load("search_spaces/demo.yaml")   # SpaceError names the YAML path of a bad field
    space.check_models()                                   # headers only: paths, architectures, layers
    recipe = space.suggest(trial)                          # conditional on the method
    space.baseline_trials()                                # the yardsticks, evaluated before sampling

The modules: `schema` (the sections' pydantic models), `validation` (the checks: static ones on
load, `check_models` before a search), `suggestion` (trial → recipe), `baselines` (baselines
and warm starts) and `search_space` (`SearchSpace`, which mixes those in). Import from here.

File format (every key but base, specialists and objectives has a default)::

    name: demo                       # default study name
    base: zoo:base
    specialists:
      - {name: code, path: zoo:code, domain: code}
      - {name: lang, path: zoo:lang, domain: nl, parameters: {weight: [0.2, 1.2]}}  # own λ range
    references: [{name: mix, path: zoo:mix}]     # evaluated like baselines, shown on every front
    methods: [task_arithmetic, ties, dare_ties]  # or {ties: {density: [0.3, 1.0]}, ...} per method
                                     # fisher: each specialist's estimate from the objectives' proxy items
                                     # of its domain, or its `fisher: FILE` / `fisher: {data: FILE.jsonl}`
    parameters:                      # per method parameter; a number/bool fixes it
      weight:  {low: 0.0, high: 1.5}               # λ_i: each specialist's task-vector scale
      density: {low: 0.1, high: 1.0, per_group: true}
      lambda: 1.0
      t: [0.0, 1.0]                  # slerp; a two-number list is a range
    layer_groups: {num_groups: [1, 2], split_attn_mlp: false}
    objectives:                      # value = weighted mean of task scores (higher = better scores)
      - {name: code, tasks: {code: 1.0}, direction: maximize}
      - {name: nl, tasks: {prose: 1.0}, full_tasks: {prose: 1.0, summarization: 1.0}}
    rungs: {items: [16, 48], eta: 3}             # proxy items per rung; the top rung is full_evaluation
    full_evaluation: {tasks: [humaneval], limit: null}
    baselines: [specialists, uniform_linear, task_arithmetic, ties]
    sampler: tpe                     # a name in automerge.search.samplers.SAMPLERS: tpe | nsga2 | gp | random | cmaes
    seed: 0
    budget: {trials: 40, wall_time: 10m}
    device: auto
    dtype: float32
    storage: null                    # default sqlite:///results/<study>/study.db

Optuna parameter names: ``method``, ``num_groups``, ``split_attn_mlp`` (only when there is a
choice), then ``<method>.<param>`` for a global parameter and ``<method>.<param>.<specialist>``
for a per-specialist one, with ``[<group>]`` appended per layer group (``block0``,
``block1.attn``, … and ``default`` for embeddings and head) when the parameter is per group.
"""

from automerge.search.space.baselines import Baseline, WarmStart, spec_contains, warm_start_trials
from automerge.search.space.schema import BASELINE_KINDS, Budget, Choice, FullEvaluation, LayerGroups, ModelName, \
    Objective, ParamSpec, Range, Reference, Rungs, Specialist, SpecialistFisher, parse_duration, yaml_problem
from automerge.search.space.search_space import SearchSpace
from automerge.search.space.suggestion import Suggester, group_names

__all__ = [
    "SearchSpace", "Range", "Choice", "ParamSpec", "Specialist", "SpecialistFisher", "Reference", "LayerGroups",
    "Objective", "Rungs", "FullEvaluation", "Budget", "ModelName", "BASELINE_KINDS", "parse_duration", "yaml_problem",
    "Suggester", "group_names", "Baseline", "WarmStart", "warm_start_trials", "spec_contains",
]
