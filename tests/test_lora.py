"""LoRA specialists: PEFT adapter dirs read against the base; task vector = scale·B·A.

Adapters are trained here in seconds with peft on a tiny Llama. Anchor: PEFT's own
add_weighted_adapter. Its `cat` (and `svd` at full rank) combinations compute exactly
sum_i w_i·scale_i·B_i·A_i, so automerge's task arithmetic of the same adapters must equal them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from automerge.checkpoints import Checkpoint
from automerge.engine import ResidentMerger
from automerge.errors import CheckpointError, RecipeError
from automerge.recipe import Recipe
from automerge.specialists import LoraCheckpoint, open_specialist
from tiny_models import read_tensors, save_tiny_model

peft = pytest.importorskip("peft")

ADAPTERS = {  # name -> LoraConfig arguments (different targets, ranks, rsLoRA, an embedding LoRA)
    "a": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"]),
    "b": dict(r=2, lora_alpha=4, target_modules=["up_proj", "down_proj", "v_proj"], use_rslora=True),
}


def train_lora(base: Path, out: Path, *, seed: int, steps: int = 4, **lora) -> Path:
    """A few Adam steps of a peft LoRA on random tokens: a real adapter, trained in well under a second."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **lora))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    ids = torch.randint(4, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = save_tiny_model(root / "base", arch="llama", seed=0)
    full = save_tiny_model(root / "full", base=base, seed=3, noise=0.05)
    adapters = {n: train_lora(base, root / n, seed=i + 1, **cfg) for i, (n, cfg) in enumerate(ADAPTERS.items())}
    return root, base, full, adapters


def _peft_model(base: Path, adapters: dict[str, Path]):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    names = list(adapters)
    pm = peft.PeftModel.from_pretrained(model, str(adapters[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(str(adapters[n]), adapter_name=n)
    return pm


def _merge(base: Path, paths: dict[str, Path], weights: dict[str, float], method="task_arithmetic", **params):
    merger = ResidentMerger(base=base, specialists=paths, device="cpu")
    merger.apply(Recipe(method=method, base=str(base), parameters=params,
                        models=[{"name": n, "path": str(p), "parameters": {"weight": weights[n]}}
                                for n, p in paths.items()]))
    return merger, dict(merger.state_dict_iter())


def test_task_vector_is_scale_b_a_and_zero_elsewhere(lora):
    _, base, _, adapters = lora
    b = Checkpoint.open(base)
    pm = _peft_model(base, {"a": adapters["a"]})
    ckpt = open_specialist(adapters["a"], base=b)
    assert isinstance(ckpt, LoraCheckpoint) and ckpt.names == b.names
    expected = {}  # PEFT's own delta per module
    for mod_name, module in pm.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and "a" in getattr(module, "scaling", {}):
            expected[mod_name + ".weight"] = module.get_delta_weight("a")
    assert "model.embed_tokens.weight" in expected and len(expected) == 1 + 2 * b.num_layers
    assert sorted(ckpt.targets) == sorted(expected)
    for name in b.names:
        d = ckpt.delta(name)
        if name in expected:
            torch.testing.assert_close(d, expected[name].float(), rtol=1e-5, atol=1e-7)
            assert d.abs().max() > 0
        else:
            assert torch.count_nonzero(d) == 0


@pytest.mark.parametrize("combination", ["cat", "svd"])
def test_linear_of_full_task_vectors_equals_peft_add_weighted_adapter(lora, combination):
    _, base, _, adapters = lora
    weights = {"a": 0.7, "b": -0.4}
    pm = _peft_model(base, adapters)
    kwargs = {"svd_rank": 6} if combination == "svd" else {}  # rank 4 + 2: the SVD loses nothing
    pm.add_weighted_adapter(list(weights), list(weights.values()), "merged", combination_type=combination, **kwargs)
    pm.set_adapter("merged")
    theirs = {k: v for k, v in pm.merge_and_unload().state_dict().items()}
    _, ours = _merge(base, adapters, weights)
    tol = 1e-6 if combination == "cat" else 1e-4
    for name, t in ours.items():
        torch.testing.assert_close(t, theirs[name], rtol=0, atol=tol * max(1.0, float(theirs[name].abs().max())))


def test_mixed_full_and_lora_and_merged_model_loads(lora, tmp_path):
    _, base, full, adapters = lora
    weights = {"full": 0.5, "a": 1.0, "b": 0.3}
    merger, ours = _merge(base, {"full": full, **adapters}, weights, method="ties", normalize=False)
    b, f = read_tensors(base), read_tensors(full)
    lb = open_specialist(adapters["b"], base=Checkpoint.open(base))
    # a tensor neither adapter touches: ties of the full fine-tune alone
    untouched = "model.layers.0.self_attn.k_proj.weight"
    assert untouched not in lb.targets
    out = merger.save(tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).state_dict()
    torch.testing.assert_close(loaded[untouched], ours[untouched])
    d = f[untouched].float() - b[untouched].float()
    # ties at density 1: the adapters' zero task vectors there elect nothing and count for nothing
    torch.testing.assert_close(ours[untouched], b[untouched].float() + 0.5 * d, rtol=0, atol=1e-6)


def test_mergekit_export_uses_model_plus_lora(lora, tmp_path):
    _, base, full, adapters = lora
    recipe = Recipe(method="task_arithmetic", base=str(base), models=[
        {"name": "full", "path": str(full), "parameters": {"weight": 0.5}},
        {"name": "a", "path": str(adapters["a"]), "parameters": {"weight": 0.8}}])
    merger = ResidentMerger(base=base, specialists={"full": full, "a": adapters["a"]}, device="cpu")
    config = recipe.to_mergekit(merger.tensor_names, merger.grouping(recipe))
    assert [m["model"] for m in config["models"]] == [str(full), f"{base}+{adapters['a']}"]
    again = Recipe.from_mergekit(config)
    assert [m.path for m in again.models] == [str(full), str(adapters["a"])]

    torch.save(read_tensors(full), tmp_path / "full.pt")
    sd = recipe.model_copy(update={"models": [recipe.models[0].model_copy(update={"path": str(tmp_path / "full.pt")}),
                                              recipe.models[1]]})
    with pytest.raises(RecipeError, match="state dict.*mergekit cannot read"):
        sd.to_mergekit(merger.tensor_names, merger.grouping(recipe))


def test_bad_adapters_are_named(lora, tmp_path):
    import json
    import shutil

    _, base, _, adapters = lora
    b = Checkpoint.open(base)
    dora = tmp_path / "dora"
    shutil.copytree(adapters["a"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        open_specialist(dora, base=b)
    other = save_tiny_model(tmp_path / "other", arch="llama", seed=0, hidden=48)
    with pytest.raises(CheckpointError, match="another base model"):
        open_specialist(adapters["a"], base=Checkpoint.open(other))


def test_mergekit_merges_the_exported_lora_recipe_to_the_same_weights(lora, tmp_path):
    mergekit_config = pytest.importorskip("mergekit.config")
    import yaml
    from mergekit.merge import MergeOptions, run_merge
    from safetensors.torch import load_file

    _, base, full, adapters = lora
    paths = {"full": full, "b": adapters["b"]}  # no embedding LoRA: mergekit's merge of those resizes nothing
    weights = {"full": 0.5, "b": -0.6}
    merger, ours = _merge(base, paths, weights)
    recipe = Recipe(method="task_arithmetic", base=str(base), models=[
        {"name": n, "path": str(p), "parameters": {"weight": weights[n]}} for n, p in paths.items()])
    config = yaml.safe_load(yaml.safe_dump(recipe.to_mergekit(merger.tensor_names, merger.grouping(recipe))))
    run_merge(mergekit_config.MergeConfiguration.model_validate(config), str(tmp_path / "out"),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                   lora_merge_cache=str(tmp_path / "cache")))
    theirs = {}
    for shard in sorted((tmp_path / "out").glob("*.safetensors")):
        theirs.update(load_file(shard))
    assert set(theirs) == set(ours)
    for name, t in ours.items():
        torch.testing.assert_close(theirs[name].float(), t, rtol=0, atol=1e-5 * max(1.0, float(t.abs().max())))


def test_cli_merge_and_space_take_adapters_and_state_dicts(lora, tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app
    from automerge.search.space import SearchSpace

    _, base, full, adapters = lora
    torch.save(read_tensors(full), tmp_path / "full.pt")
    specialists = {"full": tmp_path / "full.pt", "a": adapters["a"], "b": adapters["b"]}
    recipe = Recipe(method="dare_ties", base=str(base), models=[
        {"name": n, "path": str(p), "parameters": {"weight": 0.5, "density": 0.7}} for n, p in specialists.items()])
    recipe.save(tmp_path / "r.yaml")
    res = CliRunner().invoke(app, ["merge", str(tmp_path / "r.yaml"), str(tmp_path / "out"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    merger = ResidentMerger(base=base, specialists=specialists, device="cpu")
    merger.apply(recipe)
    ours = dict(merger.state_dict_iter())
    saved = read_tensors(tmp_path / "out")
    assert ours.keys() == saved.keys()
    for name, t in ours.items():
        torch.testing.assert_close(saved[name].float(), t, rtol=0, atol=0)

    space = SearchSpace.from_dict({
        "base": str(base), "specialists": [{"name": n, "path": str(p)} for n, p in specialists.items()],
        "objectives": [{"name": "code", "tasks": {"code_body_ll": 1.0}}], "device": "cpu"}, source="s.yaml")
    assert space.check_models() == {"num_layers": Checkpoint.open(base).num_layers}


@pytest.mark.parametrize("method", ["ties", "dare_linear"])
def test_streamed_merge_of_full_lora_and_state_dict_equals_resident_save(method, lora, tmp_path):
    """automerge merge streams LoRA adapters and state-dict specialists too: the same bytes."""
    from safetensors.torch import load_file

    from automerge.stream import merge_to_dir

    _, base, full, adapters = lora
    sd = tmp_path / "full.pt"
    torch.save(load_file(str(full / "model.safetensors")), sd)
    paths = {"full": full, "sd": sd, "a": adapters["a"]}
    recipe = Recipe(method=method, base=str(base), seed=3, dtype="bfloat16",
                    models=[{"name": n, "path": str(p), "parameters": {"weight": w, "density": 0.6}}
                            for (n, p), w in zip(paths.items(), (0.5, 0.3, 1.0))])
    merger = ResidentMerger(base=base, specialists=paths, device="cpu")
    merger.apply(recipe)
    ref = merger.save(tmp_path / "ref", dtype="bfloat16")
    ours = merge_to_dir(recipe, tmp_path / "ours", device="cpu")
    a, b = load_file(str(ours / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in b:
        assert torch.equal(a[name].view(torch.int16), b[name].view(torch.int16)), name
