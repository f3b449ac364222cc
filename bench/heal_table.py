"""The README's healing table: how much of the gap between a merge and each specialist a short
heal on zoo:mix closes, per number of steps, next to the data-mix model.

    automerge export demo-sample --pick knee --model /tmp/knee --device cpu
    python bench/heal_table.py /tmp/knee --steps 50 100 200

Held-out loss (nats/token) on the zoo's held-out code and prose (never trained on, healing
data included); gap closed on a domain = (merge − healed) / (merge − that domain's specialist).
Each step count is its own run (its own cosine schedule). Timings depend on the load: this
prints the loss table only, and the seconds as a note.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def heldout_loss(model_dir: Path, domain: str, *, windows: int, seq_len: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automerge.heal import _loss, _windows

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [json.loads(line)["text"] for line in (ROOT / "automerge/zoo/data/heldout" / f"{domain}.jsonl")
             .read_text().splitlines() if line.strip()]
    w = _windows(tok, texts, seq_len)
    w = w[torch.linspace(0, len(w) - 1, min(windows, len(w))).long()]  # spread over the file, not its start
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return _loss(model, w, torch.device("cpu"), 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("merged", type=Path, help="the merged model to heal (e.g. the demo study's knee)")
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lora", type=int, default=None, help="heal with a LoRA of this rank")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=64, help="held-out windows per domain")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from automerge.checkpoints import resolve_model_path
    from automerge.heal import heal
    from automerge.heal_cli import zoo_mix_texts

    domains = {"code": "code", "prose": "lang"}  # held-out domain -> its specialist
    def loss(model_dir: Path) -> dict[str, float]:
        return {dom: heldout_loss(model_dir, dom, windows=args.windows, seq_len=args.seq_len) for dom in domains}

    rows = {name: loss(resolve_model_path(f"zoo:{name}")) for name in ("code", "lang", "mix")}
    rows["merge"] = loss(args.merged)
    texts = zoo_mix_texts()
    gap = lambda r, dom: (rows["merge"][dom] - r[dom]) / (rows["merge"][dom] - rows[domains[dom]][dom])  # noqa: E731

    def show(name: str) -> None:
        r = rows[name]
        closed = [f"{gap(r, dom):+.0%}" if name not in ("code", "lang") else "" for dom in domains]
        print(f"| {name} | {r['code']:.3f} | {r['prose']:.3f} | {closed[0]} | {closed[1]} |", flush=True)

    print(f"healing: {'LoRA rank ' + str(args.lora) if args.lora else 'full'} fine-tune, lr "
          f"{args.lr or ('1e-3' if args.lora else '1e-4')}, batch {args.batch_size}×{args.seq_len} tokens, zoo:mix "
          f"({len(texts)} texts)\n")
    print("| model | code loss | prose loss | code gap closed | prose gap closed |")
    print("|---|---:|---:|---:|---:|")
    for name in rows:
        show(name)
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.steps:
            t0 = time.perf_counter()
            res = heal(args.merged, texts, out=Path(tmp) / f"h{steps}", steps=steps, lr=args.lr,
                       lora_rank=args.lora, batch_size=args.batch_size, seq_len=args.seq_len, device="cpu")
            name = f"merge + heal {steps}"
            rows[name] = loss(res.out)
            show(name)
            print(f"  ({steps} steps: {res.tokens:,} tokens, loss on the healing data {res.loss_before:.3f} → "
                  f"{res.loss_after:.3f}, {time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
