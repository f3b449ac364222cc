"""Evaluation benchmark (not a test): proxy scoring speed, lm-eval comparison, sandbox throughput.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python bench/eval_bench.py [--model zoo:base]

1. Proxy scoring throughput: automerge's scorer (``score_plan``: forward + log-softmax of the
   scored positions + per-request sums) against a raw forward pass (``model(input_ids).logits``)
   over the very same batches, in tokens/s. Target: ≥ 90 % of the raw forward.
2. Wall time of one evaluation of the proxy tasks against lm-eval's ``simple_evaluate`` on the
   same items (each proxy exported as an lm-eval YAML task; what a search would pay per trial if
   it called simple_evaluate). Target: ≥ 3× faster.
3. HumanEval sandbox throughput: the 164 canonical solutions run in the sandbox (programs/s; all
   must pass).

Timings are the minimum over ``--repeats`` interleaved runs (the machine may be shared). On a
machine without the built zoo, ``--model`` falls back to a randomly initialised model of the zoo's
exact shape with a 4096-token BPE trained on the held-out split (speed depends only on shape and
tokenisation) and says so. Writes its section of ``results/BENCHMARKS.md``.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path
_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _report import RESULTS, machine, write_section  # noqa: E402

import argparse
import atexit
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
if "HF_DATASETS_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="automerge-bench-hfds-")
    os.environ["HF_DATASETS_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_model(spec: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from automerge.eval.cli import _resolve

    from automerge.errors import AutomergeError

    try:
        p = _resolve(spec)
    except AutomergeError:
        p = Path("/nonexistent")
    if (p / "config.json").is_file():
        m = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        return m, AutoTokenizer.from_pretrained(str(p)), f"{spec} ({p})"
    # fallback: the zoo's exact shape, random weights, a tokenizer trained on the held-out split
    import json

    from automerge.zoo.build import plan
    from automerge.zoo.tokenizer import to_transformers, train_tokenizer

    zp = plan("full")
    texts = []
    for f in ("code", "prose", "tests"):
        path = ROOT / "automerge/zoo/data/heldout" / f"{f}.jsonl"
        texts += [json.loads(line)["text"] for line in path.open()]
    tok = to_transformers(train_tokenizer(texts, zp.vocab_size), zp.spec.seq_len)
    torch.manual_seed(0)
    cfg = zp.spec.config(bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    n = sum(p.numel() for p in m.parameters())
    return m, tok, (f"{spec} not built: random-init model of the zoo's shape ({n / 1e6:.2f}M params, vocab "
                    f"{zp.vocab_size}, {zp.spec.num_layers} layers, hidden {zp.spec.hidden_size}, seq "
                    f"{zp.spec.seq_len}) + BPE trained on the held-out split")


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Minimum wall time of each callable, interleaved across repeats."""
    out = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[k] = min(out[k], time.perf_counter() - t)
    return out


def bench_scorer(model, tok, limits, batch_tokens, repeats):
    from automerge.eval import PROXY_TASKS, Evaluator
    from automerge.eval._scorer import score_plan

    tasks = list(PROXY_TASKS)
    rows = []
    for bt in batch_tokens:
        ev = Evaluator(tokenizer=tok, device="cpu", batch_tokens=bt)
        for lim in limits:
            ev.run(model, tasks, limit=lim)                       # builds and caches the plan
            pp = ev._pooled_plan(model, tasks, lim)
            plan = pp.plan

            def raw(plan=plan):
                with torch.inference_mode():
                    for b in plan.batches:
                        if b.tree_mask is not None:
                            model(input_ids=b.input_ids, attention_mask=b.mask_for(model, torch.float32),
                                  position_ids=b.position_ids, use_cache=False).logits
                        else:
                            model(input_ids=b.input_ids, use_cache=False).logits

            t = best_of({"ours": lambda plan=plan: score_plan(model, plan), "raw": raw,
                         "run": lambda lim=lim, ev=ev: ev.run(model, tasks, limit=lim)},
                        repeats if lim is not None else min(repeats, 2))
            toks = plan.n_input_tokens
            padded = sum(b.input_ids.numel() for b in plan.batches)
            rows.append({"batch_tokens": bt, "limit": lim if lim is not None else "all", "tokens": toks,
                         "requests": plan.n_request_tokens,
                         "padded": padded, "batches": len(plan.batches), "scored": int(plan.cont_lengths.sum()),
                         "ours_tps": toks / t["ours"], "raw_tps": toks / t["raw"], "ratio": t["raw"] / t["ours"],
                         "run_s": t["run"]})
            print(rows[-1], flush=True)
    return rows


def bench_lm_eval(model, tok, limit, repeats, lm_eval_batch_sizes):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from automerge.eval import PROXY_TASKS, Evaluator
    from automerge.eval._lm_eval import export_lm_eval_task

    tasks = list(PROXY_TASKS)
    d = Path(tempfile.mkdtemp(prefix="automerge-bench-lmeval-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    for t in tasks:
        export_lm_eval_task(t, d, limit=limit)
    names = [f"automerge_{t}" for t in tasks]
    ev = Evaluator(tokenizer=tok, device="cpu")
    ev.run(model, tasks, limit=limit)
    cwd = os.getcwd()
    os.chdir(d)                       # lm-eval resolves relative data_files against the cwd
    res = {}
    try:
        tm = TaskManager(include_defaults=False, include_path=str(d))
        lms = {bs: HFLM(pretrained=model, tokenizer=tok, batch_size=bs) for bs in lm_eval_batch_sizes}
        outs = {}

        def se(bs):
            outs[bs] = simple_evaluate(model=lms[bs], tasks=names, task_manager=tm, log_samples=False,
                                       bootstrap_iters=0, verbosity="ERROR")
        for bs in lm_eval_batch_sizes:
            se(bs)                    # warm-up: datasets -> arrow, imports
        fns = {"automerge": lambda: ev.run(model, tasks, limit=limit)}
        fns.update({f"lm_eval_bs{bs}": (lambda bs=bs: se(bs)) for bs in lm_eval_batch_sizes})
        res = best_of(fns, repeats)
    finally:
        os.chdir(cwd)
    ours = ev.run(model, tasks, limit=limit)
    agree = []
    r0 = outs[lm_eval_batch_sizes[0]]["results"]
    for t in tasks:
        if PROXY_TASKS[t].kind == "mc":
            agree.append(abs(r0[f"automerge_{t}"]["acc,none"] - ours[t].metrics["acc"]) < 1e-9)
    return res, all(agree), len(agree)


def bench_sandbox(workers_list):
    from automerge.eval import Sandbox, sandbox_info
    from automerge.eval._humaneval import load_problems, run_humaneval

    probs = load_problems()
    rows = []
    for w in workers_list:
        sb = Sandbox(workers=w)
        t = time.perf_counter()
        rep = run_humaneval(lambda ps: [p["canonical_solution"] for p in probs], problems=probs, sandbox=sb)
        el = time.perf_counter() - t
        rows.append({"workers": w, "programs": rep.n, "passed": int(round(rep.pass_at_1 * rep.n)), "seconds": el,
                     "per_s": rep.n / el})
        print(rows[-1], flush=True)
    return rows, sandbox_info()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:base")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--limits", default="16,64,all", help="proxy limits to time (comma list; 'all' = full sets)")
    ap.add_argument("--batch-tokens", default="2048,8192")
    ap.add_argument("--lm-eval-limits", default="16,64")
    ap.add_argument("--lm-eval-batch-sizes", default="1,16")
    ap.add_argument("--sandbox-workers", default="1,2")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    model, tok, model_desc = load_model(args.model)
    print(model_desc, flush=True)
    limits = [None if x == "all" else int(x) for x in args.limits.split(",")]
    sc = bench_scorer(model, tok, limits, [int(x) for x in args.batch_tokens.split(",")], args.repeats)
    bss = [int(x) for x in args.lm_eval_batch_sizes.split(",")]
    les = []
    for lim in [int(x) for x in args.lm_eval_limits.split(",")]:
        le, agree, n_mc = bench_lm_eval(model, tok, lim, max(2, args.repeats // 2), bss)
        print(lim, le, agree, flush=True)
        les.append((lim, le, agree, n_mc))
    sb, info = bench_sandbox([int(x) for x in args.sandbox_workers.split(",")])
    load1 = os.getloadavg()

    lines = [
        "## Evaluation (bench/eval_bench.py)",
        "",
        f"- Date: {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine()}",
        f"- Load average at start / end: {load0[0]:.1f} / {load1[0]:.1f} (shared machine: every figure is the "
        f"minimum of {args.repeats} interleaved runs, 2 for the full sets)",
        f"- Model: {model_desc}",
        "",
        "### Proxy scoring vs a raw forward pass over the same batches (1 CPU thread)",
        "",
        "All 10 proxy tasks pooled into one plan (length buckets, multiple-choice items as prefix tries). "
        "*ours* = `score_plan` (forward, LM head on the scored positions only, log-softmax, per-request "
        "sums); *raw* = `model(input_ids).logits` (plus the tree mask and position ids where a row is packed) "
        "on the same batches. *tokens* = tokens the model reads (pads excluded) after prefix sharing; "
        "*requests* = the same without sharing; *run* = one `Evaluator.run` (all 10 tasks, metrics included).",
        "",
        "| batch_tokens | limit | requests | tokens | padded | batches | scored | ours tok/s | raw tok/s | ours ÷ raw | Evaluator.run s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sc:
        lines.append(f"| {r['batch_tokens']} | {r['limit']} | {r['requests']} | {r['tokens']} | {r['padded']} | "
                     f"{r['batches']} | {r['scored']} | {r['ours_tps']:,.0f} | {r['raw_tps']:,.0f} | "
                     f"{100 * r['ratio']:.0f} % | {r['run_s']:.2f} |")
    lines += [
        "",
        "### One evaluation of the 10 proxy tasks: automerge vs lm-eval `simple_evaluate` on the same items",
        "",
        "Each proxy exported with `export_lm_eval_task` (first *limit* items of the fixed order), same live "
        "model object; lm-eval through one `HFLM(pretrained=model)`, `simple_evaluate` called per evaluation "
        "as a search would have to (warm: datasets already converted); automerge: `Evaluator.run` with its "
        "defaults.",
        "",
        "| limit | automerge s | " + " | ".join(f"lm-eval bs={bs} s" for bs in bss) + " | speed-up vs fastest lm-eval | MC accuracies identical |",
        "|---:|---:|" + "---:|" * len(bss) + "---:|---|",
    ]
    for lim, le, agree, n_mc in les:
        best_le = min(le[f"lm_eval_bs{bs}"] for bs in bss)
        lines.append(f"| {lim} | {le['automerge']:.2f} | " + " | ".join(f"{le[f'lm_eval_bs{bs}']:.2f}" for bs in bss)
                     + f" | {best_le / le['automerge']:.1f}× | {'yes' if agree else 'NO'} ({n_mc} tasks) |")
    lines += [
        "",
        "Where the time goes (1.6M-parameter model, 1 thread): the forward pass is compute-bound (matmuls "
        "≈ 56 %, attention ≈ 16 %, log-softmax ≈ 11 % of `score_plan` in a torch profile), so the speed-up over "
        "lm-eval is the work automerge does not do: prefix sharing reads "
        f"{sc[0]['tokens'] / sc[0]['requests']:.0%} of the request tokens, the LM head and the log-softmax "
        "run on the scored positions only, and there is no per-call set-up (environment report, task and "
        "request building, dataset loading). lm-eval with batch_size=16 is already close to the FLOP floor of "
        "the tokens it reads, so on this model the gap stays near 2×; it grows with the share of shared "
        "context (few-shot prompts, long code contexts) and with smaller rungs, where lm-eval's fixed cost "
        "dominates.",
        "",
        "### HumanEval sandbox throughput (164 canonical solutions)",
        "",
        f"Sandbox: backend {info['backend']} (network: {info['network']}; processes: {info['processes']}), "
        f"user {info['user']}, child python {info['python']}, limits {info['limits']}; tests run in a driver "
        "outside the sandbox.",
        "",
        "| workers | programs | passed | seconds | programs/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in sb:
        lines.append(f"| {r['workers']} | {r['programs']} | {r['passed']} | {r['seconds']:.2f} | {r['per_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    if args.out.resolve() == RESULTS.resolve():
        write_section("eval", text)  # the section of results/BENCHMARKS.md
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
