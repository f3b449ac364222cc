"""`automerge merge RECIPE OUT_DIR`: one merge, written as a Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from automerge.errors import RecipeError


def merge_command(
    recipe_path: Path = typer.Argument(..., help="An automerge recipe or a mergekit YAML."),
    out_dir: Path = typer.Argument(..., help="Output model directory (must not exist or be empty)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: Optional[str] = typer.Option(None, help="Output dtype: float32, float16 or bfloat16 (default: the recipe's)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty OUT_DIR."),
    fisher: list[str] = typer.Option([], "--fisher", help="NAME=FILE: the Fisher estimate of model NAME (method "
                                     "fisher; overrides the recipe's `fisher:`); repeatable."),
    fisher_cache: Optional[Path] = typer.Option(None, "--fisher-cache", help="Where estimates from a recipe's "
                                                "`fisher: {data: ...}` are cached (default ~/.cache/automerge/fisher)."),
) -> None:
    """Merge the recipe's models and save the result (loads with AutoModelForCausalLM.from_pretrained)."""
    from automerge.engine import DTYPES, pick_device
    from automerge.recipe import Recipe
    from automerge.stream import merge_to_dir

    recipe = Recipe.load(recipe_path)
    out_dtype = dtype or recipe.dtype
    if out_dtype not in DTYPES:
        raise RecipeError(f"--dtype {out_dtype!r} not supported; use one of {', '.join(DTYPES)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise RecipeError(f"output directory {out_dir} is not empty; choose another or pass --overwrite")
    recipe.validate_for(None)  # cheap checks before any model is read
    fisher_files = None
    if recipe.method == "fisher":  # estimates before the merge: estimating loads each model once more
        from automerge.fisher import resolve_fisher

        given = _fisher_options(fisher)
        fisher_files = resolve_fisher(recipe, given=given, cache_dir=fisher_cache, device=str(pick_device(device)),
                                      where=str(recipe_path))
        # The recipe saved with the model names the files --fisher gave, so that it reproduces the model.
        recipe = recipe.model_copy(update={"models": [
            m.model_copy(update={"fisher": str(given[m.name].resolve())}) if m.name in given else m
            for m in recipe.models]})
    # Streamed tensor by tensor (fisher: by ResidentMerger; automerge.stream.RESIDENT says why).
    merge_to_dir(recipe, out_dir, dtype=out_dtype, device=device, metadata={"automerge_recipe": recipe.to_yaml()},
                 fisher=fisher_files, overwrite=overwrite)
    typer.echo(f"merged {recipe.method} of {', '.join(m.name for m in recipe.models)} -> {out_dir}")


def _fisher_options(values: list[str]) -> dict[str, Path]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise RecipeError(f"--fisher {v!r}: write NAME=FILE.safetensors (NAME: a model name in the recipe)")
        out[name] = Path(path)
    return out


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_command)
