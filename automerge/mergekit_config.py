"""Read a mergekit configuration into the fields of a Recipe, exactly as mergekit 0.1.5 resolves it.

What imports: every config that describes one tensor-wise merge of same-shape models --
`models:` or `slices:` whose sources all cover the same layers (the whole model, in one slice
or in consecutive slices), `base_model` (also per slice, when it is the same), `dtype`,
`out_dtype`, `tokenizer_source: base`, and `parameters` at every level (config, slice, model
or slice source) as scalars, gradients or filter lists.

How values are resolved (mergekit's `plan.py` / `config.py`): for each tensor, a parameter
is looked up model source -> slice -> config, the first level whose setting gives a value
wins; a filter list takes its first entry whose `filter` is a substring of the tensor name
(no filter, or "*", matches everything); a gradient [v0, ..., vn] is interpolated linearly at
t = (layer offset in its slice) / (slice length - 1) (t = 1 for a one-layer slice) and at
t = 0 for tensors outside the blocks (embeddings take the first slice's settings, the final
norm and lm_head the last's).

The per-tensor values then become group-valued recipe parameters: one group per layer when
values vary over layers, attention and MLP apart when they differ there, a block's norms
apart (``blockN.attn.norm``) when a filter leaves them out. Tensors automerge keeps in one
group (the q/k/v/o projections of a layer, or its gate/up/down projections) must get the same
value, else the import is refused naming the tensors.

What is refused, by name, with the reason: `passthrough` and slices whose sources cover
different layers (a frankenmerge stacks or reorders layers: no tensor-wise merge),
`tokenizer_source` other than `base` and `tokenizer:` (they rebuild the vocabulary and the
embeddings), `modules:` (multi-module layouts), `chat_template`, LoRA references.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automerge.errors import AutomergeError, RecipeError
from automerge.layers import is_block_norm, is_head_norm, layer_index, tensor_role

# Keys automerge refuses, with the reason a user reads.
_REFUSED_KEYS = {
    "modules": "describes a multi-module (e.g. vision + language) merge; automerge merges one causal LM "
               "-- write it with models: or slices:",
    "tokenizer": "builds a new vocabulary, which rebuilds the embeddings and lm_head; automerge merges "
                 "models that share the base's tokenizer",
    "chat_template": "sets the output's chat template; automerge writes the base's tokenizer files -- "
                     "remove it and set the template on the merged model",
}
# mergekit parameters that change how mergekit stores a mask, never the merged values.
_STORAGE_ONLY = {"int8_mask"}
_BASE_OPTIONAL = {"nuslerp", "multislerp", "karcher"}  # use_base: whether base_model is set


@dataclass(frozen=True)
class _Source:
    """One model of the merge: its path and its own parameters in each slice (None: not set)."""

    path: str
    params: tuple[Mapping[str, Any] | None, ...]  # per slice


def model_path(ref: Any) -> str:
    """A mergekit model reference as a path; LoRA references are refused."""
    if isinstance(ref, dict):  # mergekit's {model: path, lora: ...} form
        if ref.get("lora"):
            raise RecipeError("mergekit LoRA model references are not supported; merge the LoRA first")
        ref = ref.get("model") or ref.get("path")
    if isinstance(ref, str) and "+" in ref and not Path(ref).exists():
        raise RecipeError(f"mergekit model reference {ref!r} applies a LoRA (model+lora); merge the LoRA first")
    if not isinstance(ref, str):
        raise RecipeError(f"mergekit model reference {ref!r} is not a path")
    return ref


def lora_adapter_path(ref: Any, base: str | None, where: str) -> str | None:
    """The adapter of a mergekit `MODEL+LORA` reference on the merge's base (automerge reads a LoRA
    adapter as a specialist against the base), None for a plain model reference."""
    if isinstance(ref, dict) and ref.get("lora"):
        model, lora = ref.get("model"), ref.get("lora")
        model = model.get("path") if isinstance(model, dict) else model
        lora = lora.get("path") if isinstance(lora, dict) else lora
    elif isinstance(ref, str) and "+" in ref and not Path(ref).exists():
        model, lora = ref.split("+", 1)
    else:
        return None
    if model != base:
        raise RecipeError(f"{where}: LoRA {lora!r} is applied to {model!r}, not to base_model {base!r}; automerge "
                          "reads an adapter against the merge's base: merge the LoRA into its model first")
    return str(lora)


def is_scalar(setting: Any) -> bool:
    return isinstance(setting, (bool, int, float, str))


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """mergekit's `evaluate_setting`: a scalar, a gradient at t, or the first matching filter's
    value; None when no filter matches (the next level is asked)."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if is_scalar(setting):
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(is_scalar(e) for e in setting):
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        for cond in setting:
            if not isinstance(cond, Mapping) or "value" not in cond:
                raise RecipeError(f"mergekit setting {cond!r} is neither a number, a gradient nor "
                                  "{filter: ..., value: ...}")
            flt = cond.get("filter")
            if flt is None or flt == "*" or (tensor_name and str(flt) in tensor_name):
                return evaluate_setting(cond["value"], tensor_name, t)
        return None
    raise RecipeError(f"unexpected mergekit setting {setting!r}")


def _all_scalar(*levels: Mapping[str, Any] | None) -> bool:
    return all(is_scalar(v) for level in levels if level for v in level.values())


def import_mergekit(data: Mapping[str, Any], *, source: str, method_names: Mapping[str, str]) -> dict[str, Any]:
    """The fields of a Recipe (method, base, models, parameters, num_groups, split_attn_mlp, dtype)
    that make automerge compute what mergekit computes for `data`; RecipeError names what cannot."""
    from automerge.methods import get_method

    _check_scope(data, source, method_names)
    method = get_method(method_names[data.get("merge_method")])
    base = data.get("base_model")
    base = model_path(base) if base is not None else None
    top = dict(data.get("parameters") or {})

    if data.get("slices"):
        if data.get("models"):
            raise RecipeError(f"{source}: both 'models' and 'slices' are given; mergekit takes one of them")
        sources, slice_params, ranges, base = _slices(data["slices"], base, source)
    else:
        entries = data.get("models") or []
        sources = [_Source(path=lora_adapter_path(e.get("model"), base, f"{source}: models[{i}].model")
                           or model_path(e.get("model")), params=(e.get("parameters"),))
                   for i, e in enumerate(entries)]
        slice_params, ranges = [None], None
    # The base may be listed among the models (slerp, task arithmetic configs do); it is no specialist.
    specialists = [s for s in sources if s.path != base]
    if not specialists:
        raise RecipeError(f"{source}: no models to merge besides the base")
    names = _unique_names([s.path for s in specialists])

    simple = ranges is None and _all_scalar(top) and all(_all_scalar(*s.params) for s in specialists)
    if simple:
        params = {k: v for k, v in top.items() if k not in _STORAGE_ONLY}
        models = [{"name": n, "path": s.path, "parameters": dict(s.params[0] or {})}
                  for n, s in zip(names, specialists)]
        grouping = {"num_groups": 1, "split_attn_mlp": False}
    else:
        params, models, grouping = _per_tensor_params(method, base, top, specialists, names, slice_params,
                                                      ranges, source)
    if method.name in _BASE_OPTIONAL:
        params["use_base"] = base is not None
    dtype = data.get("out_dtype") or data.get("dtype") or "float32"
    return dict(method=method.name, base=base, models=models, parameters=params, dtype=dtype, **grouping)


def _check_scope(data: Mapping[str, Any], source: str, method_names: Mapping[str, str]) -> None:
    """Refuse what is no tensor-wise merge of same-vocabulary models, or has no automerge method."""
    for key, reason in _REFUSED_KEYS.items():
        if data.get(key):
            raise RecipeError(f"{source}: mergekit key {key!r} is not supported: it {reason}")
    tok = data.get("tokenizer_source")
    if tok not in (None, "base"):
        raise RecipeError(
            f"{source}: tokenizer_source: {tok!r} builds the output vocabulary from other tokenizers, which "
            "rebuilds the embeddings and lm_head; automerge merges models sharing the base's tokenizer "
            "(tokenizer_source: base, or none)"
        )
    mk_method = data.get("merge_method")
    if mk_method == "passthrough":
        raise RecipeError(
            f"{source}: merge_method 'passthrough' copies or stacks layers (a frankenmerge); that is no "
            "tensor-wise merge of same-shape models, which is what automerge does"
        )
    if mk_method not in method_names:
        raise RecipeError(
            f"{source}: merge_method {mk_method!r} has no automerge equivalent; "
            f"supported: {', '.join(sorted(method_names))}"
        )


def _per_tensor_params(method, base, top, specialists, names, slice_params, ranges, source):
    """(parameters, models, grouping) of a config whose values vary by layer (gradients, per-slice
    values, filters): every tensor's value resolved the way mergekit does, then grouped by layer."""
    global_names = {p.name for p in method.global_params}
    model_names = {p.name for p in method.model_params}
    tensors, num_layers = _tensor_names(base or specialists[0].path, source)
    if ranges is not None and ranges[-1][1] != num_layers:
        raise RecipeError(
            f"{source}: slices cover layers 0-{ranges[-1][1]} but the model has {num_layers}; a merge of "
            "part of the layers drops the rest (a frankenmerge), which automerge does not do"
        )
    ranges = ranges or [(0, num_layers)]
    placed = [_place(n, ranges) for n in tensors]  # (slice index, t) per tensor
    keys = sorted({k for level in [top, *slice_params] if level for k in level}
                  | {k for s in specialists for level in s.params if level for k in level})
    keys = [k for k in keys if k not in _STORAGE_ONLY]
    per_tensor_global: dict[str, dict[str, Any]] = {}
    per_tensor_model: list[dict[str, dict[str, Any]]] = [{} for _ in specialists]
    for key in keys:
        set_by_a_model = any(level and key in level for s in specialists for level in s.params)
        if key in global_names and set_by_a_model:
            raise RecipeError(f"{source}: {key!r} is a global parameter of {method.name}; mergekit ignores "
                              "it in a model's parameters -- set it in the top-level parameters")
        per_model = key in model_names or (key not in global_names and set_by_a_model)
        for name, (si, t) in zip(tensors, placed):
            shared = [slice_params[si], top]
            if not per_model:
                value = _first(shared, key, name, t)
                if value is not None:
                    per_tensor_global.setdefault(key, {})[name] = value
                continue
            for j, s in enumerate(specialists):
                value = _first([s.params[si], *shared], key, name, t)
                if value is not None:
                    per_tensor_model[j].setdefault(key, {})[name] = value
    for key, per_tensor in per_tensor_global.items():
        per_tensor_global[key] = _complete(per_tensor, tensors, method, key, f"{source}: parameters.{key}")
    for s, m in zip(specialists, per_tensor_model):
        for key, per_tensor in m.items():
            m[key] = _complete(per_tensor, tensors, method, key, f"{source}: model {s.path}: {key}")
    layout = _layout([*per_tensor_global.values(), *(v for m in per_tensor_model for v in m.values())],
                     tensors, num_layers, source)
    params = {k: _group_value(v, tensors, layout) for k, v in per_tensor_global.items()}
    models = [{"name": n, "path": s.path,
               "parameters": {k: _group_value(v, tensors, layout) for k, v in per_tensor_model[j].items()}}
              for j, (n, s) in enumerate(zip(names, specialists))]
    grouping = {"num_groups": layout.num_groups, "split_attn_mlp": layout.split}

    return params, models, grouping


def _slices(slices: Sequence[Mapping[str, Any]], base: str | None, source: str):
    """Sources, slice parameters and layer ranges of a slices: config that is one tensor-wise merge."""
    order: list[str] | None = None
    per_slice_params: list[list[Mapping[str, Any] | None]] = []
    slice_params, ranges = [], []
    for i, sl in enumerate(slices):
        srcs = sl.get("sources") or []
        if not srcs:
            raise RecipeError(f"{source}: slices[{i}] has no sources")
        paths = [model_path(s.get("model")) for s in srcs]
        layer_ranges = {tuple(s.get("layer_range") or ()) for s in srcs}
        if len(layer_ranges) != 1:
            raise RecipeError(
                f"{source}: slices[{i}] takes different layers from its sources ({sorted(layer_ranges)}): a "
                "frankenmerge, which is no tensor-wise merge of same-shape models; automerge imports slices "
                "whose sources all cover the same layers"
            )
        (lo, hi), = layer_ranges
        expected = ranges[-1][1] if ranges else 0
        if lo != expected or hi <= lo:
            raise RecipeError(
                f"{source}: slices[{i}] covers layers {lo}-{hi} after layer {expected}: slices that skip, repeat "
                "or reorder layers build a deeper or shallower model (a frankenmerge); automerge imports slices "
                "that cover every layer once, in order"
            )
        if order is None:
            order = paths
        elif sorted(paths) != sorted(order):
            raise RecipeError(
                f"{source}: slices[{i}] merges other models ({', '.join(paths)}) than slices[0] "
                f"({', '.join(order)}); a tensor-wise merge takes the same models in every layer"
            )
        sl_base = sl.get("base_model")
        if sl_base is not None:
            sl_base = model_path(sl_base)
            if base is not None and sl_base != base:
                raise RecipeError(f"{source}: slices[{i}].base_model {sl_base} differs from base_model {base}; "
                                  "automerge merges with one base")
            base = sl_base
        by_path = {p: s.get("parameters") for p, s in zip(paths, srcs)}
        per_slice_params.append([by_path[p] for p in order])
        slice_params.append(sl.get("parameters"))
        ranges.append((lo, hi))
    assert order is not None
    sources = [_Source(path=p, params=tuple(ps[j] for ps in per_slice_params)) for j, p in enumerate(order)]
    return sources, slice_params, ranges, base


def _tensor_names(path: str, source: str) -> tuple[list[str], int]:
    from automerge.checkpoints import Checkpoint, resolve_model_path

    try:
        ckpt = Checkpoint.open(resolve_model_path(path))
    except AutomergeError as err:
        raise RecipeError(f"{source}: gradients, filters and slices are resolved per tensor, which needs the "
                          f"model's tensor names: {err}") from None
    return list(ckpt.names), ckpt.num_layers


def _place(name: str, ranges: Sequence[tuple[int, int]]) -> tuple[int, float]:
    """(slice index, gradient position t) of a tensor, as mergekit's planner gives them."""
    i = layer_index(name)
    if i is None:  # embeddings: the first slice; final norm and lm_head: the last; both at t = 0
        return (0 if tensor_role(name) == "embed" else len(ranges) - 1), 0.0
    for si, (lo, hi) in enumerate(ranges):
        if lo <= i < hi:
            n = hi - lo
            return si, ((i - lo) / (n - 1) if n > 1 else 1.0)
    raise RecipeError(f"tensor {name} is in layer {i}, outside every slice")


def _first(levels: Sequence[Mapping[str, Any] | None], key: str, tensor_name: str, t: float) -> Any:
    for level in levels:
        if level and key in level:
            value = evaluate_setting(level[key], tensor_name, t)
            if value is not None:
                return value
    return None


@dataclass(frozen=True)
class _Layout:
    num_groups: int
    split: bool
    norms: bool
    head_norm: bool = False  # the final norm apart from lm_head

    def key(self, name: str) -> str:
        i = layer_index(name)
        if i is None:
            role = tensor_role(name)  # embed or head
            return "head.norm" if self.head_norm and is_head_norm(name) else role
        block = f"block{i if self.num_groups > 1 else 0}"
        if not self.split:
            return block
        key = f"{block}.{tensor_role(name)}"
        return f"{key}.norm" if self.norms and is_block_norm(name) else key


def _layout(values: Sequence[Mapping[str, Any]], tensors: Sequence[str], num_layers: int, source: str) -> _Layout:
    """The coarsest grouping that holds every per-tensor value; refuse what no grouping holds."""
    finest = _Layout(num_groups=num_layers, split=True, norms=True, head_norm=True)
    for per_tensor in values:
        seen: dict[str, tuple[str, Any]] = {}
        for name in tensors:
            if name not in per_tensor:
                continue
            key = finest.key(name)
            other = seen.setdefault(key, (name, per_tensor[name]))
            if other[1] != per_tensor[name]:
                raise RecipeError(
                    f"{source}: a filter gives {other[0]} and {name} different values ({other[1]!r} vs "
                    f"{per_tensor[name]!r}), but both are in automerge's layer group {key!r}; automerge's "
                    "finest groups are a layer's attention weights, its MLP weights, each one's norms, the "
                    "embeddings, the final norm and the output projection"
                )
    for blocks in ((1, False, False), (1, True, False), (1, True, True),
                   (num_layers, False, False), (num_layers, True, False), (num_layers, True, True)):
        for head_norm in (False, True):
            layout = _Layout(*blocks, head_norm=head_norm)
            if all(_fits(per_tensor, tensors, layout) for per_tensor in values):
                return layout
    return finest


def _fits(per_tensor: Mapping[str, Any], tensors: Sequence[str], layout: _Layout) -> bool:
    seen: dict[str, Any] = {}
    for name in tensors:
        if name in per_tensor and seen.setdefault(layout.key(name), per_tensor[name]) != per_tensor[name]:
            return False
    return True


def _complete(per_tensor: Mapping[str, Any], tensors: Sequence[str], method: Any, key: str,
              where: str) -> dict[str, Any]:
    """Values for every tensor: those no level sets take the method's default, as in mergekit."""
    if len(per_tensor) == len(tensors):
        return dict(per_tensor)
    try:
        p = method.param(key)
    except KeyError:
        return dict(per_tensor)  # an unknown name: the recipe's check names it
    if p.required:
        missing = next(n for n in tensors if n not in per_tensor)
        raise RecipeError(f"{where}: no value for tensor {missing} (no filter matches it) and {method.name} "
                          f"requires {key!r} -- end the filter list with an entry without a filter")
    return {n: per_tensor.get(n, p.default) for n in tensors}


def _group_value(per_tensor: Mapping[str, Any], tensors: Sequence[str], layout: _Layout) -> Any:
    """A scalar, or {group: value, default: value} that the recipe's lookup resolves to
    per_tensor's value for every tensor."""
    by_key: dict[str, Any] = {}
    for name in tensors:
        if name in per_tensor:
            by_key.setdefault(layout.key(name), per_tensor[name])
    values = list(by_key.values())
    if all(v == values[0] for v in values):
        return values[0]
    default = Counter(values).most_common(1)[0][0]
    out = {k: v for k, v in by_key.items() if not k.endswith(".norm") and v != default}
    for k, v in by_key.items():
        # blockN.attn.norm falls back to blockN.attn when that is given, else to default
        if k.endswith(".norm") and v != out.get(k.removesuffix(".norm"), default):
            out[k] = v
    out["default"] = default
    return out


def _unique_names(paths: Sequence[str]) -> list[str]:
    names: list[str] = []
    for path in paths:
        stem = Path(path.rstrip("/")).name.replace("zoo:", "") or "model"
        stem = stem.split(":")[-1]
        name, i = stem, 2
        while name in names:
            name, i = f"{stem}-{i}", i + 1
        names.append(name)
    return names
