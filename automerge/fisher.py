"""Diagonal Fisher information of a causal LM, estimated on a small text sample, and cached.

    fisher = estimate_fisher(model, tokenizer, texts, max_tokens=8192)    # {param name: F}
    save_fisher(fisher, "results/night1/fisher/code.safetensors")
    path = cached_fisher("zoo:code", texts, cache_dir="results/night1/fisher")  # estimate once
    paths = resolve_fisher(recipe)    # a recipe's `fisher:` entries -> estimate files (cached)

Where a recipe says `fisher: {data: FILE}`, the estimate is cached in `default_cache_dir()`
(``$AUTOMERGE_CACHE_DIR/fisher``, else ``$XDG_CACHE_HOME/automerge/fisher``, else
``~/.cache/automerge/fisher``): recipes live in read-only or versioned places (exported model
directories, git), and one estimate serves every recipe over the same model, data and settings —
the cache key (`fisher_cache_key`) holds all three, so a rebuilt model or other data never
reuses a stale file.

Estimates are reproducible bit for bit on one kind of machine (`deterministic`: one CPU thread,
deterministic kernels), so a search's workers that cannot share a file compute the same bytes.

F_j = mean over examples e of (d log p(e) / d theta_j)^2: the empirical diagonal Fisher of
Matena & Raffel (2022), where an example is a chunk of at most `seq_len` tokens of one text
and log p(e) the summed log-likelihood of its tokens. `methods.fisher_merge` weights each
specialist's parameters by it. This module touches models; `automerge.methods` never does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from automerge._lazy import LazyModule
from automerge.errors import AutomergeError
from automerge.files import atomic_path
from automerge.jsonl import read_texts

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
        # verbose=False: a text longer than the model's context is expected here (it is chunked below)
        ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        for start in range(0, len(ids), seq_len):
            piece = ids[start : start + seq_len][: max_tokens - total]
            if len(piece) < 2:
                continue
            out.append(piece)
            total += len(piece)
            if total >= max_tokens:
                return out
    return out


def _checked_examples(model, tokenizer, texts, *, max_tokens: int, batch_size: int, seq_len: int) -> list:
    """The token examples of ``texts`` (seq_len capped at the model's context); bad settings fail first."""
    if max_tokens < 2 or batch_size < 1 or seq_len < 2:
        raise AutomergeError(
            f"estimate_fisher: max_tokens ({max_tokens}) and seq_len ({seq_len}) must be >= 2, "
            f"batch_size ({batch_size}) >= 1"
        )
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and context >= 2:
        seq_len = min(seq_len, context)  # longer examples would run the model past its trained context
    examples = _examples(tokenizer, texts, seq_len=seq_len, max_tokens=max_tokens)
    if not examples:
        raise AutomergeError("estimate_fisher: the texts hold no example of 2 or more tokens; give it some text")
    return examples


def _padded(batch: list, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of a batch, right-padded: pads are masked out of the likelihood."""
    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e)] = torch.tensor(e)
        mask[row, : len(e)] = 1
    return ids.to(device), mask.to(device)


def estimate_fisher(
    model: torch.nn.Module,
    tokenizer,
    texts: Iterable[str],
    *,
    max_tokens: int = 8192,
    batch_size: int = 1,
    seq_len: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher per parameter (fp32, CPU), keyed by `model.named_parameters()` names.

    progress(done, total) is called after each batch, with counts of examples. seq_len is capped
    at the model's context (config.max_position_embeddings).

    batch_size=1 squares each example's own gradient (the exact empirical Fisher).
    batch_size=B squares the gradient of B examples' summed log-likelihood and divides
    by B: the same in expectation when examples' gradients are uncorrelated (near a
    trained model's optimum), B times fewer backward passes. The model is left as it
    was (mode, requires_grad, no .grad); it runs on whatever device it is on and needs
    a float32 accumulator per parameter there.
    """
    examples = _checked_examples(model, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size,
                                 seq_len=seq_len)
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
            ids, mask = _padded(examples[b : b + batch_size], pad, device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            loglik = (logp * mask[:, 1:]).sum()
            grads = torch.autograd.grad(loglik, list(params.values()), allow_unused=True)
            for name, g in zip(params, grads):
                if g is not None:
                    fisher[name].add_(g.float().square())
            if progress is not None:
                progress(min(b + batch_size, len(examples)), len(examples))
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
    # One metadata key: safetensors writes its metadata map in random order, so several keys
    # would make equal estimates differ in bytes.
    meta = {"automerge_fisher": json.dumps({"format": FORMAT, **{str(k): str(v) for k, v in (metadata or {}).items()}},
                                           sort_keys=True)}
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
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Path of the Fisher estimate of (model, texts, settings) in cache_dir; estimated first if absent.

    The file is `<name or model dir name>-<key>.safetensors`; the estimate runs `deterministic`ally.
    """
    from automerge.checkpoints import resolve_model_path

    model_dir = resolve_model_path(model_path)
    texts = list(texts)
    key = fisher_cache_key(model_dir, texts, max_tokens=max_tokens, batch_size=batch_size, seq_len=seq_len)
    out = Path(cache_dir) / f"{name or 'fisher-' + model_dir.name}-{key}.safetensors"
    if out.is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with deterministic(model):
        fisher = estimate_fisher(model, tokenizer, texts, max_tokens=max_tokens, batch_size=batch_size,
                                 seq_len=seq_len, progress=progress)
    del model
    # Nothing machine-specific (paths, mtimes): equal estimates are equal files on every machine.
    meta = {"model": model_dir.name, "max_tokens": max_tokens, "batch_size": batch_size, "seq_len": seq_len,
            "texts": len(texts)}
    return save_fisher(fisher, out, metadata=meta)


@contextmanager
def deterministic(model: torch.nn.Module) -> Iterator[None]:
    """Run an estimate so that it gives the same bytes every time on the same kind of machine.

    On a CPU: one thread (a matmul's reduction order depends on how many threads split it).
    Everywhere: torch's deterministic algorithms (warn-only: a kernel without a deterministic
    variant still runs). Both are restored afterwards. On a GPU, cuBLAS is deterministic only
    with CUBLAS_WORKSPACE_CONFIG set before its first call: set here when unset (a search
    estimates before it merges anything).
    """
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not on_cpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if on_cpu:
        torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
        if on_cpu:
            torch.set_num_threads(threads)


def default_cache_dir() -> Path:
    """Where estimates computed from a recipe's `fisher: {data: ...}` are kept (see the module doc)."""
    if os.environ.get("AUTOMERGE_CACHE_DIR"):
        return Path(os.environ["AUTOMERGE_CACHE_DIR"]) / "fisher"
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "automerge" / "fisher"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def missing_fisher_message(names: Sequence[str], paths: Mapping[str, str], *, where: str = "the recipe") -> str:
    """What to add for specialists without an estimate: the recipe key, the CLI option, the command."""
    first = names[0]
    return (
        f"method 'fisher' needs a Fisher estimate for model(s) {', '.join(names)}; in {where}, add under "
        f"that model (e.g. models[{first}]) `fisher: FILE.safetensors` (made by `automerge fisher "
        f"{paths.get(first, 'MODEL')} DATA.jsonl FILE.safetensors`) or `fisher: {{data: DATA.jsonl}}` "
        f"(estimated and cached), or pass `automerge merge ... --fisher {first}=FILE.safetensors`"
    )


def resolve_fisher(
    recipe,
    *,
    given: Mapping[str, str | Path] | None = None,
    names: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    where: str = "the recipe",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Path]:
    """Estimate file per specialist of a fisher recipe: `given` (e.g. --fisher NAME=PATH) first,
    then the model's `fisher:` entry — a file, or data estimated once into `cache_dir`
    (default `default_cache_dir()`). Every file and data path is checked before anything is
    estimated; a specialist with neither is a RecipeError naming the key to add."""
    from automerge.errors import RecipeError
    from automerge.recipe import FisherData

    given = {k: Path(v) for k, v in (given or {}).items()}
    models = {m.name: m for m in recipe.models}
    unknown = [n for n in given if n not in models]
    if unknown:
        raise RecipeError(f"--fisher {unknown[0]}=...: the recipe has no model {unknown[0]!r}; "
                          f"its models: {', '.join(models)}")
    wanted = list(names) if names is not None else list(models)
    missing = [n for n in wanted if n not in given and models[n].fisher is None]
    if missing:
        raise RecipeError(missing_fisher_message(missing, {n: m.path for n, m in models.items()}, where=where))
    out: dict[str, Path] = {}
    todo: dict[str, FisherData] = {}
    for n in wanted:
        src = given.get(n, models[n].fisher)
        if isinstance(src, FisherData):
            if not Path(src.data).is_file():
                raise RecipeError(f"models[{n}].fisher.data: data file {src.data} does not exist; fix the path "
                                  "(relative paths are relative to the recipe file)")
            todo[n] = src
            continue
        path = Path(src)
        if not path.is_file():
            key = f"--fisher {n}=" if n in given else f"models[{n}].fisher"
            raise RecipeError(f"{key}: Fisher file {path} does not exist; make it with `automerge fisher "
                              f"{models[n].path} DATA.jsonl {path}` or fix the path (relative paths are "
                              "relative to the recipe file)")
        out[n] = path
    for n, src in todo.items():
        out[n] = cached_fisher(
            models[n].path, read_texts(src.data), cache_dir=cache_dir or default_cache_dir(),
            max_tokens=src.max_tokens, batch_size=src.batch_size, seq_len=src.seq_len, device=device,
            progress=(lambda d, t, n=n: progress(n, d, t)) if progress else None)
    return {n: out[n] for n in wanted}


def reachable_fisher(recipe, files: Mapping[str, str | Path]):
    """The recipe with each `fisher:` file this machine cannot read replaced by files[name] (a
    study's copy: a search trial made by a worker elsewhere names that worker's path; the bytes
    are the same, checked by `automerge.search.fisher.study_fisher`). Readable files, data
    entries and other methods are kept."""
    if not files or not any(m.fisher is not None or m.name in files for m in recipe.models):
        return recipe
    models = []
    for m in recipe.models:
        if (m.fisher is None or isinstance(m.fisher, str) and not Path(m.fisher).is_file()) and m.name in files:
            m = m.model_copy(update={"fisher": str(files[m.name])})
        models.append(m)
    return recipe.model_copy(update={"models": models})


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
