"""Greedy batched generation with stop sequences, for HumanEval and summarisation.

Prompts are encoded as lm-eval's ``generate_until`` does (the tokenizer's default special tokens),
left-padded in length-sorted batches, left-truncated to leave room for ``max_new_tokens`` inside
the model's context, and decoded greedily (``do_sample=False``) with ``stop_strings``; each output
is then cut at the first stop sequence. A logits processor watches for NaN/Inf logits so a broken
model yields a clear failure instead of garbage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or Inf logits."""


class _FiniteWatch:
    """A LogitsProcessor that records whether every step's scores were finite."""

    def __init__(self):
        self.bad = False

    def __call__(self, input_ids, scores):
        if not self.bad and not bool(torch.isfinite(scores).all()):
            self.bad = True
        return scores


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


@torch.inference_mode()
def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (order kept), each cut at its first stop sequence.
    Raises NonFiniteLogits when the model's logits hold NaN/Inf."""
    from transformers import GenerationConfig, LogitsProcessorList

    if not prompts:
        return []
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if max_length is None:
        cfg = model.config
        max_length = next((getattr(cfg, a) for a in ("n_positions", "max_position_embeddings", "n_ctx")
                           if isinstance(getattr(cfg, a, None), int)), 2048)
    room = max(1, max_length - max_new_tokens)
    enc = [list(ids)[-room:] for ids in tokenizer(list(prompts))["input_ids"]]
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    eos = tokenizer.eos_token_id
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id,
                               stop_strings=[s for s in stop if s] or None)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    out: list[str] = [""] * len(enc)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for b, i in enumerate(idx):
            L = len(enc[i])
            ids[b, T - L:] = torch.tensor(enc[i], dtype=torch.long)
            mask[b, T - L:] = 1
        watch = _FiniteWatch()
        kwargs = {"tokenizer": tokenizer} if gen_cfg.stop_strings else {}
        res = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                             logits_processor=LogitsProcessorList([watch]), **kwargs)
        if watch.bad:
            raise NonFiniteLogits("the model produced NaN/Inf logits while generating")
        new = res[:, T:].tolist()
        for b, i in enumerate(idx):
            toks = new[b]
            if eos is not None and eos in toks:
                toks = toks[:toks.index(eos)]
            toks = [t for t in toks if t != pad] if pad != eos else toks
            out[i] = cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), stop)
    return out
