"""The search space's YAML schema: the pydantic models of its sections, and one-line error paths."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Mapping, Sequence, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

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



def yaml_problem(err: Exception) -> str:
    """A YAML parse error on one line: what and where (line, column), not PyYAML's multi-line excerpt."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())[:300]

