"""Export one trial of a study: its recipe, a mergekit YAML, a merged Hugging Face model.

    data = load_study("night1")
    row = pick(data, "knee")                   # or data.trial(412, rung="full")
    export_trial(data, row, recipe="knee.yaml", mergekit="knee.mergekit.yml", model="out/knee")

* The recipe is the trial's stored ``recipe`` user_attr, unchanged (model paths as the study
  wrote them, e.g. ``zoo:code``), behind a comment naming the study, trial and scores.
* The mergekit YAML is `Recipe.to_mergekit` with every model path resolved to a directory
  (mergekit does not know ``zoo:``): per-layer-group values become per-layer filters, so
  ``mergekit-yaml`` computes the same tensors (random methods — DARE, DELLA — draw their own
  masks in mergekit: the same distribution, not the same mask).
* The model directory is the merge (`automerge.stream.merge_to_dir`, as `automerge merge`), saved
  in the recipe's dtype, with the base's config and tokenizer, ``automerge_recipe.yaml``, ``mergekit_config.yml`` (when the
  method has a mergekit equivalent) and a model card ``README.md`` holding the recipe, the
  trial's scores at every rung it reached and the study it came from. The safetensors
  metadata carries the recipe and the study too.

Every file is written atomically: files via a temporary sibling and a rename, the model as a
complete directory built beside the target and renamed into place (`files.staged_dir`, once, the
model card included). A failure leaves nothing.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path

import pandas as pd
import yaml

from automerge.errors import AutomergeError, RecipeError
from automerge.recipe import Recipe
from automerge.files import write_text as write_text_atomic
from automerge.report.pareto_table import display_label, retention, specialists
from automerge.report.study_reader import StudyData
from automerge.study_format import redact


def trial_recipe(data: StudyData, row: pd.Series) -> Recipe:
    text = row.get("recipe")
    if not isinstance(text, str) or not text.strip():
        raise AutomergeError(
            f"trial {int(row['trial'])} of {data.name!r} rung {row['rung']} ({row['kind']} "
            f"{display_label(row)!r}) stores no recipe: reference models are not merges; export a search "
            "trial or a baseline"
        )
    return Recipe.from_yaml(text, source=f"{data.name} rung {row['rung']} trial {int(row['trial'])} recipe")


def resolved_recipe(recipe: Recipe) -> Recipe:
    """The same recipe with every model path an absolute directory (``zoo:NAME`` resolved)."""
    from automerge.checkpoints import resolve_model_path

    def res(p: str | None) -> str | None:
        return None if p is None else str(resolve_model_path(p).resolve())

    models = [m.model_copy(update={"path": res(m.path)}) for m in recipe.models]
    return recipe.model_copy(update={"base": res(recipe.base), "models": models})


def mergekit_config(recipe: Recipe) -> dict:
    """mergekit configuration computing the recipe's tensors (paths resolved)."""
    from automerge.checkpoints import Checkpoint

    full = resolved_recipe(recipe)
    ckpt = Checkpoint.open(full.base or full.models[0].path)
    return full.to_mergekit(ckpt.names, full.grouping(ckpt.num_layers))


def study_fisher_files(data: StudyData, recipe: Recipe) -> Recipe:
    """A Fisher trial's recipe naming estimate files this machine can read: a file its worker wrote
    elsewhere is looked for under results/<study>/fisher/ (same name, same bytes)."""
    if recipe.method != "fisher":
        return recipe
    from automerge.fisher import reachable_fisher

    here = {m.name: data.study_dir / "fisher" / Path(m.fisher).name for m in recipe.models
            if isinstance(m.fisher, str) and (data.study_dir / "fisher" / Path(m.fisher).name).is_file()}
    return reachable_fisher(recipe, here)


def _scores_of(data: StudyData, row: pd.Series) -> dict[str, float]:
    out = {o: float(row[o]) for o in data.objectives}
    for c in data.score_columns():
        v = row.get(c)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[c] = float(v)
    return out


def describe(data: StudyData, row: pd.Series) -> str:
    scores = ", ".join(f"{o}={float(row[o]):.4g}" for o in data.objectives)
    return (f"study {data.name!r}, rung {row['rung']}, trial {int(row['trial'])} ({row['kind']}"
            f"{', ' + display_label(row) if row.get('label') else ''}): {scores}")


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in text.splitlines())


def recipe_text(data: StudyData, row: pd.Series, recipe: Recipe) -> str:
    return _comment(f"automerge recipe exported from {describe(data, row)}\n"
                    f"merge it: automerge merge THIS_FILE OUT_DIR") + recipe.to_yaml()


def mergekit_text(data: StudyData, row: pd.Series, recipe: Recipe, config: dict | None = None) -> str:
    from automerge.methods import get_method

    config = config if config is not None else mergekit_config(recipe)
    note = (f"mergekit configuration exported by automerge from {describe(data, row)}\n"
            "run it: mergekit-yaml THIS_FILE OUT_DIR")
    if get_method(recipe.method).random:
        note += ("\nnote: the random masks of this method are drawn by mergekit's own RNG; the weights match "
                 "automerge's in distribution, not bit for bit")
    return _comment(note) + yaml.safe_dump(config, sort_keys=False)


# -- model card ----------------------------------------------------------------------------------


def model_card(data: StudyData, row: pd.Series, recipe: Recipe, mergekit: str | None) -> str:
    from automerge import __version__ as version

    lineage = data.lineage(row)
    score_cols = data.score_columns()
    header = ["rung", "trial", *data.objectives, *score_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in lineage:
        cells = [str(r["rung"]), str(int(r["trial"]))]
        for c in [*data.objectives, *score_cols]:
            v = r.get(c)
            cells.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.6g}")
        lines.append("| " + " | ".join(cells) + " |")
    top = lineage[-1]
    ret = []
    if data.completed()["rung"].eq(top["rung"]).any() and top["state"] == "COMPLETE":
        for s in specialists(data, top["rung"]):
            ret.append(f"- vs **{s.name}** ({s.label}, {s.objective} = {s.value:.4g}): "
                       f"{100 * retention(data, top, s):.1f}% on {s.objective}")
    front_matter = {
        "library_name": "transformers",
        "tags": ["merge", "automerge", recipe.method],
        "automerge": {
            "study": data.name,
            "rung": str(row["rung"]),
            "trial": int(row["trial"]),
            "kind": str(row["kind"]),
            "scores": {k: round(v, 6) for k, v in _scores_of(data, top).items()},
            "scores_rung": str(top["rung"]),
        },
    }
    base = recipe.base
    if base and not base.startswith("zoo:") and not os.path.isabs(base) and not base.startswith("."):
        front_matter["base_model"] = base  # a Hub id
    title = f"{data.name} · rung {row['rung']} · trial {int(row['trial'])}"
    models = ", ".join(f"`{m.name}` ({m.path})" for m in recipe.models)
    parts = [
        "---", yaml.safe_dump(front_matter, sort_keys=False).rstrip(), "---", "",
        f"# {title}", "",
        f"A `{recipe.method}` merge of {models} on base `{recipe.base}`, found by "
        f"automerge study `{data.name}`"
        + (f" ({row['kind']} `{display_label(row)}`)" if row.get("label") else "") + ".",
        "",
        "## Scores",
        "",
        f"Objectives {', '.join(f'{o} ({d})' for o, d in zip(data.objectives, data.directions))}; one row per "
        "rung this recipe was evaluated at (the last is the most thorough evaluation).",
        "",
        *lines,
        "",
    ]
    if ret:
        parts += ["Retention (score on the specialist's own domain ÷ the specialist's score, same rung):", "",
                  *ret, ""]
    parts += [
        "## Recipe", "",
        "```yaml", recipe.to_yaml().rstrip(), "```", "",
        "Reproduce: `automerge merge automerge_recipe.yaml OUT_DIR`"
        + (" or `mergekit-yaml mergekit_config.yml OUT_DIR`." if mergekit else "."),
        "",
        "## Study", "",
        f"- study: `{data.name}` (storage `{redact(data.storage_url)}`)",
        f"- rung studies: {', '.join(f'`{r.study_name}`' for r in data.rungs)}",
        f"- exported trial: rung {row['rung']}, trial {int(row['trial'])}"
        + (f", parent trial {int(row['parent'])} in the rung below" if not pd.isna(row["parent"]) else ""),
        f"- exported {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC by automerge {version}",
        "",
    ]
    return "\n".join(parts)


# -- writing -------------------------------------------------------------------------------------


def _check_target(path: Path, overwrite: bool, what: str) -> None:
    if path.exists() and not overwrite:
        if path.is_dir() and not any(path.iterdir()):
            return
        raise AutomergeError(f"{what} {path} already exists; choose another path or pass --overwrite")


def export_trial(
    data: StudyData,
    row: pd.Series,
    *,
    recipe: str | Path | None = None,
    mergekit: str | Path | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write what was asked for; returns {"recipe"|"mergekit"|"model": path}."""
    rec = trial_recipe(data, row)
    if row["state"] != "COMPLETE":
        raise AutomergeError(f"trial {int(row['trial'])} of rung {row['rung']} is {row['state']}, not COMPLETE; "
                             "export a finished trial")
    targets = {k: Path(v) for k, v in (("recipe", recipe), ("mergekit", mergekit), ("model", model)) if v}
    if not targets:
        raise AutomergeError("nothing to export: give --recipe FILE, --mergekit FILE and/or --model OUT_DIR")
    from automerge.methods import get_method

    if "mergekit" in targets and get_method(rec.method).mergekit_name is None:
        raise AutomergeError(f"mergekit has no {rec.method!r} merge method, so trial {int(row['trial'])} cannot be a "
                             "mergekit YAML (nothing written); export it with --recipe FILE (reproduce it with "
                             "`automerge merge FILE OUT_DIR`) or --model OUT_DIR")
    rec = study_fisher_files(data, rec)
    for kind, path in targets.items():
        _check_target(path, overwrite, {"model": "output directory"}.get(kind, "file"))
    out: dict[str, Path] = {}
    mk_text = None
    if "mergekit" in targets or "model" in targets:
        try:
            mk_text = mergekit_text(data, row, rec)
        except RecipeError:
            if "mergekit" in targets:
                raise
    if "recipe" in targets:
        out["recipe"] = write_text_atomic(targets["recipe"], recipe_text(data, row, rec))
    if "mergekit" in targets:
        out["mergekit"] = write_text_atomic(targets["mergekit"], mk_text)
    if "model" in targets:
        out["model"] = save_merged(data, row, rec, targets["model"], device=device, dtype=dtype,
                                   mergekit=mk_text, overwrite=overwrite)
    return out


def save_merged(data: StudyData, row: pd.Series, recipe: Recipe, out_dir: Path, *, device: str = "auto",
                dtype: str | None = None, mergekit: str | None = None, overwrite: bool = False) -> Path:
    """Merge and write the model directory with its model card, all or nothing."""
    from automerge.engine import DTYPES
    from automerge.stream import merge_to_dir

    out_dtype = dtype or recipe.dtype
    if out_dtype not in DTYPES:
        raise AutomergeError(f"--dtype {out_dtype!r} not supported; use one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite, "output directory")
    metadata = {"automerge_recipe": recipe.to_yaml(), "automerge_study": data.name,
                "automerge_rung": str(row["rung"]), "automerge_trial": str(int(row["trial"]))}
    files = {"automerge_recipe.yaml": recipe_text(data, row, recipe)}
    if mergekit:
        files["mergekit_config.yml"] = mergekit
    files["README.md"] = model_card(data, row, recipe, mergekit)
    return merge_to_dir(recipe, out_dir, dtype=out_dtype, device=device, metadata=metadata, files=files,
                        overwrite=overwrite)


def default_paths(data: StudyData, row: pd.Series, exports_dir: Path | None = None) -> dict[str, Path]:
    """results/<study>/exports/<study>-<rung>-t<trial>.{yaml,mergekit.yml}"""
    base = exports_dir or data.study_dir / "exports"
    stem = f"{data.name}-{row['rung']}-t{int(row['trial'])}"
    return {"recipe": base / f"{stem}.yaml", "mergekit": base / f"{stem}.mergekit.yml"}


def exported_summary(paths: dict[str, Path]) -> list[str]:
    return [f"{kind}: {path}" for kind, path in paths.items()]


__all__ = ["export_trial", "save_merged", "mergekit_config", "resolved_recipe", "model_card", "trial_recipe",
           "default_paths"]

