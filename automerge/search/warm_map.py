"""Map a warm-start recipe onto a search space's parameters, exactly, or say why it cannot be.

A warm start (an earlier recipe, or an imported mergekit YAML with gradients and filters) is
evaluated as the recipe it is. When the space can express that recipe -- its method is searched,
its values fit the space's ranges and layer groups -- the trial also carries the space's params,
so the sampler learns from it like from any trial. The rule: the recipe's value for every tensor
of the base checkpoint must be what the space's params give that tensor (checked tensor by
tensor after encoding). When the recipe's values vary between tensors that every layer grouping
the space offers keeps in one group (per-layer gradients onto a space of 4 groups, attention vs
MLP onto a space without split_attn_mlp, separate norm values), the space is coarser than the
recipe: that is an error naming the parameter, two such tensors and the fix, not a silent
approximation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automerge.errors import SpaceError


def warm_start_params(space: Any, recipe: Any, path: Path | str) -> dict[str, Any] | None:
    """The space's params that give exactly `recipe` (its models already the space's specialists),
    None when the method is not searched or a value lies outside the space's ranges; SpaceError
    when the recipe's layer structure is finer than every grouping the space offers."""
    from automerge.checkpoints import Checkpoint, resolve_model_path
    from automerge.layers import LayerGrouping
    from automerge.methods import get_method
    from automerge.search.space import Choice, Range

    method = get_method(recipe.method)
    if recipe.method not in space.method_names:
        return None
    base = Checkpoint.open(resolve_model_path(space.base))
    names, num_layers = list(base.names), base.num_layers
    own = recipe.grouping(num_layers)
    values = _per_tensor_values(recipe, method, names, own)  # (owner, param) -> {tensor: value}

    per_group = space.any_per_group(recipe.method)
    candidates = [(g, s) for g in space.layer_groups.group_choices for s in space.layer_groups.split_choices
                  if g <= num_layers] if per_group else [(1, False)]
    def grouped(owner: str | None, pname: str) -> bool:  # can the space vary this parameter by group?
        spec = space.param_spec(recipe.method, pname, owner)
        return per_group and isinstance(spec, (Range, Choice)) and spec.per_group

    conflict = None
    for num_groups, split in candidates:
        grouping = LayerGrouping(num_layers=num_layers, num_groups=num_groups, split_attn_mlp=split)
        keyed, conflict = _by_space_key(values, names, grouping, grouped)
        if conflict is None:
            break
    else:
        raise _coarser_than_recipe(space, recipe, path, conflict)

    params = _encode(space, recipe, method, keyed, grouped, num_groups, split, per_group)
    if params is None:
        return None
    # The rule: the encoded params give every tensor the recipe's value.
    rebuilt = space.recipe_from_params(params)
    again = _per_tensor_values(rebuilt, method, names, rebuilt.grouping(num_layers))
    return params if again == values else None


def _coarser_than_recipe(space: Any, recipe: Any, path: Path | str, conflict: tuple) -> SpaceError:
    """The error for a recipe whose values differ where every grouping of the space keeps one value."""
    from automerge.layers import is_block_norm, layer_index

    (owner, pname), a, b, va, vb = conflict
    who = f" of {owner}" if owner else ""
    if is_block_norm(a) != is_block_norm(b) and layer_index(a) == layer_index(b):
        fix = ("search spaces give a block's norms the value of its attention or MLP; give the norms that value "
               "in the recipe (e.g. a mergekit filter matching them), or run it alone with automerge merge")
    else:
        fix = (f"make {pname} per_group and add num_groups: {recipe.num_groups}"
               + (", split_attn_mlp: true" if recipe.split_attn_mlp else "")
               + " to layer_groups, or warm-start from a recipe with coarser values")
    return SpaceError(
        f"--warm-start {path}: {pname}{who} is {va:g} for {a} but {vb:g} for {b}; every layer grouping this "
        f"space offers (num_groups {space.layer_groups.group_choices}, split_attn_mlp "
        f"{space.layer_groups.split_choices}, per_group where given) keeps both in one value, so the space "
        f"cannot hold this recipe: {fix}"
    )


def _encode(space: Any, recipe: Any, method: Any, keyed: dict, grouped: Any, num_groups: int, split: bool,
            per_group: bool) -> dict[str, Any] | None:
    """The space's params for per-space-key values `keyed`; None where a value is outside the space."""
    from automerge.search.space import Choice, Range, group_names, spec_contains

    params: dict[str, Any] = {}
    if len(space.method_names) > 1:
        params["method"] = recipe.method
    if per_group:
        if len(space.layer_groups.group_choices) > 1:
            params["num_groups"] = num_groups
        if len(space.layer_groups.split_choices) > 1:
            params["split_attn_mlp"] = split
    keys = group_names(num_groups, split)
    for (owner, pname), by_key in keyed.items():
        p = method.param(pname)
        spec = space.param_spec(recipe.method, pname, owner)
        name = f"{recipe.method}.{pname}" + (f".{owner}" if owner else "")
        if grouped(owner, pname):
            for key in keys:
                if not spec_contains(spec, by_key[key]):
                    return None
                params[f"{name}[{key}]"] = by_key[key]
            continue
        distinct = set(by_key.values())
        if len(distinct) != 1:
            return None
        (want,) = distinct
        if isinstance(spec, (Range, Choice)) and spec_contains(spec, want):
            params[name] = want
        elif _fixed(spec, p.default) != want:
            return None
    return params


def _fixed(spec: Any, default: Any) -> Any:
    """The one value a non-searched spec stands for (None: the method's default)."""
    from automerge.search.space import Choice, Range

    if spec is None:
        return default
    if isinstance(spec, Range):
        return spec.low if spec.low == spec.high else object()
    if isinstance(spec, Choice):
        return spec.choices[0] if len(spec.choices) == 1 else object()
    return spec


def _per_tensor_values(recipe: Any, method: Any, names: list[str], grouping: Any) -> dict:
    """{(specialist or None, param): {tensor: value}} with the method's defaults filled in."""
    out: dict[tuple[str | None, str], dict[str, Any]] = {}
    for group in recipe.groups(grouping):
        params, per_model = method.check_params(*recipe.resolve_group(group))
        tensors = [n for n in names if recipe.tensor_group(n, grouping) == group]
        for pname, value in params.items():
            for n in tensors:
                out.setdefault((None, pname), {})[n] = value
        for m, row in zip(recipe.models, per_model):
            for pname, value in row.items():
                for n in tensors:
                    out.setdefault((m.name, pname), {})[n] = value
    return out


def _by_space_key(values: Mapping, names: list[str], grouping: Any, grouped: Any):
    """Each parameter's value per space key (blockN[.attn|.mlp], and default for embed and head;
    one key for a parameter the space does not vary by group), or the first two tensors that
    share a key but not a value."""
    keyed: dict[tuple[str | None, str], dict[str, Any]] = {}
    for (owner, pname), per_tensor in values.items():
        by_group = grouped(owner, pname)
        seen: dict[str, tuple[str, Any]] = {}
        for n in names:
            group = grouping.group_of(n)
            key = ("default" if group in ("embed", "head") else group) if by_group else "all"
            first = seen.setdefault(key, (n, per_tensor[n]))
            if first[1] != per_tensor[n]:
                return None, ((owner, pname), first[0], n, first[1], per_tensor[n])
        keyed[(owner, pname)] = {k: v for k, (_, v) in seen.items()}
    return keyed, None
