"""Specialists that are not HF model dirs: plain state-dict files (this file) and LoRA adapters
(test_lora.py), read against their base."""

from __future__ import annotations

import os

import pytest
import torch

from automerge.checkpoints import Checkpoint
from automerge.engine import ResidentMerger
from automerge.errors import CheckpointError
from automerge.recipe import Recipe
from automerge.specialists import StateDictCheckpoint, open_specialist
from tiny_models import read_tensors, save_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    base = save_tiny_model(root / "base", arch="llama", seed=0)
    spec = save_tiny_model(root / "spec", base=base, seed=1, noise=0.05)
    return root, base, spec


def _merged(base, path) -> dict[str, torch.Tensor]:
    merger = ResidentMerger(base=base, specialists={"s": path}, device="cpu")
    merger.apply(Recipe(method="task_arithmetic", base=str(base),
                        models=[{"name": "s", "path": str(path), "parameters": {"weight": 1.0}}]))
    return dict(merger.state_dict_iter())


@pytest.mark.parametrize("prefix, suffix", [("", ".pt"), ("module.", ".bin"), ("strip-model", ".pth")])
def test_state_dict_file_merges_like_the_model_dir(models, prefix, suffix):
    root, base, spec = models
    tensors = read_tensors(spec)
    if prefix == "strip-model":  # the inner model's state dict (LlamaModel, no "model.")
        sd = {k.removeprefix("model."): v for k, v in tensors.items()}
    else:
        sd = {prefix + k: v for k, v in tensors.items()}
    sd["model.rotary_emb.inv_freq"] = torch.ones(4)  # a recomputed buffer some versions save
    file = root / f"spec-{prefix or 'plain'}{suffix}"
    torch.save(sd, file)
    ckpt = open_specialist(file, base=Checkpoint.open(base))
    assert isinstance(ckpt, StateDictCheckpoint) and set(ckpt.names) == set(tensors)
    want = _merged(base, spec)
    got = _merged(base, file)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_nested_state_dict_and_mismatch_named(models):
    root, base, spec = models
    tensors = read_tensors(spec)
    file = root / "nested.pt"
    torch.save({"state_dict": tensors, "epoch": 3}, file)
    assert set(open_specialist(file, base=Checkpoint.open(base)).names) == set(tensors)

    bad = dict(tensors)
    dropped = sorted(bad)[0]
    del bad[dropped]
    bad["encoder.extra.weight"] = torch.zeros(2)
    torch.save(bad, root / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        open_specialist(root / "bad.pt", base=Checkpoint.open(base))
    msg = str(err.value)
    assert "encoder.extra.weight" in msg and dropped in msg and "prefixes" in msg

    torch.save([1, 2, 3], root / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        open_specialist(root / "list.pt", base=Checkpoint.open(base))


class _WritesAFile:
    """Unpickling this calls open(path, 'w'): code execution a weights file must never get."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_needs_code_is_refused_by_name(models, tmp_path):
    root, base, _ = models
    victim = tmp_path / "pwned.txt"
    file = tmp_path / "evil.pt"
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": _WritesAFile(str(victim))}, file)
    with pytest.raises(CheckpointError) as err:
        open_specialist(file, base=Checkpoint.open(base))
    assert not victim.exists()
    msg = str(err.value)
    assert "needs code to load (it calls io.open)" in msg and "weights_only" in msg, msg
    # and through the merger, before any model loads
    with pytest.raises(CheckpointError, match="needs code"):
        ResidentMerger(base=base, specialists={"evil": file}, device="cpu")
    assert not victim.exists()
    assert os.listdir(tmp_path) == ["evil.pt"]


def test_eval_reads_a_state_dict_against_the_base(models):
    from automerge.errors import EvalError
    from automerge.eval.cli import evaluate_models

    root, base, spec = models
    file = root / "eval-spec.pt"
    torch.save(read_tensors(spec), file)
    _, results = evaluate_models([str(spec)], base=str(base), specialists=[("sd", str(file), "code")],
                                 tasks=["code_body_ll"], limit=2, device="cpu")
    assert results["sd"]["code_body_ll"].score == pytest.approx(results[str(spec)]["code_body_ll"].score, abs=1e-6)
    base_label = str(base)
    assert results["sd"]["code_body_ll"].score != pytest.approx(results[base_label]["code_body_ll"].score, abs=1e-6)
    with pytest.raises(EvalError, match="give --base"):
        evaluate_models([str(file)], tasks=["code_body_ll"], limit=2, device="cpu")
