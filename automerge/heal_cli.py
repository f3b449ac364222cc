"""`automerge heal MODEL_DIR --data FILE.jsonl|zoo:mix`: a short fine-tune of a merged model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def zoo_mix_texts(max_chars: int = 1_500_000) -> list[str]:
    """zoo:mix: a mixed dataset of the zoo's mix domains, never its held-out files: standard-library
    code (half of `max_chars`), its module docstrings, and the pydoc topics (prose), read from this
    Python (no apt package), in the zoo's stable-hash order so every machine takes the same files."""
    from automerge.zoo import corpus as C  # the CLI layer may use the zoo; the core never does

    code_files, _ = C.stdlib_files()
    order = sorted((f for f in code_files if not C.is_heldout(f[0])), key=lambda f: C.stable_hash(f[0]))
    code, size = [], 0
    for rec in C.load_code_records(order[:400], "code"):
        if size >= max_chars // 2:
            break
        code.append(rec.text)
        size += len(rec.text)
    docs = [d for d in (C.docstring_text(t) for t in code) if d]
    prose, size = [], 0
    for rec in sorted(C.pydoc_topic_records(), key=lambda r: C.stable_hash(r.source)):
        if C.is_heldout(rec.source) or size >= max_chars // 2:
            continue
        prose.append(rec.text)
        size += len(rec.text)
    return [*code, *docs, *prose]


def heal_command(
    model_dir: str = typer.Argument(..., help="The model to heal (a HF model dir, e.g. a merge)."),
    data: str = typer.Option(..., help="A JSONL file of {\"text\": ...} records, or zoo:mix."),
    steps: int = typer.Option(100, help="Optimizer steps."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 1e-4 full, 1e-3 LoRA)."),
    lora: Optional[int] = typer.Option(None, "--lora", help="Train a LoRA of this rank and merge it back in "
                                       "(default: fine-tune every weight)."),
    batch_size: int = typer.Option(8, help="Windows per step."),
    seq_len: int = typer.Option(256, help="Tokens per window (capped at the model's context)."),
    out: Optional[Path] = typer.Option(None, help="Output model dir (default MODEL_DIR-healed)."),
    seed: int = typer.Option(0, help="Seed of the batch order (and LoRA init)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty OUT."),
) -> None:
    """Fine-tune a merged model briefly on a mixed dataset (causal LM loss) to smooth out conflicts."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from automerge.checkpoints import resolve_model_path
    from automerge.heal import heal
    from automerge.jsonl import read_texts

    texts = zoo_mix_texts() if data == "zoo:mix" else read_texts(data)
    target = out or Path(str(resolve_model_path(model_dir)).rstrip("/") + "-healed")
    with Progress(TextColumn("heal"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn()) as bar:
        task = bar.add_task("heal", total=steps, loss="-")
        result = heal(model_dir, texts, out=target, steps=steps, lr=lr, lora_rank=lora, batch_size=batch_size,
                      seq_len=seq_len, seed=seed, device=device, overwrite=overwrite,
                      on_step=lambda s, n, loss: bar.update(task, completed=s, loss=f"{loss:.3f}"))
    typer.echo(f"healed {model_dir} in {result.steps} steps ({result.tokens:,} tokens, {result.seconds:.0f} s): "
               f"loss on its data {result.loss_before:.4f} -> {result.loss_after:.4f} -> {result.out}")


def register(app: typer.Typer) -> None:
    app.command("heal")(heal_command)
