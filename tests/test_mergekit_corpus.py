"""The mergekit config corpus (tests/data/mergekit_configs/): each YAML, in a shape published merges
use with tiny local models substituted, merges with `automerge merge` to the tensors mergekit 0.1.5's
run_merge writes, or is refused with the reason its `# expect: refused: ...` line names.

Random methods (DARE, DELLA) are compared exactly too: mergekit's sparsifier is made to draw the mask
automerge draws for the same tensor and model (looked up by the task vector's bytes)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from automerge.errors import RecipeError
from automerge.methods import random_noise
from automerge.recipe import Recipe
from tiny_models import save_tiny_model

mergekit_config = pytest.importorskip("mergekit.config")
from mergekit.merge import MergeOptions, run_merge  # noqa: E402

CORPUS = Path(__file__).parent / "data" / "mergekit_configs"
FILES = sorted(CORPUS.glob("*.yaml"))
NUM_LAYERS = 6


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must say '# expect: equal' or '# expect: refused: ...'"
    return first.removeprefix("# expect: ")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding models/{base,code,math,chat}: tiny Llamas, the three fine-tuned from base."""
    root = tmp_path_factory.mktemp("corpus")
    base = save_tiny_model(root / "models" / "base", arch="llama", seed=0, num_layers=NUM_LAYERS, hidden=32)
    for seed, name in enumerate(("code", "math", "chat"), start=1):
        save_tiny_model(root / "models" / name, base=base, seed=seed, noise=0.05)
    return root


def read_model(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def mergekit_merge(config_path: Path, out: Path, recipe: Recipe, workdir: Path, monkeypatch) -> dict:
    """mergekit's run_merge on the file as written; random sparsification draws automerge's masks."""
    config = mergekit_config.MergeConfiguration.model_validate(yaml.safe_load(config_path.read_text()))
    if recipe.method in ("dare_ties", "dare_linear", "della", "della_linear"):
        _draw_automerge_masks(recipe, workdir, monkeypatch)
    run_merge(config, str(out), options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    return read_model(out)


def _draw_automerge_masks(recipe: Recipe, workdir: Path, monkeypatch) -> None:
    import mergekit.merge_methods.generalized_task_arithmetic as gta

    base = load_file(workdir / recipe.base / "model.safetensors")
    models = [load_file(workdir / m.path / "model.safetensors") for m in recipe.models]
    rows: dict[str, torch.Tensor] = {}
    for name, b in base.items():
        noise = random_noise((len(models), *b.shape), seed=recipe.seed, tensor_name=name)
        for i, m in enumerate(models):
            rows[_digest(m[name].float() - b.float())] = noise[i]
    current: dict[str, torch.Tensor] = {}
    real_sparsify = gta.sparsify

    def sparsify(tensor, *args, **kwargs):
        current["row"] = rows[_digest(tensor)]
        return real_sparsify(tensor, *args, **kwargs)

    def bernoulli(p, *args, **kwargs):
        return (current["row"].reshape(p.shape).to(p.device) < p).to(p.dtype)

    monkeypatch.setattr(gta, "sparsify", sparsify)
    monkeypatch.setattr(torch, "bernoulli", bernoulli)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def automerge_merge(config_path: Path, out: Path) -> dict:
    """`automerge merge X.yaml OUT`, in-process."""
    from automerge.merge_cli import merge_command

    merge_command(recipe_path=config_path, out_dir=out, device="cpu", dtype=None, overwrite=False)
    return read_model(out)


def tolerance(config: dict) -> float:
    """Relative error allowed per tensor: 1e-5 when mergekit computes in fp32 and writes fp32; one
    rounding step of the 16-bit type it computes or writes in otherwise (automerge computes in fp32)."""
    dtypes = {config.get("dtype") or "float32", config.get("out_dtype") or config.get("dtype") or "float32"}
    if "bfloat16" in dtypes:
        return 2.0**-7
    if "float16" in dtypes:
        return 2.0**-9
    return 1e-5


def max_rel_error(ours: dict, theirs: dict) -> float:
    worst = 0.0
    for name, expected in theirs.items():
        scale = expected.float().abs().max().clamp_min(1e-12)
        worst = max(worst, float((ours[name].float() - expected.float()).abs().max() / scale))
    return worst


def test_corpus_is_there():
    assert len(FILES) >= 12
    kinds = {expectation(f).split()[0].rstrip(":") for f in FILES}
    assert kinds == {"equal", "refused"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_file(path, workdir, tmp_path, monkeypatch):
    expect = expectation(path)
    monkeypatch.chdir(workdir)  # the configs name models/... relative to the working directory
    if expect.startswith("refused: "):  # else "equal", possibly with a note
        with pytest.raises(RecipeError, match=expect.removeprefix("refused: ")):
            automerge_merge(path, tmp_path / "ours")
        assert not (tmp_path / "ours").exists()  # refused before anything is written
        return
    recipe = Recipe.load(path)
    ours = automerge_merge(path, tmp_path / "ours")
    theirs = mergekit_merge(path, tmp_path / "theirs", recipe, workdir, monkeypatch)
    assert set(ours) == set(theirs), "mergekit wrote a different set of tensors"
    config = yaml.safe_load(path.read_text())
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
    err = max_rel_error(ours, theirs)
    print(f"{path.stem}: max relative error {err:.2e}")
    assert err <= tolerance(config)


@pytest.mark.parametrize("path", [p for p in FILES if expectation(p) == "equal"], ids=lambda p: p.stem)
def test_export_of_the_import_is_the_same_merge(path, workdir, tmp_path, monkeypatch):
    """Import then export back to mergekit: mergekit computes the same tensors from either file."""
    from automerge.engine import ResidentMerger

    monkeypatch.chdir(workdir)
    recipe = Recipe.load(path)
    merger = ResidentMerger(base=recipe.base or recipe.models[0].path,
                            specialists={m.name: m.path for m in recipe.models}, device="cpu")
    exported = yaml.safe_load(yaml.safe_dump(recipe.to_mergekit(merger.tensor_names, merger.grouping(recipe))))
    exported["out_dtype"] = "float32"
    original = yaml.safe_load(path.read_text())
    original["dtype"] = "float32"  # both in fp32: the export must be the same merge, not the same rounding
    original["out_dtype"] = "float32"
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(exported))
    b.write_text(yaml.safe_dump(original))
    from_export = mergekit_merge(a, tmp_path / "a", recipe, workdir, monkeypatch)
    from_original = mergekit_merge(b, tmp_path / "b", recipe, workdir, monkeypatch)
    assert max_rel_error(from_export, from_original) <= 1e-5


def test_mergekit_yaml_command_equals_automerge_merge_command(workdir, tmp_path):
    """The real commands, as a user runs them, on the README's slerp (gradients, filters, slices)."""
    path = CORPUS / "slerp_readme.yaml"
    mergekit_yaml = Path(sys.executable).parent / "mergekit-yaml"
    if not mergekit_yaml.exists():
        pytest.skip("mergekit-yaml is not installed next to this Python")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    shutil.copy(path, workdir / "slerp_readme.yaml")
    subprocess.run([str(mergekit_yaml), "slerp_readme.yaml", str(tmp_path / "theirs"), "--no-copy-tokenizer",
                    "--no-write-model-card"],
                   cwd=workdir, env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "automerge.cli", "merge", "slerp_readme.yaml", str(tmp_path / "ours"),
                    "--device", "cpu"], cwd=workdir, env=env, check=True, capture_output=True, timeout=300)
    ours, theirs = read_model(tmp_path / "ours"), read_model(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    assert max_rel_error(ours, theirs) <= tolerance(yaml.safe_load(path.read_text()))
