"""Pretraining / fine-tuning loop for the zoo's tiny Llama models (fp32 training, CPU, deterministic).

Data: every domain's training texts are encoded once and joined into one token stream per domain
(documents separated by ``<|endoftext|>``). A stage draws each sequence of a batch from a domain
chosen by its mixture weights and at a uniformly random offset in that domain's stream, both from
one seeded ``torch.Generator``: one ordered pipeline, so the same seed gives the same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    seq_len: int

    def config(self, *, bos_id: int, eos_id: int, pad_id: int):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads, max_position_embeddings=self.seq_len, rms_norm_eps=1e-5,
            tie_word_embeddings=True, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
            initializer_range=0.02, attention_bias=False, mlp_bias=False, hidden_act="silu", use_cache=True,
        )


@dataclass(frozen=True)
class Stage:
    """One training run: ``tokens`` tokens drawn from ``mixture`` (domain -> weight)."""

    name: str
    mixture: Mapping[str, float]
    tokens: int
    lr: float
    batch_size: int
    warmup_steps: int
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def steps(self, seq_len: int) -> int:
        return max(1, math.ceil(self.tokens / (self.batch_size * seq_len)))

    def to_json(self) -> dict:
        d = asdict(self)
        d["mixture"] = dict(self.mixture)
        return d


def new_model(spec: ModelSpec, *, seed: int, bos_id: int, eos_id: int, pad_id: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = spec.config(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    model = LlamaForCausalLM(cfg)
    model.to(torch.float32)
    return model


def _mixture_rows(mixture: Mapping[str, float], batch_size: int, steps: int, gen: torch.Generator) -> list[str]:
    names = sorted(k for k, w in mixture.items() if w > 0)
    weights = torch.tensor([float(mixture[k]) for k in names], dtype=torch.float64)
    idx = torch.multinomial(weights, batch_size * steps, replacement=True, generator=gen)
    return [names[i] for i in idx.tolist()]


def train_stage(model, streams: Mapping[str, torch.Tensor], stage: Stage, *, seed: int,
                on_step: Callable[[int, int, float, int], None] | None = None) -> dict:
    """Train ``model`` in place; returns {"steps", "tokens", "final_loss", "seconds"}.

    ``streams``: domain -> 1-D int64 token stream. ``on_step(step, steps, loss, tokens_done)``.
    """
    seq = model.config.max_position_embeddings
    steps = stage.steps(seq)
    gen = torch.Generator().manual_seed(seed)
    rows = _mixture_rows(stage.mixture, stage.batch_size, steps, gen)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": stage.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=stage.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < stage.warmup_steps:
            return stage.lr * (step + 1) / stage.warmup_steps
        t = (step - stage.warmup_steps) / max(1, steps - stage.warmup_steps)
        return stage.lr * (stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    t0 = time.perf_counter()
    ema = None
    last = float("nan")
    for step in range(steps):
        batch = []
        for name in rows[step * stage.batch_size:(step + 1) * stage.batch_size]:
            s = streams[name]
            off = int(torch.randint(0, len(s) - seq - 1, (1,), generator=gen))
            batch.append(s[off:off + seq + 1])
        x = torch.stack(batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
        opt.step()
        last = loss.item()
        ema = last if ema is None else 0.95 * ema + 0.05 * last
        if on_step is not None:
            on_step(step + 1, steps, ema, (step + 1) * stage.batch_size * seq)
    model.eval()
    return {"steps": steps, "tokens": steps * stage.batch_size * seq, "final_loss": round(ema or last, 4),
            "seconds": round(time.perf_counter() - t0, 1)}


@torch.no_grad()
def stream_loss(model, ids: torch.Tensor, *, seq_len: int, batch_size: int = 16) -> float:
    """Mean next-token loss over a token stream cut into non-overlapping windows."""
    n = (len(ids) - 1) // seq_len
    if n == 0:
        return float("nan")
    x = ids[: n * seq_len + 1]
    inp = x[:-1].view(n, seq_len)
    tgt = x[1:].view(n, seq_len)
    total = 0.0
    for i in range(0, n, batch_size):
        logits = model(input_ids=inp[i:i + batch_size]).logits
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[i:i + batch_size].reshape(-1),
                                       reduction="sum"))
    return total / (n * seq_len)
