"""The zoo's LoRA specialists (automerge/zoo/lora.py), built by `zoo build` on the test-size zoo."""

from __future__ import annotations

import json

import torch

from automerge.checkpoints import Checkpoint
from automerge.engine import ResidentMerger
from automerge.recipe import Recipe
from automerge.specialists import LoraCheckpoint, open_specialist
from automerge.zoo.lora import LORA_NAMES, TARGETS


def _loss(model, tok, file, seq: int = 64) -> float:
    ids: list[int] = []
    for line in file.read_text().splitlines():
        ids += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
    n = min(64, len(ids) // seq)
    x = torch.tensor(ids[: n * seq]).view(n, seq)
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


def test_lora_adapters_are_built_and_learn_their_domain(test_zoo):
    models, heldout = test_zoo / "models", test_zoo / "data" / "heldout"
    base = Checkpoint.open(models / "base")
    info = json.loads((test_zoo / "zoo.json").read_text())["lora"]
    assert set(info["adapters"]) == set(LORA_NAMES)
    for name in LORA_NAMES:
        cfg = json.loads((models / name / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] is None and cfg["target_modules"] == sorted(TARGETS)
        ckpt = open_specialist(models / name, base=base)
        assert isinstance(ckpt, LoraCheckpoint)
        # every linear layer of every block, nothing else
        assert sorted(ckpt.targets) == sorted(n for n in base.names if any(f".{t}." in n for t in TARGETS))
        assert all(float(ckpt.delta(n).abs().max()) > 0 for n in ckpt.targets)

    merger = ResidentMerger(base=models / "base", specialists={"code": models / "code-lora",
                                                               "lang": models / "lang-lora"}, device="cpu")

    def losses(w_code: float, w_lang: float) -> dict[str, float]:
        merger.apply(Recipe(method="task_arithmetic", base=str(models / "base"), models=[
            {"name": "code", "path": str(models / "code-lora"), "parameters": {"weight": w_code}},
            {"name": "lang", "path": str(models / "lang-lora"), "parameters": {"weight": w_lang}}]))
        return {d: _loss(merger.model, merger.tokenizer, heldout / f"{d}.jsonl") for d in ("code", "prose")}

    base_l, code_l, lang_l = losses(0, 0), losses(1, 0), losses(0, 1)
    assert code_l["code"] < base_l["code"] and lang_l["prose"] < base_l["prose"], (base_l, code_l, lang_l)


def test_demo_lora_space_runs_on_the_test_zoo(test_zoo):
    from pathlib import Path

    import yaml

    from automerge.search.space import SearchSpace

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "search_spaces" / "demo-lora.yaml").read_text())
    text = yaml.safe_dump(data).replace("zoo:", str(test_zoo / "models") + "/")
    space = SearchSpace.from_yaml(text, source="demo-lora.yaml")
    assert [s.path.rsplit("/", 1)[1] for s in space.specialists] == ["code-lora", "lang-lora"]
    assert space.check_models()["num_layers"] == 2
    merger = ResidentMerger(base=space.base, specialists={s.name: s.path for s in space.specialists}, device="cpu")
    for baseline in space.baseline_trials():
        merger.apply(baseline.recipe)
