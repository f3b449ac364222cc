"""The search space: a YAML file, validated by pydantic, and the map from an Optuna trial to a Recipe.

    space = SearchSpace.load("search_spaces/demo.yaml")   # SpaceError names the YAML path of a bad field
    space.check_models()                                   # headers only: paths, architectures, layers
    recipe = space.suggest(trial)                          # conditional on the method
    space.baseline_trials()                                   # the yardsticks enqueued before sampling

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

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Protocol, Sequence, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, \
    model_validator

from automerge.errors import AutomergeError, SpaceError

BASELINE_KINDS = ("specialists", "uniform_linear", "task_arithmetic", "ties")
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"name {v!r}: use letters, digits, '_' and '-' only")
    return v


# A specialist's or reference's name: it appears in recipes, claims and Optuna parameter names.
ModelName = Annotated[str, AfterValidator(_check_name)]


# --------------------------------------------------------------------------------------------- schema


class Range(BaseModel):
    """A searched number: uniform (or log-uniform) on [low, high], optionally on a step grid."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = False
    step: float | None = None
    per_group: bool = False

    @model_validator(mode="after")
    def _check(self) -> "Range":
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"empty range: low ({self.low:g}) is above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        return self


class Choice(BaseModel):
    """A searched categorical value (e.g. normalize: {choices: [true, false]})."""

    model_config = ConfigDict(extra="forbid")

    choices: list[Union[bool, int, float, str]]
    per_group: bool = False

    @field_validator("choices")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("empty choices: give at least one value")
        return v


ParamSpec = Union[Range, Choice, bool, int, float, str]


def _coerce_spec(value: Any) -> Any:
    """A two-number list is a Range; anything else is validated as is."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return {"low": value[0], "high": value[1]}
        raise ValueError("a range is written [low, high] (two numbers) or {low: .., high: ..}")
    return value


def _coerce_specs(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _coerce_spec(v) for k, v in value.items()}
    return value


class SpecialistFisher(BaseModel):
    """Where method fisher's estimate of a specialist comes from (automerge.search.fisher)."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = None  # JSONL of {"text": ...}; None: the space's proxy items of the specialist's domain
    max_tokens: int = Field(8192, ge=2)
    seq_len: int = Field(512, ge=2)


class Specialist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ModelName
    path: str
    domain: str = "general"  # "code" | "nl" | anything descriptive
    parameters: dict[str, ParamSpec] = Field(default_factory=dict)  # overrides, e.g. its own λ range
    fisher: Union[str, SpecialistFisher, None] = None  # an estimate file, or how to estimate it (method fisher)

    @field_validator("parameters", mode="before")
    @classmethod
    def _coerce(cls, v: Any) -> Any:
        return _coerce_specs(v)


class Reference(BaseModel):
    """A model evaluated like a baseline and shown on every front (e.g. a data-mix model)."""

    model_config = ConfigDict(extra="forbid")

    name: ModelName
    path: str


class LayerGroups(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_groups: Union[int, list[int]] = 1
    split_attn_mlp: Union[bool, list[bool]] = False

    @field_validator("num_groups")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        values = v if isinstance(v, list) else [v]
        if not values:
            raise ValueError("empty list: give at least one number of layer groups")
        if any(g < 1 for g in values):
            raise ValueError("number of layer groups must be >= 1")
        return v

    @field_validator("split_attn_mlp")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("empty list: give true, false or [false, true]")
        return v

    @property
    def group_choices(self) -> list[int]:
        return sorted(set(self.num_groups if isinstance(self.num_groups, list) else [self.num_groups]))

    @property
    def split_choices(self) -> list[bool]:
        v = self.split_attn_mlp
        return sorted(set(v if isinstance(v, list) else [v]))


class Objective(BaseModel):
    """One objective: the weighted mean of task scores (proxy tasks on proxy rungs; full_tasks,
    default the same tasks without an item limit, on the full-evaluation rung)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tasks: dict[str, float]
    full_tasks: dict[str, float] | None = None
    direction: Literal["maximize", "minimize"] = "maximize"
    weight: float = 1.0  # scalarisation weight (cmaes sampler only)

    @field_validator("tasks", "full_tasks")
    @classmethod
    def _weights(cls, v: dict | None) -> dict | None:
        if v is None:
            return v
        if not v:
            raise ValueError("no tasks: give at least one {task: weight}")
        for task, w in v.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise ValueError(f"weight of task {task!r} must be a positive number, got {w!r}")
        return v

    @property
    def full(self) -> dict[str, float]:
        return self.full_tasks if self.full_tasks is not None else self.tasks

    def value(self, scores: Mapping[str, float], *, full: bool) -> float:
        tasks = self.full if full else self.tasks
        total = sum(tasks.values())
        return sum(w * float(scores[t]) for t, w in tasks.items()) / total


class Rungs(BaseModel):
    """Proxy rungs: items evaluated per task at each (nested subsets, so increasing); the rung
    above the last one is the full evaluation. No items: full evaluation only."""

    model_config = ConfigDict(extra="forbid")

    items: list[int] = Field(default_factory=lambda: [16, 48])
    eta: float = 3.0
    tie_break: Literal["hv", "epsnet"] = "hv"  # inside a Pareto front: hypervolume contribution or ε-net
    rule: Literal["bounded", "asha"] = "bounded"  # see automerge.search.scheduler
    # Noise-aware promotion: a trial outranks another only when better by more than noise_z
    # paired standard errors (from the items both scored); 0 = rank by the point values.
    noise_z: float = Field(default=1.0, ge=0.0, le=10.0)

    @field_validator("items")
    @classmethod
    def _items(cls, v: list[int]) -> list[int]:
        if any(i < 1 for i in v):
            raise ValueError("items per rung must be >= 1")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"items per rung must increase strictly, got {v}")
        return v

    @field_validator("eta")
    @classmethod
    def _eta(cls, v: float) -> float:
        if not v > 1:
            raise ValueError(f"reduction factor eta must be > 1, got {v:g}")
        return v


class FullEvaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=list)  # extra tasks recorded at the top rung
    limit: int | None = None  # items per task at the top rung (None: all)

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("limit must be >= 1 or null (all items)")
        return v


def parse_duration(value: Any) -> float | None:
    """Seconds from 90, "90s", "10m", "8h", "1h30m", "2d"; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("a duration must be > 0")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_duration(float(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"duration {value!r}: write e.g. 90s, 10m, 8h or 1h30m")
    seconds = sum(float(n) * {"d": 86400, "h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError("a duration must be > 0")
    return seconds


class Budget(BaseModel):
    """When sampling stops: after `trials` sampled trials and/or `wall_time` (per invocation).
    Promotions already due and, with `finalize`, full evaluation of each rung's front follow."""

    model_config = ConfigDict(extra="forbid")

    trials: int | None = 40
    wall_time: float | None = None
    finalize: bool = True

    @field_validator("wall_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return parse_duration(v)

    @field_validator("trials")
    @classmethod
    def _trials(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("trials must be >= 0")
        return v


def _default_parameters() -> dict[str, Any]:
    return {
        "weight": Range(low=0.0, high=1.5),
        "density": Range(low=0.1, high=1.0),
        "t": Range(low=0.0, high=1.0),
    }


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    base: str
    specialists: list[Specialist]
    references: list[Reference] = Field(default_factory=list)
    methods: Union[list[str], dict[str, dict[str, ParamSpec]]] = Field(
        default_factory=lambda: ["task_arithmetic", "ties", "dare_ties"]
    )
    parameters: dict[str, ParamSpec] = Field(default_factory=_default_parameters)
    layer_groups: LayerGroups = Field(default_factory=LayerGroups)
    objectives: list[Objective]
    rungs: Rungs = Field(default_factory=Rungs)
    full_evaluation: FullEvaluation = Field(default_factory=FullEvaluation)
    baselines: list[Literal["specialists", "uniform_linear", "task_arithmetic", "ties"]] = Field(
        default_factory=lambda: list(BASELINE_KINDS)
    )
    sampler: str = "tpe"  # a name in automerge.search.samplers.SAMPLERS
    seed: int = 0
    budget: Budget = Field(default_factory=Budget)
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    storage: str | None = None

    @field_validator("parameters", mode="before")
    @classmethod
    def _params(cls, v: Any) -> Any:
        return _coerce_specs(v)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: _coerce_specs(spec or {}) for k, spec in v.items()}
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        from automerge.search.samplers import SAMPLERS

        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; use one of {', '.join(SAMPLERS)}")
        return v

    @field_validator("specialists")
    @classmethod
    def _specialists(cls, v: list[Specialist]) -> list[Specialist]:
        if not v:
            raise ValueError("no specialists: list at least one {name, path}")
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"specialist names must be unique; repeated: {', '.join(dupes)}")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[Objective]) -> list[Objective]:
        if not v:
            raise ValueError("no objectives: list at least one {name, tasks}")
        names = [o.name for o in v]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        return v

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "search space") -> "SearchSpace":
        if not isinstance(data, Mapping):
            raise SpaceError(f"{source}: expected a mapping at the top level")
        data = dict(data)
        try:
            space = cls.model_validate(data)
        except ValidationError as err:
            errors = err.errors()
            first = next((e for e in errors if e["type"] == "value_error"), errors[0])
            where = _yaml_path(first["loc"])
            msg = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                msg = "unknown field; check its spelling (see search_spaces/demo.yaml for every field)"
            elif first["type"] == "missing":
                msg = "required field is missing"
            elif first["type"] != "value_error" and not isinstance(first.get("input"), (dict, list)):
                msg = f"{first.get('input')!r} is not valid: {msg}"
            raise SpaceError(f"{source}: {where}: {msg}") from None
        space._source = source
        space._check_static(source)
        return space

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "search space") -> "SearchSpace":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpaceError(f"{source}: not valid YAML: {yaml_problem(err)}; fix the file (search_spaces/demo.yaml "
                             "shows the format)") from None
        return cls.from_dict(data if data is not None else {}, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        path = Path(path)
        if not path.is_file():
            raise SpaceError(f"search space file {path} does not exist")
        return cls.from_yaml(path.read_text(), source=str(path))

    def to_yaml(self) -> str:
        """The resolved space: every default filled in (what results/<study>/space.yaml holds)."""
        data = self.model_dump(mode="json", exclude_none=False)
        return yaml.safe_dump(data, sort_keys=False, width=100)

    def fingerprint(self) -> str:
        """Hash of what decides trials and scores (not budget, device, storage): workers joining a
        study must agree on it."""
        data = self.model_dump(mode="json", exclude={"budget", "device", "storage", "name"})
        return hashlib.sha256(yaml.safe_dump(data, sort_keys=True).encode()).hexdigest()[:16]

    _source: str = "search space"
    # method fisher: {specialist: estimate file} of this study (automerge.search.fisher.study_fisher)
    _fisher: dict[str, str] = PrivateAttr(default_factory=dict)

    # -- derived -----------------------------------------------------------------------------

    @property
    def method_names(self) -> list[str]:
        return list(self.methods) if isinstance(self.methods, Mapping) else list(self.methods)

    @property
    def specialist_names(self) -> list[str]:
        return [s.name for s in self.specialists]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def num_rungs(self) -> int:
        return len(self.rungs.items) + 1

    def rung_limit(self, rung: int) -> int | None:
        """Items per task at a rung (None = every item: the full evaluation)."""
        if rung < len(self.rungs.items):
            return self.rungs.items[rung]
        return self.full_evaluation.limit

    def is_full(self, rung: int) -> bool:
        return rung == self.num_rungs - 1

    def rung_tasks(self, rung: int) -> list[str]:
        """Tasks evaluated at a rung, in a stable order."""
        tasks: list[str] = []
        full = self.is_full(rung)
        for o in self.objectives:
            for t in (o.full if full else o.tasks):
                if t not in tasks:
                    tasks.append(t)
        if full:
            for t in self.full_evaluation.tasks:
                if t not in tasks:
                    tasks.append(t)
        return tasks

    def objective_values(self, scores: Mapping[str, float], rung: int) -> list[float]:
        return [o.value(scores, full=self.is_full(rung)) for o in self.objectives]

    def _method_spec(self, method: str) -> dict[str, Any]:
        return dict(self.methods[method]) if isinstance(self.methods, Mapping) else {}

    def param_spec(self, method: str, param: str, specialist: str | None = None) -> Any:
        """How a parameter is set: specialist override > per-method > space-wide; None: the
        method's default."""
        if specialist is not None:
            for s in self.specialists:
                if s.name == specialist and param in s.parameters:
                    return s.parameters[param]
        per_method = self._method_spec(method)
        if param in per_method:
            return per_method[param]
        return self.parameters.get(param)

    def _spec_path(self, method: str, param: str, specialist: str | None) -> str:
        if specialist is not None:
            for i, s in enumerate(self.specialists):
                if s.name == specialist and param in s.parameters:
                    return f"specialists[{i}].parameters.{param}"
        if param in self._method_spec(method):
            return f"methods.{method}.{param}"
        return f"parameters.{param}"

    # -- validation --------------------------------------------------------------------------

    def _check_static(self, source: str) -> None:
        """Everything that needs no model: methods, parameter ranges, tasks, references."""
        from automerge.methods import METHODS

        def fail(where: str, msg: str) -> SpaceError:
            return SpaceError(f"{source}: {where}: {msg}")

        if not self.method_names:
            raise fail("methods", "no methods: list at least one merge method")
        k = len(self.specialists)
        for i, name in enumerate(self.method_names):
            where = f"methods.{name}" if isinstance(self.methods, Mapping) else f"methods[{i}]"
            if name not in METHODS:
                import difflib

                close = difflib.get_close_matches(name, list(METHODS), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise fail(where, f"unknown merge method {name!r}{hint}; known: {', '.join(METHODS)}")
            m = METHODS[name]
            if k < m.min_models or (m.max_models is not None and k > m.max_models):
                raise fail(where, f"{name} merges {m._count_text()} specialist(s) with the base; the space has "
                                  f"{k}; remove {name} or change the specialists"
                                  + ("; nuslerp slerps two specialists over the base, multislerp any number"
                                     if name == "slerp" else ""))
            if m.needs_fisher:
                self._check_fisher_sources(fail)
            known = {p.name for p in m.params}
            for pname in self._method_spec(name):
                if pname not in known:
                    raise fail(f"{where}.{pname}", f"{name} has no parameter {pname!r}; known: {', '.join(sorted(known))}")
            for p in m.params:
                owners: list[str | None] = [None]
                if p.per_model:
                    owners = [s.name for s in self.specialists]
                for owner in owners:
                    spec = self.param_spec(name, p.name, owner)
                    path = self._spec_path(name, p.name, owner)
                    if spec is None:
                        if p.required:
                            raise fail(f"parameters.{p.name}", f"method {name} needs parameter {p.name!r} "
                                                               f"({p.allowed()}); give a value or a range")
                        continue
                    _check_spec_against(p, spec, fail=lambda msg, path=path: fail(path, msg))
            self._check_negation(name, m, fail)
        # Parameters no listed method takes are probably typos.
        taken = {p.name for n in self.method_names for p in METHODS[n].params}
        for pname in self.parameters:
            if pname not in taken and pname not in ("weight", "density", "t"):
                raise fail(f"parameters.{pname}", f"no listed method takes {pname!r}; methods "
                                                  f"{', '.join(self.method_names)} take {', '.join(sorted(taken))}")
        for i, s in enumerate(self.specialists):
            for pname in s.parameters:
                if not any(p.per_model and p.name == pname for n in self.method_names for p in METHODS[n].params):
                    raise fail(f"specialists[{i}].parameters.{pname}", f"{pname!r} is not a per-specialist parameter "
                                                                       "of any listed method")
        from automerge.search.samplers import SAMPLERS

        needs = SAMPLERS[self.sampler].needs
        if needs is not None:
            import importlib.util

            if importlib.util.find_spec(needs) is None:
                others = ", ".join(k.name for k in SAMPLERS.values() if k.needs is None)
                raise fail("sampler", f"{self.sampler} needs the `{needs}` package (pip install {needs}), or use "
                                      f"one of {others}")
        names = set(self.specialist_names)
        for i, r in enumerate(self.references):
            if r.name in names:
                raise fail(f"references[{i}].name", f"{r.name!r} is also a specialist's name; rename it")
        self._check_tasks(fail)

    def _check_negation(self, method: str, m: Any, fail: Callable[[str, str], SpaceError]) -> None:
        """Negative weights (negation: subtracting a task vector) only where no weight sum divides.

        A normalising merge divides by the sum of the (kept) weights; once a weight can be
        negative that sum can be 0 or tiny and the merge explodes, so such a space is refused.
        """
        normalize = next((p for p in m.params if p.name == "normalize"), None)
        if normalize is None:
            return
        spec = self.param_spec(method, "normalize")
        if spec is None:
            spec = normalize.default
        can_normalize = True in spec.choices if isinstance(spec, Choice) else bool(spec)
        if not can_normalize:
            return
        for s in self.specialists:
            spec = self.param_spec(method, "weight", s.name)
            values = ([spec.low] if isinstance(spec, Range) else spec.choices if isinstance(spec, Choice)
                      else [spec])
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for v in values):
                raise fail(self._spec_path(method, "weight", s.name),
                           f"negative weights (negation) with {method}'s normalize=true divide by a weight sum "
                           f"that can be 0; set normalize: false for {method} (methods.{method}.normalize), "
                           "or use task_arithmetic for negation")

    def _check_fisher_sources(self, fail: Callable[[str, str], SpaceError]) -> None:
        """Method fisher: every specialist has an estimate file, data, or proxy items of its domain."""
        from automerge.search.fisher import proxy_tasks_for

        for i, s in enumerate(self.specialists):
            src = s.fisher
            if isinstance(src, str) or (src is not None and src.data is not None):
                continue
            if not proxy_tasks_for(self, s):
                raise fail(f"specialists[{i}].fisher", f"method fisher needs an estimate for {s.name}, and no proxy "
                                                       f"task of the objectives has its domain {s.domain!r}; give "
                                                       "fisher: FILE.safetensors or fisher: {data: FILE.jsonl}")

    def _check_tasks(self, fail: Callable[[str, str], SpaceError]) -> None:
        try:
            from automerge.eval import available_tasks
        except ImportError:  # evaluation package not installed: checked when the evaluator starts
            return
        from automerge.eval._data_tasks import is_data_task, parse
        from automerge.errors import EvalError

        known = available_tasks()

        def ok(task: str) -> bool:
            return task in known or task.startswith("lm_eval:") or is_data_task(task) or any(
                task.startswith(k.rstrip("*")) for k in known if k.endswith("*"))

        for i, o in enumerate(self.objectives):
            for field, tasks in (("tasks", o.tasks), ("full_tasks", o.full_tasks or {})):
                for t in tasks:
                    if is_data_task(t):
                        try:
                            parse(t)      # the name only: the file is read by check_models
                        except EvalError as err:
                            raise fail(f"objectives[{i}].{field}.{t}", str(err)) from None
                    if not ok(t):
                        raise fail(f"objectives[{i}].{field}.{t}",
                                   f"unknown task {t!r}; known: {', '.join(sorted(known))} or lm_eval:<task>")
        for j, t in enumerate(self.full_evaluation.tasks):
            if not ok(t):
                raise fail(f"full_evaluation.tasks[{j}]", f"unknown task {t!r}; known: {', '.join(sorted(known))}")

    def check_models(self) -> dict[str, Any]:
        """Open every checkpoint (config + safetensors headers, no tensor data) and check they can be
        merged; SpaceError names the YAML path. Returns {"num_layers": n}."""
        from automerge.checkpoints import Checkpoint, check_compatible

        src = self._source

        def open_at(where: str, path: str) -> Any:
            try:
                return Checkpoint.open(path)
            except AutomergeError as err:
                raise SpaceError(f"{src}: {where}: {err}") from None

        base = open_at("base", self.base)

        def open_against_base(where: str, path: str) -> Any:  # also LoRA adapters and state-dict files
            from automerge.specialists import open_specialist

            try:
                return open_specialist(path, base=base)
            except AutomergeError as err:
                raise SpaceError(f"{src}: {where}: {err}") from None

        specs = [open_against_base(f"specialists[{i}].path", s.path) for i, s in enumerate(self.specialists)]
        refs = [open_against_base(f"references[{i}].path", r.path) for i, r in enumerate(self.references)]
        for where, group in (("specialists", specs), ("references", refs)):
            for i, ck in enumerate(group):
                try:
                    check_compatible(base, [ck])
                except AutomergeError as err:
                    raise SpaceError(f"{src}: {where}[{i}].path: cannot be merged with base {self.base}: {err}") from None
        self._check_data_files()
        layers = base.num_layers
        too_many = [g for g in self.layer_groups.group_choices if g > layers]
        if too_many and self._any_per_group():
            raise SpaceError(f"{src}: layer_groups.num_groups: {too_many[0]} groups but the base has only "
                             f"{layers} layers; use at most {layers}")
        return {"num_layers": layers}

    def _check_data_files(self) -> None:
        """Read every data:PATH.jsonl task's file now, so a bad record fails before any model loads."""
        from automerge.eval._data_tasks import is_data_task, load
        from automerge.errors import EvalError

        for i, o in enumerate(self.objectives):
            for field, tasks in (("tasks", o.tasks), ("full_tasks", o.full_tasks or {})):
                for t in tasks:
                    if is_data_task(t):
                        try:
                            load(t)
                        except EvalError as err:
                            raise SpaceError(f"{self._source}: objectives[{i}].{field}.{t}: {err}") from None

    # -- trial -> recipe ---------------------------------------------------------------------

    def _any_per_group(self, method: str | None = None) -> bool:
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
        if self._any_per_group(method):
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

    # -- baselines ---------------------------------------------------------------------------

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
        if self._any_per_group(method):
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
                if not _spec_contains(spec, want):
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


def _spec_contains(spec: Any, value: Any) -> bool:
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


def _check_spec_against(p: Any, spec: Any, *, fail: Callable[[str], SpaceError]) -> None:
    """A space entry must only produce values the method accepts."""
    if isinstance(spec, Range):
        if p.type not in (float, int):
            raise fail(f"{p.name} is a {p.type.__name__} parameter; give a value or {{choices: [...]}}, not a range")
        for end, v in (("low", spec.low), ("high", spec.high)):
            if not p.in_range(float(v)):
                raise fail(f"{end} {v:g} is outside what {p.name} allows: {p.allowed()}")
        return
    values = spec.choices if isinstance(spec, Choice) else [spec]
    for v in values:
        try:
            p.check(v, method="search space")
        except AutomergeError:
            raise fail(f"{v!r} is not allowed for {p.name}: {p.allowed()}") from None


def _yaml_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in ("Range", "Choice", "bool", "int", "float", "str", "list[str]", "SpecialistFisher",
                           "dict[str,union[Range,Choice,bool,int,float,str]]", "function-after[_check(), Range]",
                           "literal['specialists','uniform_linear','task_arithmetic','ties']"):
            continue  # pydantic's union-member markers are not part of the YAML path
        elif "[" in str(part) or "(" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


if False:  # pragma: no cover - typing only
    from automerge.recipe import Recipe  # noqa: F401


def yaml_problem(err: Exception) -> str:
    """A YAML parse error on one line: what and where (line, column), not PyYAML's multi-line excerpt."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())[:300]
