"""Search benchmark: hypervolume against evaluation compute on the demo zoo.

Variants, each run with the same evaluation budget and the same seeds:

* ``mf-tpe``     multi-fidelity (the demo's rungs, MO-ASHA) with TPE
* ``ff-tpe``     full fidelity only (every trial fully evaluated) with TPE
* ``ff-random``  full fidelity only with random search
* ``mf-random``  multi-fidelity with random search (for reference)

Compute is counted in evaluated items (Σ over the search's trials at every rung of items
scored per task); wall seconds of evaluation are reported too. The yardsticks (baselines and
the reference model, evaluated at every rung) are a fixed cost of every study whatever its
length — at this toy scale they would dominate (multi-fidelity evaluates them at each rung) —
so they are left out of the compute axis and the budget, and reported separately. The hypervolume at compute x is the hypervolume of the *fully evaluated* search trials
finished by then, against a fixed reference point: the worst fully evaluated yardstick
(specialists alone, uniform linear, task arithmetic, TIES, data-mix model) per objective —
identical in every run, so curves are comparable.

    python bench/search_bench.py                      # demo zoo (automerge/zoo/models), 3 seeds
    python bench/search_bench.py --zoo /tmp/zoo/models --ff-trials 12 --seeds 0   # quick

Writes its section of results/BENCHMARKS.md (BENCHMARKS.search.md under another --out) and results/search_bench.png (and the studies under
results/bench-search/). Not a test: numbers depend on the machine only through seconds.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path
_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _report import RESULTS, write_section  # noqa: E402

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "mf-tpe": dict(multi_fidelity=True, sampler="tpe"),
    "ff-tpe": dict(multi_fidelity=False, sampler="tpe"),
    "ff-random": dict(multi_fidelity=False, sampler="random"),
    "mf-random": dict(multi_fidelity=True, sampler="random"),
}


def make_space(base_space, *, zoo: Path | None, seed: int, multi_fidelity: bool, sampler: str, trials: int):
    data = base_space.model_dump(mode="json")
    if zoo is not None:
        data["base"] = str(zoo / "base")
        for s in data["specialists"]:
            s["path"] = str(zoo / s["name"])
        for r in data["references"]:
            r["path"] = str(zoo / r["name"])
    data["seed"] = seed
    data["sampler"] = sampler
    data["budget"] = {"trials": trials, "wall_time": None, "finalize": True}
    if not multi_fidelity:
        data["rungs"] = dict(data["rungs"], items=[])
    data["name"] = None
    from automerge.search.space import SearchSpace

    return SearchSpace.from_dict(data, source="bench space")


class CountingRunner:
    """Wraps the real runner: counts compute, stops the worker at the budget. Yardsticks
    (baselines, reference) are the same in every variant of a seed: their evaluations are
    cached to save wall time, but every variant is charged their full compute."""

    def __init__(self, inner, budget_items: float | None, cache: dict):
        self.inner = inner
        self.budget_items = budget_items
        self.items = 0  # search trials only
        self.yard_items = 0
        self.seconds = 0.0
        self.worker = None
        self.cache = cache

    def setup(self):
        self.inner.setup()

    def evaluate(self, job):
        key = None
        if job.kind in ("baseline", "reference"):
            key = (job.label, job.limit, tuple(job.tasks))
        if key is not None and key in self.cache:
            ev = self.cache[key]
        else:
            ev = self.inner.evaluate(job)
            if key is not None:
                self.cache[key] = ev
        if key is None:
            self.items += sum(ev.counts.values())
        else:
            self.yard_items += sum(ev.counts.values())
        self.seconds += ev.eval_seconds + ev.apply_seconds
        if self.budget_items is not None and self.items >= self.budget_items and self.worker is not None:
            self.worker.stop_requested = True
        return ev

    def free(self):
        self.inner.free()


def run_variant(name: str, space, runner, out_dir: Path, budget_items: float | None, cache: dict) -> dict:
    from automerge.search.study import SearchStudy
    from automerge.search.worker import Worker

    db = out_dir / f"{name}.db"
    if db.exists():
        db.unlink()
    study = SearchStudy.open(name, f"sqlite:///{db}", space)
    counting = CountingRunner(runner, budget_items, cache)
    worker = Worker(study, counting, poll_interval=0.05)
    counting.worker = worker
    t0 = time.time()
    worker.run()
    wall = time.time() - t0
    events = collect(study)
    study.close()
    return {"events": events, "items": counting.items, "yard_items": counting.yard_items,
            "eval_seconds": counting.seconds, "wall": wall}


def collect(study) -> list[dict]:
    """Every finished trial at every rung, in completion order, with its compute."""
    from optuna.trial import TrialState

    out = []
    R = study.num_rungs
    for r in range(R):
        for t in study.trials(r):
            if t.state not in (TrialState.COMPLETE, TrialState.FAIL) or t.datetime_complete is None:
                continue
            out.append({"rung": r, "full": r == R - 1, "number": t.number, "kind": t.user_attrs.get("kind"),
                        "label": t.user_attrs.get("label"), "items": t.user_attrs.get("eval_items", 0),
                        "seconds": t.user_attrs.get("eval_seconds", 0.0) + t.user_attrs.get("apply_seconds", 0.0),
                        "values": list(t.values) if t.state == TrialState.COMPLETE else None,
                        "done": t.datetime_complete.timestamp()})
    out.sort(key=lambda e: e["done"])
    return out


def hv_curve(events: list[dict], directions: list[str], ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from automerge.pareto import hypervolume, to_minimization

    xs, ys, pts, compute = [0.0], [0.0], [], 0.0
    for e in events:
        if e["kind"] not in ("search", None):
            continue  # yardsticks: not on the compute axis (see the module doc)
        compute += e["items"]
        if e["full"] and e["kind"] == "search" and e["values"] is not None:
            pts.append(e["values"])
        hv = hypervolume(to_minimization(pts, directions), ref) if pts else 0.0
        xs.append(compute)
        ys.append(hv)
    return np.array(xs), np.array(ys)


def compute_to_reach(xs: np.ndarray, ys: np.ndarray, target: float) -> float | None:
    idx = np.flatnonzero(ys >= target - 1e-12)
    return float(xs[idx[0]]) if len(idx) and target > 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "demo.yaml")
    ap.add_argument("--zoo", type=Path, default=None, help="models dir with base/code/lang/mix (default: the space's paths)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ff-trials", type=int, default=16, help="trials of the full-fidelity runs (sets the budget)")
    ap.add_argument("--variants", nargs="+", default=["mf-tpe", "ff-tpe", "ff-random"],
                    choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from automerge.pareto import to_minimization
    from automerge.search.space import SearchSpace
    from automerge.search.worker import EngineRunner

    base_space = SearchSpace.load(args.space)
    directions = base_space.directions
    work = args.out / "bench-search"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs: dict[str, dict[int, dict]] = {v: {} for v in args.variants}
    for seed in args.seeds:
        runner = None
        budget = None
        cache: dict = {}
        # full fidelity first: its compute is the budget of the others
        order = sorted(args.variants, key=lambda v: (VARIANTS[v]["multi_fidelity"], v))
        for v in order:
            cfg = VARIANTS[v]
            trials = args.ff_trials if not cfg["multi_fidelity"] else args.ff_trials * 20
            space = make_space(base_space, zoo=args.zoo, seed=seed, trials=trials, **cfg)
            if runner is None:
                space.check_models()
                runner = EngineRunner(space, threads=args.threads)
            limit = None if not cfg["multi_fidelity"] else budget
            print(f"seed {seed} {v}: budget {limit or 'ff-trials=' + str(trials)} items", flush=True)
            res = run_variant(f"{v}-s{seed}", space, runner, work, limit, cache)
            if not cfg["multi_fidelity"] and budget is None:
                budget = res["items"]
            runs[v][seed] = res
            print(f"  {res['items']} search items (+{res['yard_items']} yardstick items), "
                  f"{res['eval_seconds']:.1f}s eval, {res['wall']:.1f}s wall", flush=True)

    # one reference point for everything: the worst fully evaluated yardstick per objective
    yard = [e["values"] for v in runs for r in runs[v].values() for e in r["events"]
            if e["full"] and e["kind"] in ("baseline", "reference") and e["values"] is not None]
    ref = to_minimization(yard, directions).max(axis=0)
    table = []
    curves = {}
    for v in args.variants:
        for seed, r in runs[v].items():
            xs, ys = hv_curve(r["events"], directions, ref)
            curves[(v, seed)] = (xs, ys)
    budget_of = {seed: runs[v][seed]["items"] for v in args.variants if not VARIANTS[v]["multi_fidelity"]
                 for seed in runs[v]}
    for v in args.variants:
        for seed, r in runs[v].items():
            xs, ys = curves[(v, seed)]
            budget = budget_of.get(seed, xs[-1])
            at_budget = float(ys[xs <= budget][-1]) if (xs <= budget).any() else 0.0
            ff = curves.get(("ff-tpe", seed))
            target = float(ff[1][-1]) if ff is not None else float("nan")
            reach = compute_to_reach(xs, ys, target) if ff is not None else None
            table.append({"variant": v, "seed": seed, "hv_at_budget": at_budget, "hv_final": float(ys[-1]),
                          "items": int(xs[-1]), "budget_items": int(budget),
                          "yard_items": r["yard_items"],
                          "items_to_ff_final": reach, "fraction_of_ff": (reach / budget) if reach else None,
                          "eval_seconds": r["eval_seconds"],
                          "full_evals": sum(1 for e in r["events"] if e["full"] and e["kind"] == "search")})
    write_report(args, table, curves, budget_of, ref)


def write_report(args, table, curves, budget_of, ref) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"mf-tpe": "tab:blue", "ff-tpe": "tab:orange", "ff-random": "tab:gray", "mf-random": "tab:cyan"}
    for v in args.variants:
        for i, seed in enumerate(args.seeds):
            if (v, seed) not in curves:
                continue
            xs, ys = curves[(v, seed)]
            ax.step(xs, ys, where="post", color=colors.get(v), alpha=0.8, label=v if i == 0 else None)
    for seed, b in budget_of.items():
        ax.axvline(b, color="k", lw=0.5, ls=":")
    ax.set_xlabel("evaluation compute (items scored by search trials, all rungs)")
    ax.set_ylabel("hypervolume of fully evaluated trials")
    ax.set_title(f"automerge search: {args.space.stem}, {'demo zoo' if args.zoo is None else args.zoo.parent.name}, "
                 f"seeds {args.seeds}")
    ax.legend()
    fig.tight_layout()
    png = out / "search_bench.png"
    fig.savefig(png, dpi=120)

    def mean(xs):
        xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
        return sum(xs) / len(xs) if xs else None

    def fmt(x, spec=".4g"):
        return "–" if x is None else format(x, spec)

    zoo = "the demo zoo (automerge/zoo/models)" if args.zoo is None else f"the zoo at {args.zoo}"
    lines = ["# Search benchmark (bench/search_bench.py)", "",
             f"Command: `python bench/search_bench.py {' '.join(sys.argv[1:])}`", "",
             f"Space {args.space.name} on {zoo}, seeds {args.seeds}, budget = the compute of {args.ff_trials} full-fidelity trials. "
             "Compute = items scored by search trials over all rungs (yardsticks — baselines and the "
             "reference model — are a fixed per-study cost, listed apart). Hypervolume of fully evaluated search "
             f"trials, reference point = worst fully evaluated yardstick per objective {np.round(-ref, 5).tolist()} "
             "(objectives maximised).", "",
             "| variant | seed | HV at budget | search items | yardstick items | full evals | "
             "items to reach ff-tpe final HV | fraction of ff budget | eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(f"| {row['variant']} | {row['seed']} | {fmt(row['hv_at_budget'])} | {row['items']} | "
                     f"{row['yard_items']} | {row['full_evals']} | {fmt(row['items_to_ff_final'], '.0f')} | "
                     f"{fmt(row['fraction_of_ff'], '.2f')} | {row['eval_seconds']:.0f} |")
    lines += ["", "Means over seeds:", "", "| variant | HV at budget | fraction of ff budget to reach ff-tpe final HV |",
              "|---|---|---|"]
    summary = {}
    for v in args.variants:
        rows = [r for r in table if r["variant"] == v]
        summary[v] = {"hv": mean([r["hv_at_budget"] for r in rows]),
                      "fraction": mean([r["fraction_of_ff"] for r in rows]),
                      "reached": sum(r["fraction_of_ff"] is not None for r in rows), "n": len(rows)}
        lines.append(f"| {v} | {fmt(summary[v]['hv'])} | {fmt(summary[v]['fraction'], '.2f')} "
                     f"(reached in {summary[v]['reached']}/{summary[v]['n']} seeds) |")
    lines.append("")
    if "mf-tpe" in summary and summary["mf-tpe"]["fraction"] is not None:
        ok = summary["mf-tpe"]["fraction"] <= 1 / 3 and summary["mf-tpe"]["reached"] == summary["mf-tpe"]["n"]
        lines.append(f"- Target: multi-fidelity reaches the full-fidelity final HV with ≤ 1/3 of its compute: "
                     f"{'met' if ok else 'NOT met'} (mean fraction {summary['mf-tpe']['fraction']:.2f}).")
    for a, b in (("ff-tpe", "ff-random"), ("mf-tpe", "mf-random")):
        if a in summary and b in summary and summary[b]["hv"]:
            ratio = summary[a]["hv"] / summary[b]["hv"]
            lines.append(f"- Target: TPE ≥ 1.2× random's hypervolume ({a} vs {b}): ratio {ratio:.2f} — "
                         f"{'met' if ratio >= 1.2 else 'NOT met'}.")
    lines += ["", f"![hypervolume vs compute]({png.name})", ""]
    if out.resolve() == RESULTS.parent.resolve():
        write_section("search", "\n".join(lines))  # the section of results/BENCHMARKS.md
    else:
        (out / "BENCHMARKS.search.md").write_text("\n".join(lines))
    (out / "bench-search" / "table.json").write_text(json.dumps(table, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
