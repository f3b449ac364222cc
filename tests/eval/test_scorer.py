"""The batched scorer gives lm-eval's numbers on the same requests (HFLM.loglikelihood and
loglikelihood_rolling on the same model object), whatever the batching."""

from __future__ import annotations

import pytest
import torch

from automerge.eval import loglikelihood, loglikelihood_rolling

REQUESTS = [
    ("The quick brown", " fox jumps over the lazy dog."),
    ("def add(a, b):", "\n    return a + b\n"),
    ("", "hello world"),                        # empty context: prefix token, lm-eval's rule
    ("<s>A sentence that starts with BOS", " and goes on."),
    ("Trailing spaces move   ", "to the continuation"),
    ("x = ", "1"),
    ("Tests check that the function returns the right value. " * 12, " Then it raises."),  # left-truncated
    ("Documentation explains", " how a function is called"),
]


def _lm_eval_ll(model, tok, requests):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    inst = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
    return lm, lm.loglikelihood(inst, disable_tqdm=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loglikelihood_equals_lm_eval(arch, tmp_path):
    from tiny_models import save_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = save_tiny_model(tmp_path / arch, arch=arch, seed=3)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(d))
    ours = loglikelihood(model, tok, REQUESTS, batch_tokens=256)
    _, theirs = _lm_eval_ll(model, tok, REQUESTS)
    assert len(ours) == len(theirs) == len(REQUESTS)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb


def test_greedy_flag_matches_lm_eval(tiny):
    model, tok = tiny
    # a continuation made of the model's own greedy tokens is greedy by construction
    ids = tok("The quick brown")["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    cont = tok.decode(out[0, len(ids):])
    reqs = [("The quick brown", cont), ("The quick brown", " fox")]
    ours = loglikelihood(model, tok, reqs)
    _, theirs = _lm_eval_ll(model, tok, reqs)
    assert [g for _, g in ours] == [g for _, g in theirs]
    for (a, _), (b, _) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4)


def test_batching_does_not_change_numbers(tiny):
    model, tok = tiny
    a = loglikelihood(model, tok, REQUESTS, batch_tokens=64)
    b = loglikelihood(model, tok, REQUESTS, batch_tokens=100_000)
    for (x, _), (y, _) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5)


def test_rolling_equals_lm_eval(tiny):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    texts = ["The quick brown fox jumps over the lazy dog. " * 30, "def add(a, b):\n    return a + b\n"]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=64)   # several windows
    inst = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)]
    theirs = lm.loglikelihood_rolling(inst, disable_tqdm=True)
    ours = loglikelihood_rolling(model, tok, texts, max_length=64)
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-3)


def test_tokenizer_without_pad_token(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.pad_token = None
    assert tok.pad_token_id is None
    got = loglikelihood(model, tok, REQUESTS[:3], batch_tokens=64)
    ref_tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    ref = loglikelihood(model, ref_tok, REQUESTS[:3], batch_tokens=64)
    for (a, _), (b, _) in zip(got, ref):
        assert a == pytest.approx(b, abs=1e-6)


MC_REQUESTS = [(ctx, c) for ctx in ("The quick brown fox", "def add(a, b):\n    ", "", "Tests check that")
               for c in (" jumps over the dog.", " sleeps.", "return a + b", " the function returns", " x")]


@pytest.mark.parametrize("arch,impl", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"), ("gpt_neox", "eager")])
def test_shared_prefix_packing_equals_lm_eval(arch, impl, tmp_path):
    """Multiple-choice requests sharing a context are scored as one prefix trie per context; the
    numbers stay lm-eval's."""
    from tiny_models import save_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automerge.eval._scorer import TokenEncoder, build_plan, supports_packing

    d = save_tiny_model(tmp_path / arch, arch=arch, seed=5)
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation=impl).eval()
    tok = AutoTokenizer.from_pretrained(str(d))
    assert supports_packing(model)
    enc = TokenEncoder(tok).encode_pairs(MC_REQUESTS)
    groups = [c for c, _ in MC_REQUESTS]
    plan = build_plan(enc, max_length=256, device="cpu", groups=[groups.index(g) for g in groups])
    assert any(b.tree_mask is not None for b in plan.batches)
    assert plan.n_input_tokens < plan.n_request_tokens          # the contexts are read once
    ours = loglikelihood(model, tok, MC_REQUESTS, batch_tokens=512)
    _, theirs = _lm_eval_ll(model, tok, MC_REQUESTS)
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb
    plain = loglikelihood(model, tok, MC_REQUESTS, share_prefixes=False)
    for (a, _), (b, _) in zip(ours, plain):
        assert a == pytest.approx(b, abs=1e-4)
