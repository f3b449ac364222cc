"""Merge engine benchmark: per-trial apply time vs the streaming bound and vs mergekit.

    python bench/merge_bench.py                 # Qwen2.5-0.5B shapes, 2 specialists, CPU
    python bench/merge_bench.py --device cuda --dtype bfloat16 --layers 48   # on a GPU

Builds random-weight checkpoints with Qwen2.5-0.5B's shapes (tied embeddings, 24 layers,
hidden 896, MLP 4864, vocab 151936) in a scratch directory, then for each method measures:
- apply: ResidentMerger.apply(recipe), median of several runs after one warm-up (caches filled);
- bound: in the same run, on the same resident tensors, reading base and every task vector once
  and writing the output once (copy + sum) — the memory-bandwidth floor for any merge;
- mergekit: run_merge in-process on the same recipe (reads the checkpoints, writes the output:
  what every trial costs without a resident engine).
The table goes into results/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

from automerge.engine import ResidentMerger  # noqa: E402
from automerge.recipe import Recipe  # noqa: E402

TARGETS = {"linear": 1.3, "task_arithmetic": 1.3, "ties": 2.0, "dare_ties": 3.0}


def build_checkpoints(root: Path, *, layers: int, dtype: torch.dtype) -> dict[str, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import make_tokenizer

    config = Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=layers, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    )
    paths = {}
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, name in enumerate(["base", "code", "lang"]):
        out = root / name
        if i:
            gen = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for k, p in model.state_dict().items():
                    p.copy_(base_state[k] + 0.01 * torch.randn(p.shape, generator=gen) * base_state[k].std())
        model.to(dtype).save_pretrained(out)
        model.to(torch.float32)
        make_tokenizer(out)
        paths[name] = out
    return paths


def recipe_for(method: str, paths: dict[str, Path], seed: int = 0) -> Recipe:
    density = {"ties": 0.5, "dare_ties": 0.5}.get(method)
    models = []
    for name, weight in (("code", 0.6), ("lang", 0.4)):
        params = {"weight": weight}
        if density is not None:
            params["density"] = density
        models.append({"name": name, "path": str(paths[name]), "parameters": params})
    return Recipe.from_dict(dict(method=method, base=str(paths["base"]), models=models, seed=seed,
                                 parameters={"lambda": 1.0} if method != "linear" else {}))


def time_it(fn, repeats: int) -> float:
    fn()  # warm-up: fills caches (thresholds, noise) as the first trial of a search does
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def streaming_bound(merger: ResidentMerger) -> None:
    with torch.no_grad():
        for t in merger.tensors:
            t.param.copy_(t.base)
            for i in range(t.deltas.shape[0]):
                t.deltas[i].sum()


def mergekit_time(recipe: Recipe, merger: ResidentMerger, device: str) -> float:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = recipe.to_mergekit(merger.tensor_names, merger.grouping(recipe))
    out = Path(tempfile.mkdtemp(prefix="mergekit-bench-"))
    try:
        start = time.perf_counter()
        run_merge(MergeConfiguration.model_validate(config), str(out / "m"),
                  options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                       cuda=device.startswith("cuda"), random_seed=0))
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="resident dtype for base and task vectors")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,dare_ties")
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep checkpoints here between runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    root = Path(args.workdir or tempfile.mkdtemp(prefix="merge-bench-"))
    if not (root / "lang" / "config.json").exists():
        print(f"building checkpoints in {root} ...", flush=True)
        paths = build_checkpoints(root, layers=args.layers, dtype=torch.bfloat16)
    else:
        paths = {n: root / n for n in ("base", "code", "lang")}
    start = time.perf_counter()
    merger = ResidentMerger(base=paths["base"], specialists={"code": paths["code"], "lang": paths["lang"]},
                            device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - start
    n_params = sum(t.base.numel() for t in merger.tensors)
    bound = time_it(lambda: streaming_bound(merger), args.repeats)
    rows = []
    for method in args.methods.split(","):
        recipe = recipe_for(method, paths)
        start = time.perf_counter()
        merger.apply(recipe)  # first apply: fills the caches this method needs
        first = time.perf_counter() - start
        apply_s = time_it(lambda: merger.apply(recipe), args.repeats)
        mk = None if args.no_mergekit else mergekit_time(recipe, merger, str(merger.device))
        rows.append((method, first, apply_s, mk))
        print(f"{method}: first {first:.2f}s, apply {apply_s:.3f}s, bound {bound:.3f}s, "
              f"mergekit {mk if mk is None else round(mk, 2)}s", flush=True)

    lines = [
        "## Merge engine (`bench/merge_bench.py`)",
        "",
        f"Machine: {machine()}.",
        f"Checkpoints: random weights with Qwen2.5-0.5B shapes ({args.layers} layers, {n_params / 1e6:.0f}M "
        f"parameters, tied embeddings, stored bf16), 2 specialists; resident dtype {args.dtype} on "
        f"{merger.device}. One-off load (base + task vectors): {load_s:.1f} s. Streaming bound (read base "
        f"and both task vectors once, write the output once): {bound:.3f} s.",
        "",
        "| method | first apply (fills caches) s | apply s (median) | × bound | target × bound | mergekit run_merge s | mergekit ÷ apply |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, first, apply_s, mk in rows:
        ratio = apply_s / bound
        target = TARGETS.get(method)
        verdict = "" if target is None else (f"≤ {target} {'✓' if ratio <= target else '✗'}")
        mk_cell = "–" if mk is None else f"{mk:.1f}"
        speed = "–" if mk is None else f"{mk / apply_s:.0f}× {'✓' if mk / apply_s >= 20 else '✗'} (target ≥ 20×)"
        lines.append(f"| {method} | {first:.2f} | {apply_s:.3f} | {ratio:.2f} | {verdict} | {mk_cell} | {speed} |")
    section = "merge-" + ("gpu" if merger.device.type == "cuda" else "cpu")
    path = write_section(section, "\n".join(lines))
    print("\n".join(lines))
    print(f"written to {path}")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
