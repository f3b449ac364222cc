"""A Recipe is one concrete merge: the unit users keep, export and re-apply.

    method: ties
    base: zoo:base
    models:
      - name: code
        path: zoo:code
        parameters: {weight: 0.7, density: {block0: 0.3, default: 0.6}}
      - name: lang
        path: zoo:lang
        parameters: {weight: 0.5, density: 0.5}
    parameters: {lambda: 1.0}
    num_groups: 2
    seed: 0

A parameter value is a number (every tensor) or a mapping from layer group to number
(see `automerge.layers.LayerGrouping`). A tensor in group ``block1.attn`` looks up, in
order, ``block1.attn``, ``block1``, ``attn``, ``default``; ``embed`` and ``head`` look up
themselves, then ``default``.

A Recipe exports to a mergekit YAML that makes mergekit compute the same tensors: group
values become per-layer / per-tensor ``filter`` lists (first match wins), never gradients.
A mergekit YAML imports (gradients, filters and full-range slices resolved per tensor as
mergekit does) through `automerge.mergekit_config`; a block's norms may then hold their own
value (``blockN.attn.norm``, ``blockN.mlp.norm``, with split_attn_mlp).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from automerge.errors import RecipeError
from automerge.files import write_text as write_text_atomic
from automerge.layers import LayerGrouping, is_block_norm, is_head_norm, layer_index
from automerge.names import DTYPES

GroupValue = Union[float, dict[str, float]]
ParamValue = Union[bool, float, dict[str, float]]

_GROUP_KEY = re.compile(r"^(embed|head|attn|mlp|default|block\d+|block\d+\.(attn|mlp))$")
# Norm tensors may take their own value: a block's (split_attn_mlp only) blockN.attn.norm, mlp.norm, ...;
# the final norm head.norm (apart from lm_head).
_NORM_KEY = re.compile(r"^((block\d+\.)?(attn|mlp)|head)\.norm$")


def _check_group_keys(where: str, value: Any) -> None:
    if isinstance(value, dict):
        if not value:
            raise RecipeError(f"{where}: empty mapping; give a number or at least one layer group")
        for key in value:
            if not (_GROUP_KEY.match(str(key)) or _NORM_KEY.match(str(key))):
                raise RecipeError(
                    f"{where}: unknown layer group {key!r}; use embed, head, attn, mlp, default, "
                    "blockN, blockN.attn / blockN.mlp, blockN.attn.norm / blockN.mlp.norm or head.norm"
                )


def lookup_keys(group: str) -> list[str]:
    """The keys a group-valued parameter is searched for, most specific first."""
    if group == "head.norm":
        return [group, "head", "default"]
    if group.endswith(".norm"):  # blockN.attn.norm: the norm's own value, then its sublayer's
        block, role, _ = group.split(".")
        return [group, f"{block}.{role}", block, f"{role}.norm", role, "default"]
    if "." in group:
        block, role = group.split(".", 1)
        return [group, block, role, "default"]
    return [group, "default"]


def resolve_value(value: Any, group: str, *, where: str) -> Any:
    """The concrete value of a (possibly group-valued) parameter for one layer group."""
    if not isinstance(value, dict):
        return value
    for key in lookup_keys(group):
        if key in value:
            return value[key]
    raise RecipeError(
        f"{where}: no value for layer group {group!r} (looked up {', '.join(lookup_keys(group))}); "
        "add that group or a 'default'"
    )


class FisherData(BaseModel):
    """Estimate a specialist's Fisher from a text sample (`automerge.fisher.cached_fisher`, cached)."""

    model_config = ConfigDict(extra="forbid")

    data: str  # JSONL of {"text": ...} records, or a plain text file
    max_tokens: int = Field(8192, ge=2)
    seq_len: int = Field(512, ge=2)
    batch_size: int = Field(1, ge=1)


class ModelSpec(BaseModel):
    """One specialist of a merge: a name used in searches, a path and its per-model parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    parameters: dict[str, GroupValue] = Field(default_factory=dict)
    # method fisher only: an estimate file (`automerge fisher`), or the data to estimate it from
    fisher: Union[str, FisherData, None] = None


class Recipe(BaseModel):
    """One concrete merge, validated against the method's typed parameters."""

    model_config = ConfigDict(extra="forbid")

    method: str
    base: str | None = None
    models: list[ModelSpec]
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    num_groups: int = Field(1, ge=1)
    split_attn_mlp: bool = False
    seed: int = 0
    dtype: Literal[DTYPES] = "float32"

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return models

    # -- validation ----------------------------------------------------------------------

    def validate_for(self, grouping: LayerGrouping | None = None) -> None:
        """Check method, model count and every parameter in every layer group; raise RecipeError.

        Without a grouping only the scalar form of each value is checked (group keys are
        checked for syntax); with one, every group of the model is resolved and checked.
        """
        from automerge.methods import get_method

        method = get_method(self.method)
        k = len(self.models)
        if k < method.min_models or (method.max_models is not None and k > method.max_models):
            most = "any number" if method.max_models is None else str(method.max_models)
            raise RecipeError(
                f"method {self.method!r} takes {method.min_models} to {most} specialist models; "
                f"the recipe lists {k}"
            )
        if method.needs_base and not self.base:
            raise RecipeError(f"method {self.method!r} needs a base model; set 'base:' in the recipe")
        if not self.base and self._uses_base(method):
            raise RecipeError(
                f"method {self.method!r} with use_base: true works on task vectors and needs a base model; "
                "set 'base:' in the recipe, or use_base: false to merge the models themselves"
            )
        for name, value in self.parameters.items():
            _check_group_keys(f"parameters.{name}", value)
        for m in self.models:
            for name, value in m.parameters.items():
                _check_group_keys(f"models[{m.name}].parameters.{name}", value)
        if self.has_norm_values() and not self.split_attn_mlp:
            raise RecipeError(
                "a parameter gives block norms their own value (a '...norm' layer group); that needs "
                "split_attn_mlp: true"
            )
        groups = self.groups(grouping) if grouping is not None else ["default"]
        if grouping is not None and grouping.num_groups != self.num_groups:
            raise RecipeError(
                f"recipe has num_groups={self.num_groups} but was checked with {grouping.num_groups}"
            )
        for group in groups:
            params, per_model = self.resolve_group(group, lenient=grouping is None)
            method.check_params(params, per_model)

    def _uses_base(self, method: Any) -> bool:
        """Whether the merge reads the base: always for most methods; for the base-optional
        ones (nuslerp, multislerp, karcher) as their use_base parameter says."""
        if method.needs_base:
            return True
        if not any(p.name == "use_base" for p in method.params):
            return False
        return self.parameters.get("use_base", True) is not False

    def resolve_group(self, group: str, *, lenient: bool = False) -> tuple[dict, list[dict]]:
        """(method parameters, per-model parameters) with every value resolved for one layer group;
        ``lenient`` (no grouping known): a per-group mapping gives its first value."""
        def one(value: Any, where: str) -> Any:
            if lenient and isinstance(value, dict):
                # Without a grouping, check every number the mapping holds: take the first.
                return next(iter(value.values()))
            return resolve_value(value, group, where=where)

        params = {k: one(v, f"parameters.{k}") for k, v in self.parameters.items()}
        per_model = [
            {k: one(v, f"models[{m.name}].parameters.{k}") for k, v in m.parameters.items()}
            for m in self.models
        ]
        return params, per_model

    def resolve(self, tensor_name: str, grouping: LayerGrouping) -> tuple[dict, list[dict]]:
        """Concrete global and per-model parameters for one tensor (defaults not filled)."""
        return self.resolve_group(self.tensor_group(tensor_name, grouping))

    def _norm_keys(self) -> set[str]:
        values = list(self.parameters.values()) + [v for m in self.models for v in m.parameters.values()]
        return {str(k) for v in values if isinstance(v, dict) for k in v if _NORM_KEY.match(str(k))}

    def has_norm_values(self) -> bool:
        """Whether a parameter gives block norms their own value (``blockN.attn.norm`` keys)."""
        return any(k != "head.norm" for k in self._norm_keys())

    def tensor_group(self, tensor_name: str, grouping: LayerGrouping) -> str:
        """The group a tensor's values are looked up for: its layer group, or ``<group>.norm``
        for a norm when the recipe gives norms their own values."""
        group = grouping.group_of(tensor_name)
        if group == "head":
            return "head.norm" if is_head_norm(tensor_name) and "head.norm" in self._norm_keys() else group
        if grouping.split_attn_mlp and is_block_norm(tensor_name) and self.has_norm_values():
            return f"{group}.norm"
        return group

    def groups(self, grouping: LayerGrouping) -> list[str]:
        """Every group `tensor_group` can return for this grouping, in model order."""
        blocks = grouping.split_attn_mlp and self.has_norm_values()
        out = []
        for g in grouping.groups():
            out.append(g)
            if (g == "head" and "head.norm" in self._norm_keys()) or (blocks and g != "embed" and g != "head"):
                out.append(f"{g}.norm")
        return out

    def grouping(self, num_layers: int) -> LayerGrouping:
        if self.num_groups > num_layers:
            raise RecipeError(
                f"num_groups={self.num_groups} but the model has only {num_layers} layers; "
                f"use at most {num_layers}"
            )
        return LayerGrouping(
            num_layers=num_layers, num_groups=self.num_groups, split_attn_mlp=self.split_attn_mlp
        )

    # -- YAML ----------------------------------------------------------------------------

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        for m in data["models"]:  # no `fisher: null` on every model of every other method
            if m.get("fisher") is None:
                m.pop("fisher", None)
        return yaml.safe_dump(data, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(Path(path), self.to_yaml())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "recipe") -> "Recipe":
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise RecipeError(f"{source}: {where}: {first['msg']}") from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "recipe") -> "Recipe":
        data = _parse_yaml(text, source)
        if is_mergekit_config(data):
            return cls.from_mergekit(data, source=source)
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """An automerge recipe or a mergekit YAML."""
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        return cls.from_yaml(path.read_text(), source=str(path)).with_fisher_paths_from(path.parent)

    def with_fisher_paths_from(self, directory: str | Path) -> "Recipe":
        """The same recipe with relative Fisher paths (files and data) made absolute against
        `directory` (a recipe file's own directory: `fisher:` paths are relative to the recipe)."""
        def absolute(p: str) -> str:
            return p if Path(p).is_absolute() else str((Path(directory) / p).resolve())

        models = []
        for m in self.models:
            f = m.fisher
            if isinstance(f, str):
                f = absolute(f)
            elif isinstance(f, FisherData):
                f = f.model_copy(update={"data": absolute(f.data)})
            models.append(m.model_copy(update={"fisher": f}))
        return self.model_copy(update={"models": models})

    # -- mergekit ------------------------------------------------------------------------

    def to_mergekit(self, tensor_names: Sequence[str], grouping: LayerGrouping) -> dict:
        """A mergekit configuration that computes the same tensors (fp32 math, our dtype out)."""
        from automerge.methods import get_method

        method = get_method(self.method)
        if method.mergekit_name is None:
            raise RecipeError(f"method {self.method!r} has no mergekit equivalent; export the model instead")
        names = list(tensor_names)

        def setting(value: Any) -> Any:
            if not isinstance(value, dict):
                return value
            per_tensor = {n: resolve_value(value, self.tensor_group(n, grouping), where="export") for n in names}
            return _filters(per_tensor)

        models = []
        if method.name == "slerp":
            # mergekit's slerp interpolates between base_model (t=0) and the other model (t=1).
            models.append({"model": self.base})
        for m in self.models:
            entry: dict[str, Any] = {"model": _mergekit_model_ref(m.path, self.base)}
            if m.parameters:
                entry["parameters"] = {k: setting(v) for k, v in m.parameters.items()}
            models.append(entry)
        config: dict[str, Any] = {"merge_method": method.mergekit_name, "models": models}
        if self.base is not None and self._uses_base(method):
            # mergekit's linear would treat a base_model as one more input needing a weight;
            # nuslerp, multislerp and karcher use the base exactly when base_model is set.
            config["base_model"] = self.base
        exported = {k: v for k, v in self.parameters.items() if k != "use_base"}
        if exported:
            config["parameters"] = {k: setting(v) for k, v in exported.items()}
        config["dtype"] = "float32"
        config["out_dtype"] = self.dtype
        return config

    @classmethod
    def from_mergekit(cls, data: Mapping[str, Any], *, source: str = "mergekit config") -> "Recipe":
        """Import a mergekit config that describes one tensor-wise merge, resolving gradients,
        filters and slices per tensor as mergekit does (automerge/mergekit_config.py); refuse
        the rest by name, with the reason."""
        from automerge.mergekit_config import import_mergekit
        from automerge.methods import METHODS

        by_mergekit = {m.mergekit_name: m.name for m in METHODS.values() if m.mergekit_name}
        fields = import_mergekit(data, source=source, method_names=by_mergekit)
        if fields["dtype"] not in DTYPES:
            raise RecipeError(f"{source}: dtype {fields['dtype']!r} not supported; use one of {', '.join(DTYPES)}")
        fields["models"] = [ModelSpec(**m) for m in fields["models"]]
        return cls.from_dict(fields, source=source)


# -- helpers --------------------------------------------------------------------------------


def is_mergekit_config(data: Mapping[str, Any]) -> bool:
    return "merge_method" in data


def _parse_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping at the top level")
    return data


def _mergekit_model_ref(path: str, base: str | None) -> str:
    """How mergekit names a specialist: a LoRA adapter as `BASE+ADAPTER` (mergekit merges it into the
    base on load: the same task vector up to the base dtype's rounding); a state dict it cannot read."""
    from automerge.checkpoints import resolve_model_path
    from automerge.errors import CheckpointError
    from automerge.specialists import is_lora_adapter, is_state_dict_file

    try:
        p = resolve_model_path(path)
    except CheckpointError:
        return path
    if is_state_dict_file(p):
        raise RecipeError(f"model {path!r} is a plain state dict, which mergekit cannot read; export the merged "
                          "model (automerge merge), or save the specialist as a HF model dir (config.json + "
                          "safetensors) and point the recipe at it")
    if is_lora_adapter(p):
        if base is None:
            raise RecipeError(f"LoRA adapter {path!r} needs the recipe's base for mergekit's BASE+ADAPTER reference")
        return f"{base}+{path}"
    return path


def _filters(per_tensor: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-tensor values as a mergekit filter list: one entry per layer when its tensors agree.

    Filters are substrings and the first match wins: a layer filter ends with a dot
    (``model.layers.3.`` never matches layer 30), other tensors are named in full.
    """
    by_layer: dict[str, dict[str, Any]] = {}
    entries: list[dict[str, Any]] = []
    for name, value in per_tensor.items():
        i = layer_index(name)
        if i is None:
            entries.append({"filter": name, "value": value})
            continue
        marker = f".{i}."
        prefix = name[: name.index(marker) + len(marker)]
        by_layer.setdefault(prefix, {})[name] = value
    for prefix, tensors in by_layer.items():
        values = set(tensors.values())
        if len(values) == 1:
            entries.append({"filter": prefix, "value": values.pop()})
        else:
            entries.extend({"filter": n, "value": v} for n, v in tensors.items())
    most_common = Counter(per_tensor.values()).most_common(1)[0][0]
    entries.append({"value": most_common})
    return entries
