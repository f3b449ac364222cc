"""export: recipe / mergekit YAML / merged model directory, atomic; the model reproduces the
study's stored full-evaluation scores, and mergekit reproduces the model's weights."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from automerge.errors import AutomergeError
from automerge.recipe import Recipe
from automerge.report import export as export_mod
from automerge.report.export import export_trial
from automerge.report.pareto_table import pick
from automerge.report.study_reader import load_study
from report_study import DEMO_TASKS, evaluate_dir


@pytest.fixture(scope="module")
def demo(demo_study):
    return load_study(demo_study.name, results_dir=demo_study.results)


@pytest.fixture(scope="module")
def app():
    from automerge.cli import app

    return app  # the real command line, as installed


@pytest.fixture(scope="module")
def knee_export(demo_study, app, tmp_path_factory):
    """`automerge export night1 --pick knee --recipe … --mergekit … --model …` through the CLI."""
    out = tmp_path_factory.mktemp("export")
    res = CliRunner().invoke(app, [
        "export", demo_study.name, "--results-dir", str(demo_study.results), "--pick", "knee",
        "--recipe", str(out / "knee.yaml"), "--mergekit", str(out / "knee.mergekit.yml"),
        "--model", str(out / "knee-model"), "--device", "cpu",
    ])
    assert res.exit_code == 0, (res.output, res.exception)
    return out


def _tensors(model_dir) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_export_writes_recipe_mergekit_and_model(knee_export, demo):
    knee = pick(demo, "knee")
    recipe = Recipe.load(knee_export / "knee.yaml")
    assert recipe == Recipe.from_yaml(knee["recipe"])
    assert (knee_export / "knee.yaml").read_text().startswith("# automerge recipe exported from study 'night1'")
    config = yaml.safe_load((knee_export / "knee.mergekit.yml").read_text())
    assert config["merge_method"] and "zoo:" not in str(config)
    model = knee_export / "knee-model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "automerge_recipe.yaml",
                 "mergekit_config.yml"):
        assert (model / name).is_file(), name
    assert Recipe.load(model / "automerge_recipe.yaml") == recipe
    assert not [p for p in knee_export.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_model_card_records_recipe_scores_and_study(knee_export, demo):
    knee = pick(demo, "knee")
    card = (knee_export / "knee-model" / "README.md").read_text()
    front_matter = yaml.safe_load(card.split("---")[1])
    assert front_matter["automerge"]["study"] == "night1"
    assert front_matter["automerge"]["trial"] == int(knee["trial"])
    assert front_matter["automerge"]["scores_rung"] == "full"
    for obj in demo.objectives:
        assert front_matter["automerge"]["scores"][obj] == pytest.approx(knee[obj], abs=1e-6)
        assert f"{knee[obj]:.6g}" in card
    assert Recipe.from_yaml(knee["recipe"]).to_yaml().strip() in card
    assert "night1:full" in card and "Retention" in card


def test_export_reload_reevaluate_gives_stored_full_scores(knee_export, demo, proxy_data):
    knee = pick(demo, "knee")
    assert knee["rung"] == "full"
    limit = knee["attr:items"]
    limit = None if pd.isna(limit) else int(limit)
    scores = evaluate_dir(knee_export / "knee-model", proxy_data, list(DEMO_TASKS.values()), limit)
    for obj, task in DEMO_TASKS.items():
        assert scores[task] == pytest.approx(knee[f"score:{task}"], rel=1e-6, abs=1e-9)
        assert scores[task] == pytest.approx(knee[obj], rel=1e-6, abs=1e-9)


def _mergekit_run(config_path, out):
    mk_config = pytest.importorskip("mergekit.config")
    from mergekit.merge import MergeOptions, run_merge

    config = yaml.safe_load(config_path.read_text())
    run_merge(mk_config.MergeConfiguration.model_validate(config), str(out),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, lazy_unpickle=False))
    return _tensors(out)


def _assert_same_weights(ours: dict, theirs: dict) -> None:
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert set(ours) - set(theirs) <= {"lm_head.weight"}  # a tied head may be left out by mergekit
    for name, t in theirs.items():
        a, b = ours[name].float(), t.float()
        scale = b.abs().max().clamp_min(1e-12)
        assert float((a - b).abs().max() / scale) <= 1e-5, name


def _tied_at_threshold(recipe, name: str, grouping, base: dict, models: list[dict]) -> torch.Tensor | None:
    """Entries where automerge's documented TIES tie rule may differ from mergekit: some model's
    |task vector| equals its magnitude threshold (the k-th largest, k = max(1, int(density·n)))."""
    if recipe.method not in ("ties", "dare_ties", "breadcrumbs_ties", "della"):
        return None
    _, per_model = recipe.resolve(name, grouping)
    b = base[name].float()
    mask = torch.zeros_like(b, dtype=torch.bool)
    for weights, params in zip(models, per_model):
        d = (weights[name].float() - b).abs().flatten()
        k = max(1, int(float(params.get("density", 1.0)) * d.numel()))
        threshold = d.sort(descending=True).values[k - 1]
        mask |= (d == threshold).view_as(b)
    return mask


def test_mergekit_reproduces_the_exported_weights(knee_export, tmp_path):
    """Exact, except where the documented TIES tie rule applies (the test zoo is fp16, so a
    threshold can be tied): there the two tools may differ, and nowhere else."""
    ours = _tensors(knee_export / "knee-model")
    theirs = _mergekit_run(knee_export / "knee.mergekit.yml", tmp_path / "mk")
    recipe = Recipe.load(knee_export / "knee.yaml")
    grouping = recipe.grouping(sum(1 for n in ours if n.endswith("self_attn.q_proj.weight")))
    base = _tensors(Path(recipe.base))                      # each checkpoint read once
    models = [_tensors(Path(m.path)) for m in recipe.models]
    for name, t in theirs.items():
        tied = _tied_at_threshold(recipe, name, grouping, base, models)
        a, b = ours[name].float(), t.float()
        if tied is not None:
            a, b = a[~tied], b[~tied]
        _assert_same_weights({name: a}, {name: b})


def _per_group_ties(data):
    rows = data.rung("0")
    ties = rows[(rows["method"] == "ties") & (rows["kind"] == "search")]
    row = next((r for _, r in ties.iterrows() if "num_groups: 2" in r["recipe"]), None)
    assert row is not None, "the study has a 2-group TIES trial"
    return row


def _check_ties_export(data, tmp_path):
    paths = export_trial(data, _per_group_ties(data), mergekit=tmp_path / "t.yml", model=tmp_path / "model",
                         device="cpu")
    config = yaml.safe_load(paths["mergekit"].read_text())
    assert any(isinstance(m.get("parameters", {}).get("density"), list) for m in config["models"])
    _assert_same_weights(_tensors(paths["model"]), _mergekit_run(paths["mergekit"], tmp_path / "mk"))


def test_mergekit_reproduces_a_per_group_ties_trial(synthetic_study, tmp_path):
    """Per-layer-group densities become per-layer filters; mergekit computes the same tensors
    (fp32 tiny checkpoints)."""
    _check_ties_export(load_study(synthetic_study.name, results_dir=synthetic_study.results), tmp_path)


@pytest.mark.xfail(strict=True, reason=(
    "documented limit (automerge/methods/_sparsify.py): every |d| tied at a TIES magnitude threshold is "
    "kept, mergekit keeps exactly k in arbitrary argsort order; the zoo's fp16 checkpoints have such ties"))
def test_mergekit_reproduces_a_per_group_ties_trial_on_fp16_zoo(demo, tmp_path):
    _check_ties_export(demo, tmp_path)


def test_export_is_atomic(demo, tmp_path, monkeypatch):
    row = pick(demo, "best-code")
    target = tmp_path / "out" / "model"

    def broken(*args, **kwargs):
        raise RuntimeError("disk full while writing the card")

    monkeypatch.setattr(export_mod, "model_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_trial(demo, row, model=target, device="cpu")
    assert not (tmp_path / "out").exists()  # no half-written dir, no temp dir, not even the parent
    monkeypatch.undo()

    # an existing non-empty directory is refused before any work, and replaced with overwrite
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    with pytest.raises(AutomergeError, match="--overwrite"):
        export_trial(demo, row, model=target, device="cpu")
    assert (target / "keep.txt").read_text() == "mine"
    export_trial(demo, row, model=target, recipe=tmp_path / "r.yaml", device="cpu", overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]

    # an existing recipe file is not clobbered without overwrite
    with pytest.raises(AutomergeError, match="already exists"):
        export_trial(demo, row, recipe=tmp_path / "r.yaml")


def test_default_export_goes_to_the_study_dir(demo_study, app):
    res = CliRunner().invoke(app, ["export", demo_study.name, "--results-dir", str(demo_study.results),
                                   "--pick", "best-nl"])
    assert res.exit_code == 0, (res.output, res.exception)
    exports = demo_study.results / demo_study.name / "exports"
    files = sorted(p.name for p in exports.iterdir())
    assert len(files) == 2 and any(f.endswith(".mergekit.yml") for f in files)
    recipe = Recipe.load(next(exports.glob("*-t*.yaml")))
    assert recipe.method
    assert not math.isnan(float(load_study(demo_study.name, results_dir=demo_study.results).trials["nl"].sum()))
