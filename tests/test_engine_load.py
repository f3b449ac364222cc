"""ResidentMerger's load: every checkpoint tensor read once, into the live model or the task vectors,
giving the model from_pretrained gives and the task vectors task_vector gives."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from automerge.checkpoints import Checkpoint
from automerge.engine import ResidentMerger
from automerge.resident import empty_model
from automerge.specialists import task_vector
from tiny_models import ARCHS, save_tiny_model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch,tie", [(a, False) for a in ARCHS] + [("llama", True), ("qwen2", True)])
def test_load_equals_from_pretrained_and_task_vector(arch, tie, dtype, tmp_path, monkeypatch):
    base = save_tiny_model(tmp_path / "base", arch=arch, num_layers=2, hidden=16, tie_embeddings=tie,
                           dtype=torch.bfloat16)
    spec = save_tiny_model(tmp_path / "spec", base=base, seed=1, noise=0.05)
    reads = Counter()
    read = Checkpoint.read

    def counting(self, name, **kwargs):
        reads[(str(self.path), name)] += 1
        return read(self, name, **kwargs)

    monkeypatch.setattr(Checkpoint, "read", counting)
    m = ResidentMerger(base=base, specialists={"spec": spec}, dtype=dtype)
    monkeypatch.setattr(Checkpoint, "read", read)
    torch_dtype = getattr(torch, dtype)
    if empty_model(Checkpoint.open(base), torch_dtype, torch.device("cpu")) is not None:
        assert set(reads.values()) == {1}, "a checkpoint tensor was read more than once"
        assert len(reads) == 2 * len(m.tensors)
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype).eval()
    ours, theirs = m.model.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    with torch.no_grad():
        assert torch.equal(m.model(ids).logits, ref(ids).logits)
    ckpt = Checkpoint.open(spec)
    for t in m.tensors:
        assert torch.equal(t.deltas[0], task_vector(ckpt, t.name, t.base).to(torch_dtype)), t.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_all_finite_finds_every_non_finite_value(dtype, bad):
    """The load's NaN/Inf check (one aminmax) agrees with torch.isfinite, at any position."""
    from automerge.checkpoints import all_finite

    for where in (0, 517, 1023):
        x = torch.randn(1024).to(dtype)
        if bad is not None:
            x[where] = bad
        assert all_finite(x) == bool(torch.isfinite(x).all())
    assert all_finite(torch.empty(0, dtype=dtype)) and all_finite(torch.arange(5))
