"""automerge.fisher: diagonal Fisher of a tiny causal LM, safetensors files, cache keys."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from automerge import fisher as fisher_mod
from automerge.errors import AutomergeError
from automerge.fisher import cached_fisher, estimate_fisher, fisher_cache_key, load_fisher, read_texts, save_fisher
from tiny_models import save_tiny_model

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "class Counter:\n    def __init__(self):\n        self.counts = {}\n",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("fisher") / "m", arch="llama", seed=0, num_layers=2, hidden=16)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return path, model, AutoTokenizer.from_pretrained(path)


def manual_fisher(model, tokenizer, chunks: list[list[int]]) -> dict[str, torch.Tensor]:
    """Per-example squared gradients of the summed log-likelihood, via plain backward()."""
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for ids in chunks:
        model.zero_grad()
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits
        ll = torch.log_softmax(logits[0, :-1], -1).gather(-1, x[0, 1:, None]).sum()
        ll.backward()
        for n, p in model.named_parameters():
            total[n] += p.grad**2
    model.zero_grad(set_to_none=True)
    return {n: t / len(chunks) for n, t in total.items()}


def test_matches_per_example_squared_gradients(tiny):
    _, model, tok = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.requires_grad_(False)  # as the engine keeps its live model
    got = estimate_fisher(model, tok, TEXTS, seq_len=16)
    # The model is left as it was: same weights, no gradients, frozen, eval mode.
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None and not p.requires_grad
    assert not model.training
    model.requires_grad_(True)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    chunks = [c for i in ids for c in (i[s : s + 16] for s in range(0, len(i), 16)) if len(c) >= 2]
    ref = manual_fisher(model, tok, chunks)
    assert set(got) == {n for n, _ in model.named_parameters()}
    for name, f in got.items():
        assert f.dtype == torch.float32 and f.device.type == "cpu" and (f >= 0).all()
        torch.testing.assert_close(f, ref[name], rtol=1e-4, atol=1e-10, msg=name)
    assert sum(float(f.sum()) for f in got.values()) > 0


def test_batches_square_the_summed_gradient(tiny):
    _, model, tok = tiny
    # Two examples of different lengths in one batch: padding must not change the likelihood.
    texts = ["def add(a, b): return a + b", "x = 1"]
    chunks = [tok(t)["input_ids"] for t in texts]
    got = estimate_fisher(model, tok, texts, batch_size=2)
    grads = []
    for ids in chunks:
        x = torch.tensor([ids])
        ll = torch.log_softmax(model(input_ids=x).logits[0, :-1], -1).gather(-1, x[0, 1:, None]).sum()
        grads.append(torch.autograd.grad(ll, list(model.parameters())))
    for (name, _), g0, g1 in zip(model.named_parameters(), *grads):
        torch.testing.assert_close(got[name], (g0 + g1) ** 2 / 2, rtol=1e-4, atol=1e-10, msg=name)


def test_max_tokens_limits_the_sample(tiny, monkeypatch):
    _, _, tok = tiny
    chunks = fisher_mod._examples(tok, TEXTS * 10, seq_len=8, max_tokens=50)
    assert sum(len(c) for c in chunks) == 50 and all(2 <= len(c) <= 8 for c in chunks)
    with pytest.raises(AutomergeError, match="no example"):
        estimate_fisher(tiny[1], tok, [""])


def test_save_load_roundtrip_is_atomic(tmp_path):
    f = {"a.weight": torch.rand(3, 4), "b.bias": torch.rand(5)}
    out = save_fisher(f, tmp_path / "sub" / "f.safetensors", metadata={"model": "x"})
    got = load_fisher(out)
    assert set(got) == set(f) and all(torch.equal(got[k], f[k]) for k in f)
    save_fisher({"a.weight": torch.zeros(3, 4)}, out)  # replaces in place
    assert set(load_fisher(out)) == {"a.weight"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.safetensors"]  # no temp file left


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_fisher({"a": torch.rand(2)}, tmp_path / "f.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(AutomergeError, match="does not exist"):
        load_fisher(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(AutomergeError, match=str(bad)):
        load_fisher(bad)


def test_cache_key_and_cached_fisher(tiny, tmp_path, monkeypatch):
    path, _, _ = tiny
    kw = dict(max_tokens=64, batch_size=1, seq_len=16)
    key = fisher_cache_key(path, TEXTS, **kw)
    assert key == fisher_cache_key(path, list(TEXTS), **kw)
    assert key != fisher_cache_key(path, TEXTS[:2], **kw)
    assert key != fisher_cache_key(path, TEXTS, **(kw | {"max_tokens": 32}))
    first = cached_fisher(path, TEXTS, cache_dir=tmp_path, **kw)
    assert first.is_file() and key in first.name
    monkeypatch.setattr(fisher_mod, "estimate_fisher", lambda *a, **k: pytest.fail("cache not used"))
    assert cached_fisher(path, TEXTS, cache_dir=tmp_path, **kw) == first
    # A rebuilt model (new weights file) gets a new key.
    weights = path / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fisher_cache_key(path, TEXTS, **kw) != key


def test_read_texts(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"id": "1", "text": "a b"}\n\n{"id": "2", "text": "c"}\n')
    assert read_texts(tmp_path / "d.jsonl") == ["a b", "c"]
    (tmp_path / "d.txt").write_text("whole file")
    assert read_texts(tmp_path / "d.txt") == ["whole file"]
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(AutomergeError, match="bad.jsonl:1"):
        read_texts(tmp_path / "bad.jsonl")


def test_cli_fisher(tiny, tmp_path):
    from typer.testing import CliRunner

    from automerge.cli import app
    (tmp_path / "d.jsonl").write_text('{"text": "def f(x):\\n    return x * 2\\n"}\n')
    out = tmp_path / "f.safetensors"
    result = CliRunner().invoke(app, ["fisher", str(tiny[0]), str(tmp_path / "d.jsonl"), str(out), "--seq-len", "8"])
    assert result.exit_code == 0, result.output
    assert set(load_fisher(out)) == {n for n, _ in tiny[1].named_parameters()}
