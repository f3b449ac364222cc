"""The table bench/gpu_check.sh prints (and writes to results/BENCHMARKS.md), from its step logs.

    python bench/gpu_check_table.py --out DIR [--elapsed S] [--no-write]

DIR holds conformance.log, merge.json (bench/merge_bench.py --json) and search.log with the
study under search/ (automerge search --results-dir). A step that did not finish shows as such:
the table never invents a figure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

# "07:18:50 r0 #6 search trial 6: code=0.0235 nl=0.0132 (2.5s)" -- a search trial at the first rung
TRIAL_LINE = re.compile(r"\sr0 #\d+ search trial \d+: .*\((?P<seconds>[\d.]+)s\)\s*$")


def conformance(out: Path) -> str:
    path = out / "conformance.log"
    if not path.exists():
        return "not run"
    text = path.read_text()
    summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return summary[-1].strip("= ") if summary else "no pytest summary (see conformance.log)"


def search_rate(out: Path) -> tuple[str, str]:
    """(trials/hour from the mean first-rung search trial, how many were seen)."""
    logs = list((out / "search").glob("*/search.log")) + [out / "search.log"]
    seconds = []
    for log in logs:
        if log.exists():
            seconds += [float(m["seconds"]) for m in map(TRIAL_LINE.search, log.read_text().splitlines()) if m]
        if seconds:
            break
    if not seconds:
        return "–", "no search trial finished (see search.log)"
    mean = sum(seconds) / len(seconds)
    return f"{3600 / mean:.0f}", f"{len(seconds)} trials at rung r0, mean {mean:.2f} s (merge + proxy evaluation)"


def table(out: Path, elapsed: float | None) -> str:
    merge_path = out / "merge.json"
    merge = json.loads(merge_path.read_text()) if merge_path.exists() else None
    rate, rate_note = search_rate(out)
    lines = ["## GPU check (`bench/gpu_check.sh`)", ""]
    if merge is None:
        lines += ["Merge bench: no figures (see merge.log).", ""]
    else:
        shape = merge["shape"]
        lines += [
            f"Machine: {merge['machine']}.",
            f"Merge bench: random weights, Qwen2.5 shapes with {shape['layers']} layers, hidden {shape['hidden']} "
            f"({merge['params'] / 1e9:.2f}B parameters), 2 specialists, resident {merge['dtype']} on {merge['device']}; "
            f"load {merge['load_s']:.1f} s. Measured copy bandwidth {merge['copy_bandwidth_gbs']:.0f} GB/s "
            f"(read + write); the bytes one merge moves take {merge['bandwidth_bound_s'] * 1e3:.1f} ms at it. "
            f"Peak GPU memory: {merge.get('peak_gpu_memory_gib', float('nan')):.1f} GiB.",
            "",
            "| method | first apply s | first ÷ apply | apply ms | × bandwidth bound | trials/hour (apply only) |",
            "|---|---|---|---|---|---|",
        ]
        for method, m in merge["methods"].items():
            if "error" in m:
                lines.append(f"| {method} | {m['error']} | – | – | – | – |")
            else:
                lines.append(f"| {method} | {m['first_s']:.2f} | {m['first_x_apply']:.1f} | {m['apply_s'] * 1e3:.1f} | "
                             f"{m['x_bandwidth_bound']:.2f} | {m['trials_per_hour_apply_only']:.0f} |")
        lines.append("")
    lines += [
        f"Search (demo space, shipped zoo, on the device): {rate} trials/hour ({rate_note}).",
        f"CUDA conformance tests: {conformance(out)}.",
    ]
    if elapsed is not None:
        lines.append(f"The whole check took {elapsed:.0f} s.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--elapsed", type=float, default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/BENCHMARKS.md alone")
    args = ap.parse_args()
    markdown = table(args.out, args.elapsed)
    print(markdown)
    if not args.no_write:
        print(f"written to {write_section('gpu-check', markdown)}")


if __name__ == "__main__":
    main()
