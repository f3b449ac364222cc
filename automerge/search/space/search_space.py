"""`SearchSpace`: the YAML file's model, its loading and what follows from it (rungs, objectives,
parameter lookup); checks, trial -> recipe and baselines are mixed in from their modules."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from automerge.errors import SpaceError
from automerge.names import DTYPES
from automerge.search.space.baselines import Baselines
from automerge.search.space.schema import BASELINE_KINDS, Budget, FullEvaluation, LayerGroups, Objective, ParamSpec, \
    Reference, Rungs, Specialist, _coerce_specs, _default_parameters, _yaml_path, yaml_problem
from automerge.search.space.suggestion import Suggestion
from automerge.search.space.validation import SpaceChecks


class SearchSpace(SpaceChecks, Suggestion, Baselines, BaseModel):
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
    dtype: Literal[DTYPES] = "float32"
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
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "search space", check: bool = True) -> "SearchSpace":
        """The space of `data`, validated by its schema and, with `check`, by the static checks
        against the merge methods, tasks and samplers (they import the method registry and the
        evaluation stack; a stored space read back for display skips them)."""
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
        if check:
            space._check_static(source)
        return space

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "search space", check: bool = True) -> "SearchSpace":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpaceError(f"{source}: not valid YAML: {yaml_problem(err)}; fix the file (search_spaces/demo.yaml "
                             "shows the format)") from None
        return cls.from_dict(data if data is not None else {}, source=source, check=check)

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
