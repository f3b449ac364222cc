"""`automerge heal`: a short fine-tune lowers the loss on its data and is written atomically."""

from __future__ import annotations

import json

import pytest
import torch

from automerge.errors import AutomergeError
from automerge.heal import HealError, heal
from automerge.jsonl import read_texts
from tiny_models import _TEXT, read_tensors, save_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("heal")
    model = save_tiny_model(root / "model", arch="llama", seed=0, dtype=torch.float16)
    data = root / "data.jsonl"
    paras = [p for p in _TEXT.split("\n\n") if p.strip()]
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in paras * 3))
    return root, model, data


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_healing_lowers_the_loss_on_its_data(setup, tmp_path, lora_rank):
    from transformers import AutoModelForCausalLM

    root, model, data = setup
    res = heal(model, read_texts(data), out=tmp_path / "healed", steps=12, lr=3e-3 if not lora_rank else 1e-2,
               lora_rank=lora_rank, batch_size=4, seq_len=32, device="cpu")
    assert res.loss_after < res.loss_before - 0.05, res
    saved = read_tensors(tmp_path / "healed")
    before = read_tensors(model)
    assert saved.keys() == before.keys() and all(t.dtype == torch.float16 for t in saved.values())
    assert any(not torch.equal(saved[k], before[k]) for k in saved)
    if lora_rank:  # a merged LoRA on the linear layers only: norms and embeddings unchanged
        assert torch.equal(saved["model.norm.weight"], before["model.norm.weight"])
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "healed"))
    assert not list(tmp_path.glob(".healed.tmp-*"))


def test_bad_input_fails_before_any_training(setup, tmp_path):
    root, model, data = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(AutomergeError, match=r"bad.jsonl:2: expected an object with a \"text\""):
        read_texts(bad)
    with pytest.raises(AutomergeError, match="does not exist"):
        read_texts(tmp_path / "missing.jsonl")
    with pytest.raises(HealError, match="too few for two windows"):
        heal(model, ["tiny"], out=tmp_path / "o", steps=1, seq_len=32, device="cpu")
    with pytest.raises(HealError, match="--lr"):
        heal(model, read_texts(data), out=tmp_path / "o", steps=1, lr=-1.0, device="cpu")
    assert not (tmp_path / "o").exists()


def test_cli(setup, tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app

    root, model, data = setup
    res = CliRunner().invoke(app, ["heal", str(model), "--data", str(data), "--steps", "3", "--seq-len", "32",
                                   "--batch-size", "2", "--out", str(tmp_path / "h"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "loss on its data" in res.output and (tmp_path / "h" / "model.safetensors").is_file()
    res = CliRunner().invoke(app, ["heal", str(model), "--data", str(data), "--steps", "3",
                                   "--out", str(tmp_path / "h")])
    assert res.exit_code != 0 and "not empty" in str(res.exception)


def test_zoo_mix_is_mixed_and_never_held_out():
    from automerge.heal_cli import zoo_mix_texts
    from automerge.zoo import corpus as C

    texts = zoo_mix_texts(max_chars=40_000)
    assert any("def " in t for t in texts) and len(texts) >= 4
    from automerge.zoo import DATA_DIR

    heldout = {r["text"] for d in ("code", "prose", "docstrings")
               for r in C.read_jsonl(DATA_DIR / "heldout" / f"{d}.jsonl")}
    assert not heldout & set(texts)
