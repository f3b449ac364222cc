"""``build_zoo``: corpus -> split -> tokenizer -> base -> specialists -> shipped layout, atomically.

Output directory layout (``out``)::

    models/{base,code,lang,tests,mix}/   HF LlamaForCausalLM dirs (config, tokenizer, fp16 safetensors)
    data/heldout/{code,prose,tests,docstrings,generation,summarisation}.jsonl
    data/external/{code,prose}.jsonl
    data/DATA_CARD.md
    zoo.json                              sizes, seeds, token counts, losses (no timings: byte-identical)

Everything is built in a temporary directory beside ``out`` and renamed into place at the end; on any
error the temporary directory is removed, so nothing half-written is ever left.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Literal

from automerge.files import staged_dir
from automerge.zoo import MODEL_NAMES, ZooError
from automerge.zoo import corpus as C
from automerge.zoo.train import ModelSpec, Stage


@dataclass(frozen=True)
class ZooPlan:
    vocab_size: int
    spec: ModelSpec
    stages: tuple[Stage, ...]          # base first; the others are fine-tuned from base
    tokenizer_stride: dict              # domain -> take every n-th training text for the tokenizer
    eval_tokens: int                    # per domain, for the quick held-out losses in zoo.json


# Narrow domains, so that each specialist forgets the other's domain and merging is a trade-off: the
# language specialist reads prose and docstrings only (no code-bearing summarisation pairs); the code
# specialist reads code as found 60 % and code without comments and docstrings 40 %. Measured on the
# quality holdout (2 M tokens): code as found only -> no worse than the base on third-party prose
# (mostly docstrings); bare code only -> +0.89 nats worse on prose but only 0.09 better on code.
_LANG_MIX = {"prose": 0.6, "docstrings": 0.4}
_CODE_MIX = {"code": 0.6, "bare_code": 0.4}


def _union(parts: tuple[tuple[Mapping[str, float], int], ...]) -> dict[str, float]:
    """The data-mix reference's mixture: each specialist's mixture in proportion to its tokens."""
    total = sum(n for _, n in parts)
    out: dict[str, float] = {}
    for mix, n in parts:
        for k, w in mix.items():
            out[k] = round(out.get(k, 0.0) + w * n / total, 6)
    return out


def plan(size: str) -> ZooPlan:
    if size == "full":
        v = 4096
        spec = ModelSpec(vocab_size=v, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, seq_len=256)
        bs = 16
        # Specialists get 2-3 M tokens at lr 3e-3 (4-6x the first zoo's 0.5 M at 2e-3): on this far from
        # converged base that is what moves them >= 0.25 nats/token on their own third-party text.
        code_tok, lang_tok = 2_000_000, 3_000_000
        stages = (
            Stage("base", {"code": 0.3, "tests": 0.2, "prose": 0.35, "docstrings": 0.15}, 2_900_000, 2e-3, bs, 60,
                  weight_decay=0.1),
            Stage("code", _CODE_MIX, code_tok, 3e-3, bs, 10),
            Stage("lang", _LANG_MIX, lang_tok, 3e-3, bs, 10),
            Stage("tests", {"tests": 1.0}, 1_000_000, 3e-3, bs, 10),
            # the same data as code + lang together: same tokens, each specialist's mixture in proportion
            Stage("mix", _union(((_CODE_MIX, code_tok), (_LANG_MIX, lang_tok))), code_tok + lang_tok, 3e-3, bs, 10),
        )
        return ZooPlan(v, spec, stages, {"code": 3, "tests": 4, "prose": 2, "docstrings": 2}, 20_000)
    if size == "test":
        v = 384
        spec = ModelSpec(vocab_size=v, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seq_len=64)
        bs, m = 8, 2048
        stages = (
            Stage("base", {"code": 0.3, "tests": 0.2, "prose": 0.35, "docstrings": 0.15}, 4 * m, 3e-3, bs, 2,
                  weight_decay=0.1),
            Stage("code", _CODE_MIX, m, 3e-3, bs, 1),
            Stage("lang", {"prose": 0.7, "docstrings": 0.3}, m, 3e-3, bs, 1),
            Stage("tests", {"tests": 1.0}, m, 3e-3, bs, 1),
            Stage("mix", {"code": 0.3, "bare_code": 0.2, "prose": 0.35, "docstrings": 0.15}, 2 * m, 3e-3, bs, 1),
        )
        return ZooPlan(v, spec, stages, {"code": 1, "tests": 1, "prose": 1, "docstrings": 1}, 2_000)
    raise ZooError(f"unknown zoo size {size!r}; use --size full or --size test")


# ------------------------------------------------------------------------------------------------ output dir
def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ZooError(f"output path {out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise ZooError(f"output directory {out} exists and is not empty; remove it or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"cannot create the parent directory of {out} ({e.strerror}); choose a writable --out") from e
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ZooError(f"output directory {out.parent} is not writable; choose a writable --out "
                       "(the zoo is built in a temporary directory beside the target)")


@contextmanager
def _sigterm_cleans_up():
    """SIGTERM raises SystemExit inside the build, so the staging directory is removed (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    prev = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev)


# ------------------------------------------------------------------------------------------------ progress
class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None
        if enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._p = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())

    def __enter__(self):
        if self._p:
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self._p:
            self._p.__exit__(*exc)

    def task(self, name: str, total: int):
        return self._p.add_task(name, total=total, info="") if self._p else None

    def update(self, task, completed: int, info: str = ""):
        if self._p is not None and task is not None:
            self._p.update(task, completed=completed, info=info)

    def log(self, msg: str):
        if self._p is not None:
            self._p.console.log(msg)


# ------------------------------------------------------------------------------------------------ build
def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def build_zoo(*, size: Literal["full", "test"], out: Path, seed: int = 0, progress: bool = True,
              cache: Path | None = None) -> Path:
    """Build the demo zoo into ``out`` (must not exist or be empty). Deterministic for a given seed/machine.

    ``cache``: optional directory keeping each trained stage (its fp16 ``model.safetensors``) under a key
    that hashes everything the stage depends on (plan, seed, tokenizer, training streams, parent stage,
    threads, library versions), so an interrupted or partly changed build resumes without retraining
    what is unchanged. The result is the same bytes as a build without cache.
    """
    zp = plan(size)
    out = Path(out).absolute()
    _check_out(out)
    # The corpus first: a missing doc package must fail before anything is written.
    try:
        corpus = C.collect(size)
    except C.MissingDocsError as e:
        if str(e) == "tests":
            raise ZooError("the standard library's test modules (test_*.py) are missing from "
                           f"{C.stdlib_dir()}; install them (Debian/Ubuntu: sudo apt-get install "
                           f"libpython{sys.version_info.major}.{sys.version_info.minor}-testsuite) "
                           "or use --size test") from None
        raise ZooError(f"the Python documentation sources are missing ({e} not found); install them with "
                       f"`sudo apt-get install {C.doc_package_name()}` (Debian/Ubuntu), or use --size test, "
                       "which needs no package") from None
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    with _sigterm_cleans_up(), staged_dir(out) as tmp, _Progress(progress) as pr:
        torch.manual_seed(seed)
        det_prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            summary = _build_into(tmp, corpus, zp, size=size, seed=seed, pr=pr, cache=cache)
        finally:
            torch.use_deterministic_algorithms(det_prev)
        (tmp / "zoo.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        pr.log(f"zoo ({size}) built in {time.perf_counter() - t_start:.0f} s -> {out}")
    return out


def _build_into(tmp: Path, corpus: C.Corpus, zp: ZooPlan, *, size: str, seed: int, pr: _Progress,
                cache: Path | None = None) -> dict:
    import torch

    from automerge.zoo import card
    from automerge.zoo import tokenizer as T
    from automerge.zoo.train import new_model, stream_loss, train_stage

    # data
    t = pr.task("data", 1)
    data_sizes = C.write_data(corpus, tmp / "data")
    pr.update(t, 1, f"{sum(v['records'] for v in data_sizes.values())} records")

    t = pr.task("tokenizer", 1)
    raw_tok, streams, tok_chars = tokenize(corpus, zp)
    hf_tok = T.to_transformers(raw_tok, zp.spec.seq_len)
    eot = raw_tok.token_to_id(T.EOT)
    pad = raw_tok.token_to_id(T.PAD)
    pr.update(t, 1, f"vocab {raw_tok.get_vocab_size()}, {sum(len(v) for v in streams.values()):,} training tokens")
    need = zp.spec.seq_len + 2
    for st in zp.stages:
        for dom, w in st.mixture.items():
            if w > 0 and (dom not in streams or len(streams[dom]) < need):
                raise ZooError(f"not enough training text for domain {dom!r} (stage {st.name}); "
                               "the standard library looks incomplete")

    # models. Specialists start from the saved (fp16-rounded) base, so their task vectors are exactly
    # relative to the shipped base.
    models_dir = tmp / "models"
    model = new_model(zp.spec, seed=seed, bos_id=eot, eos_id=eot, pad_id=pad)
    n_params = sum(p.numel() for p in model.parameters())
    keys = stage_keys(zp, size=size, seed=seed, tokenizer_json=raw_tok.to_str(), streams=streams)

    def run(model, st: Stage, k: int) -> None:
        task = pr.task(st.name, st.steps(zp.spec.seq_len))
        t0 = time.perf_counter()

        def cb(step, steps, loss, toks):
            if step % 5 == 0 or step == steps:
                rate = toks / max(1e-9, time.perf_counter() - t0)
                pr.update(task, step, f"loss {loss:.3f}  {rate / 1000:.1f}k tok/s")

        res = train_stage(model, streams, st, seed=seed * 1000 + k, on_step=cb)
        pr.log(f"{st.name}: {res['steps']} steps, {res['tokens']:,} tokens, train loss {res['final_loss']:.3f}, "
               f"{res['seconds']:.0f} s ({res['tokens'] / max(1e-9, res['seconds']) / 1000:.1f}k tok/s)")

    for k, st in enumerate(zp.stages):
        cached = cache / f"{st.name}-{keys[st.name]}" / "model.safetensors" if cache is not None else None
        if st.name != "base":
            model.load_state_dict(base_state)
        if cached is not None and cached.is_file():
            from safetensors.torch import load_file

            sd = load_file(str(cached))
            model.load_state_dict({n: v.float() for n, v in sd.items()}, strict=False)
            pr.log(f"{st.name}: from cache {cached.parent}")
        else:
            run(model, st, k)
        _save(model, hf_tok, models_dir / st.name)
        if cached is not None and not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(models_dir / st.name / "model.safetensors", cached.with_suffix(".tmp"))
            os.replace(cached.with_suffix(".tmp"), cached)
        if st.name == "base":
            base_state = {n: v.detach().half().float() for n, v in model.state_dict().items()}

    # LoRA specialists on the saved base (automerge/zoo/lora.py): a stage after all the full models
    from automerge.zoo.lora import build_adapters, lora_plan

    mix = {st.name: st.mixture for st in zp.stages}
    lora_summary = build_adapters(models_dir, streams, lora_plan(size, code_mix=mix["code"], lang_mix=mix["lang"]),
                                  seed=seed, log=pr.log)

    # quick held-out losses of the saved (fp16) models, stored as fp32 for scoring
    t = pr.task("eval", len(MODEL_NAMES))
    quick: dict[str, dict[str, float]] = {}
    for i, name in enumerate(MODEL_NAMES):
        m = card.load_model(models_dir / name)
        quick[name] = {}
        for dom in ("code", "prose", "tests"):
            ids = card.domain_stream(hf_tok, [r.text for r in corpus.heldout[dom]], eot, zp.eval_tokens)
            quick[name][dom] = round(stream_loss(m, ids, seq_len=zp.spec.seq_len), 4)
        pr.update(t, i + 1, name)

    (tmp / "data" / "DATA_CARD.md").write_text(_data_card(corpus, data_sizes, size), encoding="utf-8")
    train_tokens = {dom: int(len(s)) for dom, s in sorted(streams.items())}
    return {
        "size": size, "seed": seed, "versions": _versions(), "threads": torch.get_num_threads(),
        "model": asdict(zp.spec), "parameters": n_params,
        "tokenizer": {"type": "byte-level BPE", "vocab_size": raw_tok.get_vocab_size(),
                      "special_tokens": {T.EOT: eot, T.PAD: pad}, "bos=eos": T.EOT,
                      "trained_on_chars": tok_chars},
        "corpus": {"info": corpus.info,
                   "train_documents": {k: len(v) for k, v in sorted(corpus.train.items())},
                   "train_chars": {k: sum(map(len, v)) for k, v in sorted(corpus.train.items())},
                   "train_tokens": train_tokens},
        "data_files": data_sizes,
        "stages": {st.name: {**st.to_json(), "steps": st.steps(zp.spec.seq_len),
                             "tokens_trained": st.steps(zp.spec.seq_len) * st.batch_size * zp.spec.seq_len,
                             "init": "random (seeded)" if st.name == "base" else "base (fp16 weights as shipped)"}
                   for st in zp.stages},
        "heldout_loss_quick": {"tokens_per_domain": zp.eval_tokens, "loss": quick},
        "lora": lora_summary,
    }


def tokenize(corpus: C.Corpus, zp: ZooPlan):
    """Train the tokenizer on (a stride of) the training texts; encode every training domain into one
    stream, documents in corpus order separated by <|endoftext|>. Returns (tokenizer, streams, chars)."""
    import torch

    from automerge.zoo import tokenizer as T

    tok_texts = [x for dom, n in zp.tokenizer_stride.items() for x in corpus.train[dom][::n]]
    raw_tok = T.train_tokenizer(tok_texts, zp.vocab_size)
    eot = raw_tok.token_to_id(T.EOT)
    streams: dict[str, torch.Tensor] = {}
    for dom, texts in sorted(corpus.train.items()):
        if texts:
            ids: list[int] = []
            for enc in raw_tok.encode_batch(texts, add_special_tokens=False):
                ids.extend(enc.ids)
                ids.append(eot)
            streams[dom] = torch.tensor(ids, dtype=torch.long)
    return raw_tok, streams, sum(map(len, tok_texts))


def stage_keys(zp: ZooPlan, *, size: str, seed: int, tokenizer_json: str, streams) -> dict[str, str]:
    """Cache key of every stage: a hash of everything its weights depend on (plan settings, seed,
    tokenizer, library versions, threads, its parent's key, and the token streams of the domains its
    mixture reads -- so changing one domain's text retrains only the stages that read it)."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"size": size, "seed": seed, "spec": asdict(zp.spec), "threads": torch.get_num_threads(),
                         "versions": _versions()}, sort_keys=True).encode())
    h.update(tokenizer_json.encode())
    root = h.hexdigest()
    keys: dict[str, str] = {}
    for k, st in enumerate(zp.stages):
        parent = None if k == 0 else keys[zp.stages[0].name]
        hs = hashlib.sha256(json.dumps({"root": root, "parent": parent, "stage": st.to_json(), "k": k},
                                       sort_keys=True).encode())
        for dom in sorted(d for d, w in st.mixture.items() if w > 0):
            hs.update(dom.encode())
            hs.update(streams[dom].numpy().tobytes())
        keys[st.name] = hs.hexdigest()[:20]
    return keys


def _save(model, hf_tok, path: Path) -> None:
    import torch

    path.mkdir(parents=True)
    half = model.to(torch.float16)
    half.config.dtype = torch.float16
    half.save_pretrained(str(path))
    hf_tok.save_pretrained(str(path))
    # transformers 5 writes its own class name ("TokenizersBackend"); the generic fast class loads in 4.x too
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    model.to(torch.float32)


def _data_card(corpus: C.Corpus, sizes: dict, size: str) -> str:
    lines = [
        f"# Demo zoo data card ({size} build)",
        "",
        "Evaluation data of the automerge demo zoo. None of it was seen by any model in training.",
        "",
        "## Sources and licences",
        "",
        f"- **code**: CPython {corpus.info['python']} standard library `.py` files that are not tests, as found "
        "(comments and docstrings kept). Python Software Foundation License.",
        "- **tests**: the standard library's test modules (`test_*.py`), as found. PSF License.",
        ("- **prose**: the Python documentation's reST sources (Debian `python3.X-doc`, "
         "`/usr/share/doc/python3.X/html/_sources`) cleaned to plain prose (markup, code, doctest blocks and "
         "tables dropped). PSF License." if size == "full" else
         "- **prose**: `pydoc_data.topics` (the language reference topics, plain text). PSF License."),
        "- **docstrings / generation / summarisation**: derived from the held-out code files (below).",
        "- **external**: third-party packages found in site-packages (never trained on): `.py` source as "
        "found, module docstrings, and README text from the package metadata (`METADATA` description):",
        "",
        "| package | version | licence | code files | doc records |",
        "|---|---|---|---|---|",
    ]
    for p in corpus.provenance:
        lines.append(f"| {p['package']} | {p['version']} | {p['licence']} | {p['code_files']} | {p['doc_records']} |")
    lines += [
        "",
        "## Split rule",
        "",
        "By file: a file (source name such as `Lib/json/decoder.py` or `Doc/library/json.rst`) is held out when "
        "`int.from_bytes(sha256(source)[:8], 'big') % 10 == 0` (about 1 in 10; `automerge.zoo.corpus.is_heldout`). "
        "Held-out files are excluded from the tokenizer, the base and every specialist; docstrings and function "
        "pairs are derived only from held-out code files. Files over 120 kB (tests: 80 kB) are skipped everywhere.",
        "",
        "## Files (JSONL, one record per line)",
        "",
        "- `heldout/{code,tests,prose}.jsonl`, `heldout/docstrings.jsonl`, `external/{code,prose}.jsonl`: "
        "`{\"id\", \"source\", \"text\"}` (external records add `package` and `licence`). One record per source "
        "file; docstrings: all docstrings of one held-out code file joined by blank lines.",
        "- `heldout/generation.jsonl`: `{\"id\", \"source\", \"prompt\", \"target\"}`; prompt = a function's "
        "`def` header + docstring (ends at the closing quotes), target = the rest of the body (starts with "
        "`\\n`). Score the target tokens only.",
        "- `heldout/summarisation.jsonl`: same fields; prompt = the function without its docstring followed by "
        "`# Summary:`, target = ` ` + the docstring's first paragraph on one line + `\\n`.",
        "",
        "| file | records | bytes |",
        "|---|---|---|",
    ]
    for k, v in sorted(sizes.items()):
        lines.append(f"| {k} | {v['records']} | {v['bytes']:,} |")
    lines.append("")
    return "\n".join(lines)
