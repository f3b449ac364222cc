"""Fisher-weighted merging vs linear and TIES on the demo zoo (quality; the README's figures).

    taskset -c 0 python bench/fisher_bench.py [--max-tokens 8192] [--write]

Each specialist's Fisher is estimated as a search does by default (`automerge.search.fisher`):
on the demo space's proxy items of its domain (code_body_ll for zoo:code, prose_ll for zoo:lang),
taken from the end of the evaluation order. The merges are the search's baselines plus Fisher at
the same weights: linear 0.5/0.5, TIES density 0.5 (λ = 1, weights 1/1) and Fisher (weights 1/1).
Every model is scored, in nats per token (higher is better), on
* the first items of code_body_ll and prose_ll in evaluation order, up to the first one the
  estimate read (the estimate reads from the end of that order);
* every item of ext_code_body_ll and ext_prose_ll — third-party code and docs, out of distribution.
The figures are deterministic (no sampling); the seconds depend on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IN_DOMAIN = {"code": "code_body_ll", "nl": "prose_ll"}
OOD = ("ext_code_body_ll", "ext_prose_ll")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--write", action="store_true", help="also write the section into results/BENCHMARKS.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from automerge.checkpoints import resolve_model_path
    from automerge.engine import ResidentMerger
    from automerge.eval import Evaluator
    from automerge.eval import _tasks
    from automerge.fisher import _examples, cached_fisher
    from automerge.recipe import ModelSpec, Recipe
    from automerge.search.fisher import proxy_texts
    from automerge.search.space import SearchSpace

    space = SearchSpace.load(Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("zoo:base"))
    files, seconds, held = {}, {}, {}
    with tempfile.TemporaryDirectory() as cache:
        for s in space.specialists:
            texts = proxy_texts(space, s)
            seen = set()
            used = sum(len(c) for c in _examples(tok, texts, seq_len=a.seq_len, max_tokens=a.max_tokens))
            for t in texts:  # which items the estimate read (the first ones, up to max_tokens)
                if used <= 0:
                    break
                seen.add(t)
                used -= len(tok(t)["input_ids"])
            task = IN_DOMAIN[s.domain]
            items = _tasks.ordered(_tasks.load_items(task), task, space.seed)
            held[task] = next((i for i, it in enumerate(items) if it["context"] + it["continuation"] in seen),
                              len(items))  # the first items, up to the first one the estimate read
            t0 = time.perf_counter()
            files[s.name] = cached_fisher(s.path, texts, cache_dir=cache, max_tokens=a.max_tokens, seq_len=a.seq_len)
            seconds[s.name] = time.perf_counter() - t0
            print(f"Fisher of {s.name}: {len(seen)} of {len(items)} items of {task}, {seconds[s.name]:.1f}s; "
                  f"the first {held[task]} unseen", flush=True)

        merger = ResidentMerger(base="zoo:base", specialists={"code": "zoo:code", "lang": "zoo:lang"}, device="cpu",
                                fisher=files)
        ev = Evaluator(tokenizer=merger.tokenizer, device="cpu", seed=space.seed)

        def recipe(method: str, weights: dict[str, float], extra_model: dict | None = None, **params) -> Recipe:
            return Recipe(method=method, base="zoo:base", parameters=params, models=[
                ModelSpec(name=n, path=f"zoo:{n}", parameters={"weight": w, **(extra_model or {})})
                for n, w in weights.items()])

        rows = {
            "code alone": recipe("task_arithmetic", {"code": 1.0, "lang": 0.0}),
            "lang alone": recipe("task_arithmetic", {"code": 0.0, "lang": 1.0}),
            "linear 0.5/0.5": recipe("linear", {"code": 1.0, "lang": 1.0}, normalize=True),
            "TIES density 0.5": recipe("ties", {"code": 1.0, "lang": 1.0}, {"density": 0.5}, **{"lambda": 1.0}),
            "Fisher 1/1": recipe("fisher", {"code": 1.0, "lang": 1.0}),
        }
        cols = [f"{t} (first {held[t]}, unseen)" for t in IN_DOMAIN.values()] + [f"{t} (all)" for t in OOD]
        table = []
        for label, r in rows.items():
            merger.apply(r)
            vals = [ev.run(merger.model, [t], limit=held[t])[t].metrics["ll_per_token"] for t in IN_DOMAIN.values()]
            ood = ev.run(merger.model, list(OOD), limit=None)
            vals += [ood[t].metrics["ll_per_token"] for t in OOD]
            table.append((label, vals))
            print(label, " ".join(f"{v:.4f}" for v in vals), flush=True)

    load = os.getloadavg()
    lines = [f"Demo zoo, nats per token (higher is better); Fisher estimated on {a.max_tokens} tokens of each "
             f"specialist's proxy items (seq_len {a.seq_len}): code {seconds['code']:.1f}s, lang {seconds['lang']:.1f}s "
             f"(1 thread, load average {load[0]:.1f}).", "",
             "| merge | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " |" for label, vals in table]
    text = "\n".join(lines)
    print("\n" + text)
    if a.write:
        from bench._report import machine, write_section

        write_section("fisher_bench", f"## Fisher vs linear and TIES on the demo zoo (bench/fisher_bench.py)\n\n"
                                      f"{machine()}\n\n{text}\n")


if __name__ == "__main__":
    main()
