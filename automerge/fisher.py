"""Diagonal Fisher information of a causal LM, estimated on a small text sample, and cached.

    fisher = estimate_fisher(model, tokenizer, texts, max_tokens=8192)    # {param name: F}
    save_fisher(fisher, "results/night1/fisher/code.safetensors")
    path = cached_fisher("zoo:code", texts, cache_dir="results/night1/fisher")  # estimate once

F_j = mean over examples e of (d log p(e) / d theta_j)^2: the empirical diagonal Fisher of
Matena & Raffel (2022), where an example is a chunk of at most `seq_len` tokens of one text
and log p(e) the summed log-likelihood of its tokens. `methods.fisher_merge` weights each
specialist's parameters by it. This module touches models; `automerge.methods` never does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from automerge._lazy import LazyModule
from automerge.errors import AutomergeError
from automerge.files import atomic_path

if TYPE_CHECKING:
    import torch
else:
    torch = LazyModule("torch")  # `automerge --help` imports this module: torch only when used

FORMAT = "automerge-fisher-1"


def _examples(tokenizer, texts: Iterable[str], *, seq_len: int, max_tokens: int) -> list[list[int]]:
    """Token chunks of at most seq_len, at most max_tokens in all; a chunk needs 2 tokens to predict one."""
    out: list[list[int]] = []
    total = 0
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        for start in range(0, len(ids), seq_len):
            piece = ids[start : start + seq_len][: max_tokens - total]
            if len(piece) < 2:
                continue
            out.append(piece)
            total += len(piece)
            if total >= max_tokens:
                return out
    return out


def estimate_fisher(
    model: torch.nn.Module,
    tokenizer,
    texts: Iterable[str],
    *,
    max_tokens: int = 8192,
    batch_size: int = 1,
    seq_len: int = 512,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher per parameter (fp32, CPU), keyed by `model.named_parameters()` names.

    batch_size=1 squares each example's own gradient (the exact empirical Fisher).
    batch_size=B squares the gradient of B examples' summed log-likelihood and divides
    by B: the same in expectation when examples' gradients are uncorrelated (near a
    trained model's optimum), B times fewer backward passes. The model is left as it
    was (mode, requires_grad, no .grad); it runs on whatever device it is on and needs
    a float32 accumulator per parameter there.
    """
    if max_tokens < 2 or batch_size < 1 or seq_len < 2:
        raise AutomergeError(
            f"estimate_fisher: max_tokens ({max_tokens}) and seq_len ({seq_len}) must be >= 2, "
            f"batch_size ({batch_size}) >= 1"
        )
    examples = _examples(tokenizer, texts, seq_len=seq_len, max_tokens=max_tokens)
    if not examples:
        raise AutomergeError("estimate_fisher: the texts hold no example of 2 or more tokens; give it some text")
    params = dict(model.named_parameters())  # tied weights appear once
    device = next(iter(params.values())).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    fisher = {name: torch.zeros(p.shape, dtype=torch.float32, device=device) for name, p in params.items()}

    was_training = model.training
    needed_grad = {name: p.requires_grad for name, p in params.items()}
    model.eval()  # no dropout: the Fisher of the model as it will be used
    for p in params.values():
        p.requires_grad_(True)
    try:
        for b in range(0, len(examples), batch_size):
            batch = examples[b : b + batch_size]
            width = max(len(e) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, e in enumerate(batch):  # right padding, masked out of the likelihood
                ids[row, : len(e)] = torch.tensor(e)
                mask[row, : len(e)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            loglik = (logp * mask[:, 1:]).sum()
            grads = torch.autograd.grad(loglik, list(params.values()), allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    fisher[name].add_(g.float().square())
    finally:
        for name, p in params.items():
            p.requires_grad_(needed_grad[name])
        model.train(was_training)
    return {name: (f / len(examples)).cpu() for name, f in fisher.items()}


# ---------------------------------------------------------------- files


def save_fisher(
    fisher: Mapping[str, torch.Tensor], path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a Fisher estimate as safetensors, atomically (temp file beside it, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in fisher.items()}
    meta = {"format": FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    with atomic_path(path) as tmp:  # readers see the old file or the new one, never half of one
        save_file(tensors, tmp, metadata=meta)
    return path


def load_fisher(path: str | Path) -> dict[str, torch.Tensor]:
    """A Fisher estimate written by save_fisher: {parameter name: fp32 tensor} on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AutomergeError(f"Fisher file {path} does not exist; estimate it with `automerge fisher`")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise AutomergeError(f"Fisher file {path} cannot be read ({err}); delete it and estimate it again") from None


def fisher_cache_key(
    model_path: str | Path, texts: Sequence[str], *, max_tokens: int, batch_size: int, seq_len: int
) -> str:
    """Hash of (model directory, its weight files' sizes and mtimes, the texts, the settings).

    A rebuilt model or different data gives a new key, so a stale estimate is never reused.
    """
    path = Path(model_path).resolve()
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{path}\0".encode())
    for f in sorted(path.glob("*.safetensors*")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    data = hashlib.sha256()
    for text in texts:
        data.update(hashlib.sha256(text.encode()).digest())
    h.update(data.digest())
    h.update(json.dumps({"max_tokens": max_tokens, "batch_size": batch_size, "seq_len": seq_len}).encode())
    return h.hexdigest()[:20]


def cached_fisher(
    model_path: str | Path,
    texts: Sequence[str],
    *,
    cache_dir: str | Path,
    max_tokens: int = 8192,
    batch_size: int = 1,
    seq_len: int = 512,
    device: str = "cpu",
) -> Path:
    """Path of the Fisher estimate of (model, texts, settings) in cache_dir; estimated first if absent."""
    from automerge.checkpoints import resolve_model_path

    model_dir = resolve_model_path(model_path)
    texts = list(texts)
    key = fisher_cache_key(model_dir, texts, max_tokens=max_tokens, batch_size=batch_size, seq_len=seq_len)
    out = Path(cache_dir) / f"fisher-{model_dir.name}-{key}.safetensors"
    if out.is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fisher = estimate_fisher(model, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size, seq_len=seq_len)
    meta = {"model": str(model_dir), "key": key, "max_tokens": max_tokens, "batch_size": batch_size,
            "seq_len": seq_len, "texts": len(texts)}
    return save_fisher(fisher, out, metadata=meta)


def read_texts(path: str | Path) -> list[str]:
    """Texts from a JSONL file of {"text": ...} records (the held-out format), else the whole file as one."""
    path = Path(path)
    if not path.is_file():
        raise AutomergeError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise AutomergeError(f"{path}:{i}: expected a JSON object with a \"text\" field") from None
        return texts
    return [path.read_text()]


def register(app) -> None:
    """`automerge fisher MODEL DATA OUT`."""
    import typer

    @app.command("fisher")
    def fisher_command(
        model: str = typer.Argument(..., help="Model directory or zoo:NAME."),
        data: Path = typer.Argument(..., help="JSONL of {\"text\": ...} records, or a plain text file."),
        out: Path = typer.Argument(..., help="Output .safetensors file."),
        max_tokens: int = typer.Option(8192, help="Tokens of data to use, at most."),
        seq_len: int = typer.Option(512, help="Tokens per example."),
        batch_size: int = typer.Option(1, help="Examples per backward pass (1 = exact per-example Fisher)."),
        device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    ) -> None:
        """Estimate a model's diagonal Fisher on a text sample (for the `fisher` merge method)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from automerge.checkpoints import resolve_model_path

        model_dir = resolve_model_path(model)
        texts = read_texts(data)
        lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        tok = AutoTokenizer.from_pretrained(model_dir)
        fisher = estimate_fisher(lm, tok, texts, max_tokens=max_tokens, batch_size=batch_size, seq_len=seq_len)
        save_fisher(fisher, out, metadata={"model": str(model_dir), "data": str(data), "max_tokens": max_tokens,
                                           "seq_len": seq_len, "batch_size": batch_size})
        typer.echo(f"Fisher of {model} on {data} -> {out}")
