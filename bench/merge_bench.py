"""Merge engine benchmark: per-trial apply time vs the streaming bound and vs mergekit.

    python bench/merge_bench.py                 # Qwen2.5-0.5B shapes, 2 specialists, CPU
    python bench/merge_bench.py --device cuda --dtype bfloat16 --shape 7b --no-mergekit   # on a GPU
    python bench/merge_bench.py --one-off       # `automerge merge` vs `mergekit-yaml`, whole processes

Builds random-weight checkpoints with Qwen2.5-0.5B's shapes (tied embeddings, 24 layers,
hidden 896, MLP 4864, vocab 151936) in a scratch directory, then for each method measures:
- load: ResidentMerger's constructor (transformers imported before), against reading the three
  checkpoints' files (page cache as it is) — target ≤ 1.5×;
- apply: ResidentMerger.apply(recipe), median of several runs after one warm-up (caches filled);
  from a method's second apply on the engine runs its compiled kernel (methods/_compiled.py),
  so the second apply pays the compile ("compile" column; AUTOMERGE_COMPILE=0: eager kernels);
- first apply ÷ apply: what the statistics a method fills on its first trial cost (TIES: the
  magnitude thresholds, by selection; DARE: the noise), target ≤ 3× for TIES;
- copy bandwidth: the device's own measured copy rate (read + write bytes / s), and the time
  the bytes one merge must move (read base and every task vector, write the output) take at it;
- bound: in the same run, on the same resident tensors, reading base and every task vector once
  and writing the output once (copy + sum) — the memory-bandwidth floor for any merge;
- mergekit: run_merge in-process on the same recipe (reads the checkpoints, writes the output:
  what every trial costs without a resident engine).
With --one-off it measures instead the one-off merge users run first: `automerge merge` (streamed)
and `mergekit-yaml` as whole processes on the same recipe (bf16 out, the same mergekit YAML that
`Recipe.to_mergekit` exports), each under /usr/bin/time -v: wall time (process start, imports,
reading, merging, writing) and peak RSS.
The table goes into results/BENCHMARKS.md (not with --no-write); --json writes the figures too,
after each method, so a run cut short by a timeout (bench/gpu_check.sh) keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

from automerge.engine import ResidentMerger  # noqa: E402
from automerge.recipe import Recipe  # noqa: E402

TARGETS = {"linear": 1.2, "task_arithmetic": 1.2, "ties": 2.0, "dare_ties": 3.0}
LOAD_TARGET = 1.5  # load ÷ reading the checkpoints
FIRST_TARGETS = {"ties": 3.0}  # first apply ÷ steady apply
ONE_OFF_TARGETS = {"linear": 2.0, "ties": 4.0}  # mergekit-yaml wall ÷ automerge merge wall (issue 14)
# Qwen2.5 shapes: 0.5b (tied embeddings) and 7b; --layers/--hidden/... override one field.
SHAPES = {
    "0.5b": dict(layers=24, hidden=896, intermediate=4864, heads=14, kv_heads=2, vocab=151936, tied=True),
    "7b": dict(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064, tied=False),
    "tiny": dict(layers=2, hidden=128, intermediate=352, heads=4, kv_heads=2, vocab=4096, tied=False),
}
SHARD_BYTES = 4 << 30


def build_checkpoints(root: Path, *, shape: dict, dtype: torch.dtype, device: str = "cpu") -> dict[str, Path]:
    """Random-weight Qwen2 checkpoints base/code/lang, written tensor by tensor (no live model:
    a 7B one would take minutes to initialise): base ~ N(0, 0.02) (norms 1), each specialist
    = base + N(0, (0.01 * std(base))^2), generated on `device`, stored in `dtype`, sharded."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen2Config

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_models import make_tokenizer

    config = Qwen2Config(
        hidden_size=shape["hidden"], intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
        tie_word_embeddings=shape["tied"], max_position_embeddings=32768, architectures=["Qwen2ForCausalLM"],
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {k: tuple(v.shape) for k, v in model.state_dict().items()
             if not (shape["tied"] and k == "lm_head.weight")}
    outs = {name: root / name for name in ("base", "code", "lang")}
    for out in outs.values():
        out.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(out)
        make_tokenizer(out)
    shards: dict[str, list[dict[str, torch.Tensor]]] = {name: [{}] for name in outs}
    sizes = {name: 0 for name in outs}
    index: dict[str, int] = {}
    gen = torch.Generator(device=device).manual_seed(0)
    for key, dims in names.items():
        if key.endswith("norm.weight"):
            base = torch.ones(dims, device=device)
        else:
            base = 0.02 * torch.randn(dims, generator=gen, device=device)
        noise_scale = 0.01 * float(base.std()) if base.numel() > 1 else 0.0
        for name in outs:
            x = base if name == "base" else base + noise_scale * torch.randn(dims, generator=gen, device=device)
            t = x.to(dtype).cpu()
            if sizes[name] and sizes[name] + t.nbytes > SHARD_BYTES:
                shards[name].append({})
                sizes[name] = 0
            shards[name][-1][key] = t
            sizes[name] += t.nbytes
            index[key] = len(shards[name])
        for name, out in outs.items():  # write full shards as soon as they close (bounded host memory)
            for j, shard in enumerate(shards[name][:-1]):
                if shard:
                    save_file(shard, out / f"part-{j + 1}.safetensors", metadata={"format": "pt"})
                    shards[name][j] = {}
    for name, out in outs.items():
        parts = shards[name]
        save_file(parts[-1], out / f"part-{len(parts)}.safetensors", metadata={"format": "pt"})
        total = len(parts)
        files = {j: f"model-{j:05d}-of-{total:05d}.safetensors" for j in range(1, total + 1)}
        for j in range(1, total + 1):
            (out / f"part-{j}.safetensors").rename(out / files[j])
        weight_map = {key: files[j] for key, j in index.items()}
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return outs


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


def read_time(paths: list[Path]) -> float:
    """Seconds to read these checkpoints' safetensors files into memory (plain reads, 64 MiB at a
    time into one buffer; page cache as it is): what loading them costs at least."""
    buf = bytearray(64 << 20)
    start = time.perf_counter()
    for path in paths:
        for file in sorted(path.glob("*.safetensors")):
            with open(file, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return time.perf_counter() - start


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


def copy_bandwidth(device: torch.device, *, mbytes: int) -> float:
    """The device's copy rate in bytes/s, counting bytes read and written (best of 5)."""
    n = (mbytes << 20) // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * n * 4 / best


def merge_bytes(merger: ResidentMerger) -> int:
    """Bytes one merge must move at least: read base and every task vector, write the output."""
    return sum(t.base.nbytes + t.deltas.nbytes + t.param.nbytes for t in merger.tensors)


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


def timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one whole process, from /usr/bin/time -v."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, rss_kib / 2**20


def one_off(methods: list[str], paths: dict[str, Path], root: Path, *, threads: int, device: str,
            mergekit: bool) -> list[dict]:
    """`automerge merge` vs `mergekit-yaml` per method: same recipe, bf16 out, fresh processes."""
    from automerge.checkpoints import Checkpoint

    names = Checkpoint.open(paths["base"]).names
    num_layers = Checkpoint.open(paths["base"]).num_layers
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    rows = []
    for method in methods:
        recipe = recipe_for(method, paths).model_copy(update={"dtype": "bfloat16"})
        rec_file, mk_file = root / f"{method}.yaml", root / f"{method}.mergekit.yml"
        recipe.save(rec_file)
        import yaml

        mk_file.write_text(yaml.safe_dump(recipe.to_mergekit(names, recipe.grouping(num_layers)), sort_keys=False))
        row = {"method": method}
        out = root / "one-off-out"
        shutil.rmtree(out, ignore_errors=True)
        row["automerge_s"], row["automerge_rss_gib"] = timed_process(
            [str(bindir / "automerge"), "merge", str(rec_file), str(out), "--device", device], env)
        shutil.rmtree(out, ignore_errors=True)
        if mergekit:
            mk_cmd = [str(bindir / "mergekit-yaml"), str(mk_file), str(out), "--random-seed", "0"]
            if device.startswith("cuda"):
                mk_cmd.append("--cuda")
            row["mergekit_s"], row["mergekit_rss_gib"] = timed_process(mk_cmd, env)
            shutil.rmtree(out, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def one_off_table(rows: list[dict], *, shape_name: str, shape: dict, threads: int, load: str) -> list[str]:
    lines = [
        "## One-off merge: `automerge merge` vs `mergekit-yaml` (`bench/merge_bench.py --one-off`)",
        "",
        f"Machine: {machine()}. Load: {load}.",
        f"Random bf16 checkpoints with Qwen2.5-{shape_name} shapes ({shape['layers']} layers, hidden "
        f"{shape['hidden']}, vocab {shape['vocab']}), 2 specialists, the same recipe (bf16 out) given to both as "
        f"whole processes ({threads} thread(s) each; start-up and imports included); peak RSS from /usr/bin/time -v.",
        "",
        "| method | automerge merge s | mergekit-yaml s | mergekit ÷ automerge (target) | automerge peak RSS GiB "
        "| mergekit peak RSS GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mk = r.get("mergekit_s")
        speed = "–" if mk is None else f"{mk / r['automerge_s']:.2f}×"
        target = ONE_OFF_TARGETS.get(r["method"])
        if mk is not None and target:
            speed += f" (≥ {target}× {'✓' if mk / r['automerge_s'] >= target else '✗'})"
        mk_rss = r.get("mergekit_rss_gib")
        lines.append(f"| {r['method']} | {r['automerge_s']:.1f} | {'–' if mk is None else f'{mk:.1f}'} | {speed} "
                     f"| {r['automerge_rss_gib']:.2f} | {'–' if mk_rss is None else f'{mk_rss:.2f}'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="resident dtype for base and task vectors")
    ap.add_argument("--shape", default="0.5b", choices=sorted(SHAPES), help="Qwen2.5 shapes of the random checkpoints")
    for field in ("layers", "hidden", "intermediate", "vocab"):
        ap.add_argument(f"--{field}", type=int, default=None, help=f"override the shape's {field}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,dare_ties")
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--workdir", default=None, help="keep checkpoints here between runs")
    ap.add_argument("--json", default=None, help="also write the figures here (after every method)")
    ap.add_argument("--no-write", action="store_true", help="leave results/BENCHMARKS.md alone")
    ap.add_argument("--bandwidth-mb", type=int, default=None, help="buffer for the copy-bandwidth probe")
    ap.add_argument("--one-off", action="store_true", help="time `automerge merge` vs `mergekit-yaml` processes")
    ap.add_argument("--load", default="not stated", help="--one-off: what else ran, for the table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = dict(SHAPES[args.shape])
    shape.update({f: getattr(args, f) for f in ("layers", "hidden", "intermediate", "vocab") if getattr(args, f)})

    root = Path(args.workdir or tempfile.mkdtemp(prefix="merge-bench-"))
    if not (root / "lang" / "config.json").exists():
        print(f"building checkpoints in {root} ...", flush=True)
        start = time.perf_counter()
        gen_device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        paths = build_checkpoints(root, shape=shape, dtype=torch.bfloat16, device=gen_device)
        print(f"built in {time.perf_counter() - start:.1f}s", flush=True)
    else:
        paths = {n: root / n for n in ("base", "code", "lang")}
    if args.one_off:
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
            "cpu" if args.device == "auto" else args.device)
        rows = one_off(args.methods.split(","), paths, root, threads=args.threads, device=device,
                       mergekit=not args.no_mergekit)
        if args.json:
            Path(args.json).write_text(json.dumps(dict(machine=machine(), shape=shape, load=args.load, rows=rows),
                                                  indent=1))
        lines = one_off_table(rows, shape_name=args.shape, shape=shape, threads=args.threads, load=args.load)
        print("\n".join(lines))
        if not args.no_write:
            print(f"written to {write_section('merge-one-off-' + device.split(':')[0], chr(10).join(lines))}")
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(paths["base"]))]  # import: not load

    read_s = read_time([paths[n] for n in ("base", "code", "lang")])
    start = time.perf_counter()
    merger = ResidentMerger(base=paths["base"], specialists={"code": paths["code"], "lang": paths["lang"]},
                            device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - start
    n_params = sum(t.base.numel() for t in merger.tensors)
    cuda = merger.device.type == "cuda"
    bw = copy_bandwidth(merger.device, mbytes=args.bandwidth_mb or (4096 if cuda else 512))
    bw_bound = merge_bytes(merger) / bw
    bound = time_it(lambda: streaming_bound(merger), args.repeats)
    figures = dict(machine=machine(), shape=shape, params=n_params, dtype=args.dtype, device=str(merger.device),
                   load_s=load_s, read_s=read_s, load_x_read=load_s / read_s,
                   compile=os.environ.get("AUTOMERGE_COMPILE", "1") != "0", copy_bandwidth_gbs=bw / 1e9, bandwidth_bound_s=bw_bound, streaming_bound_s=bound,
                   methods={})

    def dump() -> None:
        if cuda:
            figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(merger.device) / 2**30
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))

    dump()
    rows = []
    for method in args.methods.split(","):
        recipe = recipe_for(method, paths)
        try:
            sync()
            start = time.perf_counter()
            merger.apply(recipe)  # first apply: fills the caches this method needs
            sync()
            first = time.perf_counter() - start
            start = time.perf_counter()
            merger.apply(recipe)  # second apply: compiles the method's kernel (unless AUTOMERGE_COMPILE=0)
            sync()
            second = time.perf_counter() - start
            apply_s = time_it(lambda: merger.apply(recipe), args.repeats)
        except torch.OutOfMemoryError as exc:  # a 7B shape may not fit every method's caches
            print(f"{method}: out of memory ({str(exc).splitlines()[0]})", flush=True)
            figures["methods"][method] = {"error": "out of memory"}
            merger._noise.clear()
            torch.cuda.empty_cache()
            dump()
            continue
        mk = None if args.no_mergekit else mergekit_time(recipe, merger, str(merger.device))
        rows.append((method, first, second, apply_s, mk))
        figures["methods"][method] = dict(first_s=first, second_s=second, apply_s=apply_s, x_streaming_bound=apply_s / bound,
                                          x_bandwidth_bound=apply_s / bw_bound, first_x_apply=first / apply_s,
                                          trials_per_hour_apply_only=3600 / apply_s, mergekit_s=mk)
        dump()
        print(f"{method}: first {first:.2f}s ({first / apply_s:.1f}× apply), second {second:.2f}s, apply {apply_s:.3f}s, "
              f"bound {bound:.3f}s, bandwidth bound {bw_bound:.3f}s, "
              f"mergekit {mk if mk is None else round(mk, 2)}s", flush=True)

    lines = [
        "## Merge engine (`bench/merge_bench.py`)",
        "",
        f"Machine: {machine()}.",
        f"Checkpoints: random weights with Qwen2.5-{args.shape} shapes ({shape['layers']} layers, hidden "
        f"{shape['hidden']}, {n_params / 1e6:.0f}M parameters, {'tied' if shape['tied'] else 'untied'} embeddings, "
        f"stored bf16), 2 specialists; resident dtype {args.dtype} on {merger.device}. One-off load (base + task "
        f"vectors): {load_s:.1f} s, {load_s / read_s:.2f}× the {read_s:.1f} s that reading the three checkpoints "
        f"takes (target ≤ {LOAD_TARGET} {'✓' if load_s / read_s <= LOAD_TARGET else '✗'}). Kernels: "
        f"{'compiled from the second apply' if figures['compile'] else 'eager (AUTOMERGE_COMPILE=0)'}. Streaming bound (read base and both task vectors once, write the output "
        f"once): {bound:.3f} s. Measured copy bandwidth {bw / 1e9:.0f} GB/s (read + write): the bytes one merge "
        f"moves take {bw_bound:.3f} s at it.",
        "",
        "| method | first apply (fills caches) s | first ÷ apply | second apply (compiles) s | apply s (median) "
        "| × bound | target × bound | × bandwidth bound | mergekit run_merge s | mergekit ÷ apply |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, first, second, apply_s, mk in rows:
        ratio = apply_s / bound
        target = TARGETS.get(method)
        verdict = "" if target is None else (f"≤ {target} {'✓' if ratio <= target else '✗'}")
        first_target = FIRST_TARGETS.get(method)
        first_ratio = first / apply_s
        first_cell = f"{first_ratio:.1f}" + ("" if first_target is None else
                                             f" (≤ {first_target} {'✓' if first_ratio <= first_target else '✗'})")
        mk_cell = "–" if mk is None else f"{mk:.1f}"
        speed = "–" if mk is None else f"{mk / apply_s:.0f}× {'✓' if mk / apply_s >= 20 else '✗'} (target ≥ 20×)"
        lines.append(f"| {method} | {first:.2f} | {first_cell} | {second:.2f} | {apply_s:.3f} | {ratio:.2f} | {verdict} "
                     f"| {apply_s / bw_bound:.2f} | {mk_cell} | {speed} |")
    if cuda:
        lines.append(f"\nPeak GPU memory: {figures['peak_gpu_memory_gib']:.1f} GiB.")
    print("\n".join(lines))
    if not args.no_write:
        section = "merge-" + ("gpu" if cuda else "cpu")
        print(f"written to {write_section(section, chr(10).join(lines))}")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
