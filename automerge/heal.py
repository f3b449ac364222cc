"""Healing: a short causal-LM fine-tune of a merged model on a small mixed dataset.

    result = heal("out/merged", texts, steps=100, out="out/merged-healed")   # full fine-tune
    result = heal("out/merged", texts, steps=100, lora_rank=8)               # LoRA, merged back in

The pattern's optional step 3 ("a short fine-tuning on a mixed dataset to smooth out conflicts").
Data: texts joined into one token stream (documents separated by EOS), cut into windows; each step
draws a batch of windows from one seeded generator. The loss on the first `eval_windows` windows
is measured before and after, so a run says how much it lowered the loss on its own data. The
output is written like a merge (same tensor names and dtype as the input, atomically).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from automerge.checkpoints import Checkpoint, resolve_model_path, save_checkpoint
from automerge.errors import AutomergeError


class HealError(AutomergeError):
    """Healing cannot run: bad data file, too little text, bad hyper-parameters."""


@dataclass(frozen=True)
class HealResult:
    out: Path
    steps: int
    tokens: int
    loss_before: float
    loss_after: float
    seconds: float


def _windows(tok, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    ids: list[int] = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [eos]
    n = len(ids) // (seq_len + 1)
    if n < 2:
        raise HealError(f"the data has {len(ids)} tokens: too few for two windows of {seq_len + 1}; give more text "
                        "or a smaller --seq-len")
    return torch.tensor(ids[: n * (seq_len + 1)]).view(n, seq_len + 1)


@torch.no_grad()
def _loss(model, windows: torch.Tensor, device, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        x = windows[i:i + batch_size].to(device)
        logits = model(input_ids=x[:, :-1]).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                         x[:, 1:].reshape(-1), reduction="sum"))
    return total / (len(windows) * (windows.shape[1] - 1))


def heal(
    model_dir: str | Path,
    texts: Sequence[str],
    *,
    out: str | Path,
    steps: int = 100,
    lr: float | None = None,
    lora_rank: int | None = None,
    batch_size: int = 8,
    seq_len: int = 256,
    eval_windows: int = 16,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> HealResult:
    """Fine-tune `model_dir` on `texts` for `steps` steps (all weights, or a LoRA of rank `lora_rank`
    merged back in) and save it to `out`. Default lr: 1e-4 full, 1e-3 LoRA (AdamW, cosine to 10%)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automerge.engine import pick_device

    if steps < 1 or batch_size < 1 or seq_len < 2:
        raise HealError(f"steps, batch size and seq len must be positive (got {steps}, {batch_size}, {seq_len})")
    lr = lr if lr is not None else (1e-3 if lora_rank else 1e-4)
    if not lr > 0 or not math.isfinite(lr):
        raise HealError(f"--lr must be a positive number, got {lr}")
    source = Checkpoint.open(resolve_model_path(model_dir))
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise HealError(f"output directory {out} exists and is not empty; choose another or pass --overwrite")
    dev = pick_device(device)
    tok = AutoTokenizer.from_pretrained(source.path)
    max_len = int(source.config.get("max_position_embeddings") or seq_len)
    seq_len = min(seq_len, max_len)
    windows = _windows(tok, texts, seq_len)
    evals = windows[: min(eval_windows, len(windows))]

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).to(dev)
    before = _loss(model, evals, dev, batch_size)
    if lora_rank:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                                           target_modules="all-linear", task_type="CAUSAL_LM"))
    t0 = time.perf_counter()
    _train(model, windows, dev, steps=steps, lr=lr, batch_size=batch_size, seed=seed, on_step=on_step)
    if lora_rank:
        model = model.merge_and_unload()
    after = _loss(model, evals, dev, batch_size)
    seconds = time.perf_counter() - t0

    _save(model, source, out, overwrite=overwrite,
          info={"source": str(source.path), "steps": steps, "lr": lr, "lora_rank": lora_rank,
                "batch_size": batch_size, "seq_len": seq_len, "seed": seed, "loss_before": round(before, 5),
                "loss_after": round(after, 5)})
    return HealResult(out=out, steps=steps, tokens=steps * batch_size * seq_len, loss_before=before,
                      loss_after=after, seconds=seconds)


def _train(model, windows: torch.Tensor, dev, *, steps: int, lr: float, batch_size: int, seed: int,
           on_step: Callable[[int, int, float], None] | None) -> None:
    """AdamW on random windows: linear warm-up over the first 10 % of steps, then cosine to 10 % of lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 10)
    model.train()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        x = windows[torch.randint(0, len(windows), (batch_size,), generator=gen)].to(dev)
        logits = model(input_ids=x[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise HealError(f"the loss became {float(loss)} at step {step + 1}; lower --lr (now {lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if on_step is not None:
            on_step(step + 1, steps, float(loss.detach()))


def _save(model, source: Checkpoint, out: Path, *, overwrite: bool, info: dict) -> None:
    """The trained weights under the source checkpoint's names and float dtype, ``info`` in the metadata."""
    state = model.state_dict()
    missing = [n for n in source.names if n not in state]
    if missing:
        raise HealError(f"the loaded model has no parameter for {missing[0]} of {source.path}; cannot save it "
                        "under the checkpoint's names")
    dtype = next((source.dtype(n) for n in source.names if source.dtype(n).is_floating_point), None)
    save_checkpoint(((n, state[n]) for n in source.names), out, source=source, dtype=dtype,
                    metadata={"automerge_heal": json.dumps(info)}, overwrite=overwrite)
