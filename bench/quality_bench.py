"""Quality benchmark: does the search find merges a user would not find by hand, on text nothing in
the loop reads?

Every merge any variant evaluates is also scored on the *quality holdout*: the third-party files of
the zoo (``automerge/zoo/data/external/{code,prose}.jsonl``) that :func:`automerge.eval._split.
is_quality_holdout` keeps out of every proxy and full evaluation — per-token loss in nats on
hold-code and hold-prose (the zoo card's scoring, ``automerge.zoo.card``: each file cut to its first
``--max-doc-tokens`` tokens, scored in context-length windows).

Variants, on the demo space (``search_spaces/demo.yaml``) and the demo zoo:

* ``grid``      the hand grid: linear code weight 0, 0.1, …, 1; task arithmetic λ_code, λ_lang ∈
                {0.25, 0.5, 0.75, 1}; TIES (λ = 1, 1) at density 0.1, 0.3, 0.5, 0.7, 0.9 — each
                point fully evaluated (32 points). Its compute is the yardstick budget.
* ``mf-<s>``    the search as shipped (multi-fidelity rungs) with sampler s (tpe, gp, nsga2, random):
                the space's trial budget, finalised as ``automerge search`` does.
* ``ff-<s>``    full fidelity only (no proxy rungs), the default sampler, stopped at the compute of
                ``mf-<default>`` of the same seed (equal compute).

Compute = items scored (Σ over every evaluation of items per task), yardsticks (baselines, the
data-mix reference: evaluated at every rung) included. A variant's *front* is what its user would
pick: the non-dominated points by the objectives the variant measured at the full evaluation
(the grid: all its points; a search: its fully evaluated search trials). Its holdout hypervolume is
that front's hypervolume on (hold-code, hold-prose) loss, reference point = the worse specialist
per axis (each specialist alone, scored on the holdout). Spearman: per rung, the search trials'
objective at that rung against their holdout score (negated loss), per objective.

    python bench/quality_bench.py --threads 2      # demo zoo, seeds 0 1 2, samplers tpe gp nsga2 random
    python bench/quality_bench.py --quick          # a check that it runs: 1 seed, 10 trials, tpe + random

Samplers on the demo space: its parameters are conditional on the method (``ties.weight.code[…]``
exists only in TIES trials), and Optuna's GP and NSGA-II samplers model only the parameters every
trial shares, sampling the rest independently at random (they warn so); TPE with ``group=True``
models each method's parameters. The bench measures what that costs.

Cost of the full run: per seed, 4 multi-fidelity searches and 1 full-fidelity one at about the
demo's compute each (~30k items scored; the shipped 4-layer zoo scores ~6 ms of one core per item)
plus a holdout scoring per distinct merge (~1 s); with the grid, about 1–1.5 h on a quiet 2-core
machine. Scale it with --seeds and --samplers.

Writes its section of results/BENCHMARKS.md (BENCHMARKS.quality.md under another --out) and
results/bench-quality/table.json. Numbers are valid only from a quiet machine.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path
_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from _report import RESULTS, machine, write_section  # noqa: E402

import argparse
import datetime
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLERS = ("tpe", "gp", "nsga2", "random")
HOLD_AXES = ("code", "prose")      # holdout domains, matched to the demo's objectives code and nl
TARGETS = {"grid_ratio": 1.1, "spearman_r0": 0.85, "mf_fraction": 0.5, "random_ratio": 1.15}


# ------------------------------------------------------------------------------------------ holdout
class HoldoutScorer:
    """Per-token loss (nats) of a live model on the quality holdout, per domain."""

    def __init__(self, tokenizer, seq_len: int, data_dir: Path, max_doc_tokens: int):
        from automerge.eval._split import is_quality_holdout
        from automerge.zoo.card import encode_domain

        eot, self.pad = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|pad|>")
        self.rows, self.files = {}, {}
        for d in HOLD_AXES:
            path = data_dir / "external" / f"{d}.jsonl"
            if not path.is_file():
                raise SystemExit(f"error: {path} is missing; the quality bench needs the zoo's third-party data "
                                 "(pass --zoo-data DIR)")
            recs = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            recs = [r for r in recs if is_quality_holdout(r["source"])]
            self.files[d] = len(recs)
            self.rows[d] = encode_domain(tokenizer, recs, eot=eot, seq_len=seq_len, max_doc_tokens=max_doc_tokens,
                                         pairs=False)
        self.tokens = {d: sum(sum(1 for t in tgt if t != -100) for _, tgt in rows) for d, rows in self.rows.items()}

    def __call__(self, model) -> dict[str, float]:
        from automerge.zoo.card import rows_loss

        return {d: rows_loss(model, rows, pad_id=self.pad) for d, rows in self.rows.items()}


def recipe_key(recipe) -> str | None:
    return None if recipe is None else hashlib.sha256(recipe.to_yaml().encode()).hexdigest()[:16]


class QualityRunner:
    """Wraps the real runner: counts compute (all evaluations, yardsticks too), scores every merge
    on the holdout once (cached by recipe), and stops the worker at a compute budget. Yardstick
    evaluations are cached across variants to save wall time, but every variant is charged them."""

    def __init__(self, inner, holdout: HoldoutScorer, hold_cache: dict, yard_cache: dict,
                 budget_items: float | None = None):
        self.inner, self.holdout = inner, holdout
        self.hold_cache, self.yard_cache = hold_cache, yard_cache
        self.budget_items = budget_items
        self.items = 0
        self.seconds = 0.0
        self.log: list[dict] = []          # one entry per evaluation, in order
        self.worker = None

    def setup(self):
        self.inner.setup()

    def evaluate(self, job):
        yard = job.kind in ("baseline", "reference")
        key = (job.label, job.limit, tuple(job.tasks)) if yard else None
        if key is not None and key in self.yard_cache:
            ev, hold = self.yard_cache[key]
        else:
            ev = self.inner.evaluate(job)      # the live model now holds this merge
            rk = recipe_key(job.recipe) or f"model:{job.model_path}"
            if rk not in self.hold_cache:
                self.hold_cache[rk] = self.holdout(self.inner.merger.model)
            hold = self.hold_cache[rk]
            if key is not None:
                self.yard_cache[key] = (ev, hold)
        n = sum(ev.counts.values())
        self.items += n
        self.seconds += ev.eval_seconds + ev.apply_seconds
        self.log.append({"rung": job.rung, "number": job.trial_number, "kind": job.kind, "label": job.label,
                         "items": n, "compute": self.items, "hold": hold})
        if self.budget_items is not None and self.items >= self.budget_items and self.worker is not None:
            self.worker.stop_requested = True
        return ev

    def free(self):
        self.inner.free()


# ------------------------------------------------------------------------------------------ spaces
def bench_space(base_space, *, models: Path | None, seed: int, sampler: str, trials: int, multi_fidelity: bool,
                quick: bool = False):
    from automerge.search.space import SearchSpace

    data = base_space.model_dump(mode="json")
    if quick:   # a check that the bench runs, not a measurement
        data["rungs"] = dict(data["rungs"], items=[4, 8])
        data["full_evaluation"] = dict(data["full_evaluation"], limit=16)
    if models is not None:
        data["base"] = str(models / "base")
        for entry in data["specialists"] + data["references"]:
            entry["path"] = str(models / entry["name"])
    data.update(seed=seed, sampler=sampler, name=None)
    data["budget"] = {"trials": trials, "wall_time": None, "finalize": True}
    if not multi_fidelity:
        data["rungs"] = dict(data["rungs"], items=[])
    return SearchSpace.from_dict(data, source="quality bench space")


def _recipe(space, method: str, wc: float, wl: float, extra_model: dict | None = None, **params):
    """A recipe of the space's two specialists with weights wc (code) and wl (lang)."""
    from automerge.recipe import ModelSpec, Recipe

    code, lang = space.specialists[0], space.specialists[1]
    models = [ModelSpec(name=s.name, path=s.path, parameters={"weight": w, **(extra_model or {})})
              for s, w in ((code, wc), (lang, wl))]
    return Recipe(method=method, base=space.base, models=models, parameters=params, seed=space.seed,
                  dtype=space.dtype)


def grid_recipes(space) -> list[tuple[str, object]]:
    """The hand grid a user would try (see the module doc), as recipes of the space's specialists."""
    recipe = functools.partial(_recipe, space)
    out = []
    for i in range(11):
        w = i / 10
        out.append((f"linear code {w:.1f}", recipe("linear", w, 1 - w, normalize=True)))
    for lc in (0.25, 0.5, 0.75, 1.0):
        for ll in (0.25, 0.5, 0.75, 1.0):
            out.append((f"TA {lc:g}/{ll:g}", recipe("task_arithmetic", lc, ll, **{"lambda": 1.0})))
    for dens in (0.1, 0.3, 0.5, 0.7, 0.9):
        out.append((f"TIES density {dens:g}", recipe("ties", 1.0, 1.0, {"density": dens}, **{"lambda": 1.0})))
    return out


CEILING_SCALES = (0.6, 0.75, 0.9, 1.0)


def ceiling_recipes(space) -> list[tuple[str, object]]:
    """A dense scan of task arithmetic, the family the grid's best merges come from: total scale
    s = λ_code + λ_lang in CEILING_SCALES, code fraction 0, 0.1, …, 1. Scored on the holdout only
    (it is not a variant: nothing picks from it), it says how much hypervolume the grid leaves on
    the table in that family, i.e. what a search of it can gain at most over the grid."""
    out = []
    for total in CEILING_SCALES:
        for i in range(11):
            wc, wl = total * i / 10, total * (1 - i / 10)
            out.append((f"TA {wc:.3g}/{wl:.3g}", _recipe(space, "task_arithmetic", wc, wl, **{"lambda": 1.0})))
    return out


# ------------------------------------------------------------------------------------------ runs
def run_grid(space, runner: QualityRunner) -> dict:
    from automerge.search.worker import Job

    full = space.num_rungs - 1
    points = []
    for label, recipe in grid_recipes(space):
        ev = runner.evaluate(Job(rung=full, rung_name="grid", limit=space.rung_limit(full),
                                 tasks=space.rung_tasks(full), kind="search", label=label, recipe=recipe,
                                 model_path=None, trial_number=len(points)))
        points.append({"label": label, "values": space.objective_values(ev.scores, full),
                       "hold": runner.log[-1]["hold"], "compute": runner.items})
    return {"points": points, "items": runner.items, "seconds": runner.seconds}


def run_search(name: str, space, runner: QualityRunner, work: Path) -> dict:
    from optuna.trial import TrialState

    from automerge.search.study import SearchStudy
    from automerge.search.worker import Worker

    db = work / f"{name}.db"
    db.unlink(missing_ok=True)
    study = SearchStudy.open(name, f"sqlite:///{db}", space)
    worker = Worker(study, runner, poll_interval=0.05)
    runner.worker = worker
    t0 = time.time()
    worker.run()
    wall = time.time() - t0
    full = space.num_rungs - 1
    by_trial = {(e["rung"], e["number"]): e for e in runner.log}
    trials = []
    for r in range(space.num_rungs):
        for t in study.trials(r, [TrialState.COMPLETE]):
            e = by_trial.get((r, t.number))
            if e is None:
                continue
            trials.append({"rung": r, "full": r == full, "number": t.number, "kind": t.user_attrs.get("kind"),
                           "label": t.user_attrs.get("label"), "values": list(t.values), "hold": e["hold"],
                           "compute": e["compute"], "method": t.params.get("method")})
    samples = study.snapshot().samples_claimed()
    study.close()
    return {"trials": trials, "items": runner.items, "seconds": runner.seconds, "wall": wall, "samples": samples}


# ------------------------------------------------------------------------------------------ metrics
def hold_matrix(points) -> np.ndarray:
    return np.array([[p["hold"][d] for d in HOLD_AXES] for p in points], dtype=float).reshape(-1, len(HOLD_AXES))


def picked_front(points, directions) -> list[dict]:
    """The points a user of this variant would pick: non-dominated by the measured objectives."""
    from automerge.pareto import pareto_mask, to_minimization

    if not points:
        return []
    mask = pareto_mask(to_minimization([p["values"] for p in points], directions))
    return [p for p, m in zip(points, mask) if m]


def holdout_hv(points, ref) -> float:
    from automerge.pareto import hypervolume

    return hypervolume(hold_matrix(points), ref) if points else 0.0


def hv_curve(run: dict, directions, ref) -> tuple[np.ndarray, np.ndarray]:
    """Holdout HV of the front picked from the fully evaluated search trials, against compute."""
    full = sorted((t for t in run["trials"] if t["full"] and t["kind"] == "search"), key=lambda t: t["compute"])
    xs, ys = [0.0], [0.0]
    for i, t in enumerate(full):
        xs.append(t["compute"])
        ys.append(holdout_hv(picked_front(full[:i + 1], directions), ref))
    xs.append(run["items"])
    ys.append(ys[-1])
    return np.array(xs), np.array(ys)


def spearman_by_rung(run: dict, objective_names, num_rungs: int) -> dict[int, dict[str, float | None]]:
    from scipy.stats import spearmanr

    out = {}
    for r in range(num_rungs):
        ts = [t for t in run["trials"] if t["rung"] == r and t["kind"] == "search"]
        out[r] = {}
        for k, (obj, axis) in enumerate(zip(objective_names, HOLD_AXES)):
            if len(ts) < 4:
                out[r][obj] = None
                continue
            rho = spearmanr([t["values"][k] for t in ts], [-t["hold"][axis] for t in ts]).statistic
            out[r][obj] = None if rho is None or math.isnan(rho) else float(rho)
    return out


def dominates(a: dict, b: dict) -> bool:
    x, y = [a["hold"][d] for d in HOLD_AXES], [b["hold"][d] for d in HOLD_AXES]
    return all(p <= q for p, q in zip(x, y)) and any(p < q for p, q in zip(x, y))


def mean_sd(xs) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "demo.yaml")
    ap.add_argument("--zoo", type=Path, default=None, help="models dir with base/code/lang/mix (default: the space's)")
    ap.add_argument("--zoo-data", type=Path, default=None,
                    help="the zoo's data dir with external/ (default: beside --zoo, or automerge/zoo/data)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samplers", nargs="+", default=None, choices=SAMPLERS,
                    help=f"samplers of the multi-fidelity runs (default: {' '.join(SAMPLERS)}; --quick: tpe random)")
    ap.add_argument("--trials", type=int, default=None, help="sampled trials per search (default: the space's)")
    ap.add_argument("--max-doc-tokens", type=int, default=384, help="holdout tokens scored per file")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true",
                    help="a check that it runs: 1 seed, 10 trials, tpe + random, rungs of 4/8/16 items, "
                         "64 holdout tokens per file")
    ap.add_argument("--ceiling", action="store_true",
                    help="also score a dense task-arithmetic scan on the holdout: the grid family's ceiling")
    ap.add_argument("--no-ff", action="store_true", help="skip the full-fidelity variant (a quicker look at a space)")
    ap.add_argument("--grid-cache", type=Path, default=None,
                    help="JSON of the grid's points: read when it exists and matches the zoo and the full "
                         "evaluation, else written (the grid does not depend on the space's search settings)")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.max_doc_tokens = args.seeds[:1], args.trials or 10, 64
        args.samplers = args.samplers or ["tpe", "random"]
    args.samplers = args.samplers or list(SAMPLERS)

    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from automerge.search.space import SearchSpace
    from automerge.search.worker import EngineRunner

    base_space = SearchSpace.load(args.space)
    default = base_space.sampler
    samplers = [default] + [s for s in args.samplers if s != default]
    trials = args.trials or base_space.budget.trials
    directions, objectives = base_space.directions, base_space.objective_names
    data_dir = args.zoo_data or (args.zoo.parent / "data" if args.zoo else ROOT / "automerge" / "zoo" / "data")
    work = args.out / "bench-quality"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    load = os.getloadavg()
    t_start = time.time()

    first = bench_space(base_space, models=args.zoo, seed=args.seeds[0], sampler=default, trials=trials,
                        multi_fidelity=True, quick=args.quick)
    first.check_models()
    inner = EngineRunner(first, threads=args.threads)
    inner.setup()
    model = inner.merger.model
    holdout = HoldoutScorer(inner.merger.tokenizer, model.config.max_position_embeddings, data_dir,
                            args.max_doc_tokens)
    hold_cache: dict = {}
    yard_cache: dict = {}

    def runner(budget=None):
        return QualityRunner(inner, holdout, hold_cache, yard_cache, budget)

    print(f"holdout: {holdout.files} files, {holdout.tokens} tokens; grid …", flush=True)
    grid_key = {"zoo": str(args.zoo), "full": [first.rung_limit(first.num_rungs - 1), first.rung_tasks(first.num_rungs - 1)],
                "max_doc_tokens": args.max_doc_tokens, "seed": first.seed}
    cached = json.loads(args.grid_cache.read_text()) if args.grid_cache and args.grid_cache.is_file() else None
    if cached and cached.get("key") == json.loads(json.dumps(grid_key)):
        grid = cached["grid"]
        for label, recipe in grid_recipes(first):       # the holdout cache, so baselines find theirs
            hold_cache.setdefault(recipe_key(recipe), next(p["hold"] for p in grid["points"] if p["label"] == label))
    else:
        grid = run_grid(first, runner())
        if args.grid_cache:
            args.grid_cache.write_text(json.dumps({"key": grid_key, "grid": grid}))
    print(f"  grid: {len(grid['points'])} points, {grid['items']} items", flush=True)
    runs: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        for s in samplers:
            v = f"mf-{s}"
            space = bench_space(base_space, models=args.zoo, seed=seed, sampler=s, trials=trials, multi_fidelity=True,
                                quick=args.quick)
            runs.setdefault(v, {})[seed] = run_search(f"{v}-s{seed}", space, runner(), work)
            print(f"  seed {seed} {v}: {runs[v][seed]['samples']} samples, {runs[v][seed]['items']} items, "
                  f"{runs[v][seed]['wall']:.0f}s", flush=True)
        if args.no_ff:
            continue
        v = f"ff-{default}"
        space = bench_space(base_space, models=args.zoo, seed=seed, sampler=default, trials=10 * trials,
                            multi_fidelity=False, quick=args.quick)
        runs.setdefault(v, {})[seed] = run_search(f"{v}-s{seed}", space, runner(runs[f"mf-{default}"][seed]["items"]),
                                                  work)
        print(f"  seed {seed} {v}: {runs[v][seed]['samples']} samples, {runs[v][seed]['items']} items", flush=True)

    # the reference point: the worse specialist per holdout axis
    alone = [hold_cache[recipe_key(b.recipe)] for b in first.baseline_trials() if b.label.endswith(" alone")]
    ref = np.array([max(a[d] for a in alone) for d in HOLD_AXES])
    grid_front = picked_front(grid["points"], directions)
    grid_hv = holdout_hv(grid_front, ref)
    best_grid = max(grid["points"], key=lambda p: holdout_hv([p], ref))
    table = {"grid": {"hv": grid_hv, "items": grid["items"], "front": [p["label"] for p in grid_front],
                      "best": best_grid, "points": grid["points"]},
             "ref": ref.tolist(), "variants": {}}
    for v, per_seed in runs.items():
        for seed, run in per_seed.items():
            search_full = [t for t in run["trials"] if t["full"] and t["kind"] == "search"]
            front = picked_front(search_full, directions)
            xs, ys = hv_curve(run, directions, ref)
            table["variants"].setdefault(v, {})[seed] = {
                "hv": holdout_hv(front, ref),
                "hv_all": holdout_hv([t for t in run["trials"] if t["kind"] == "search"], ref),
                "items": run["items"], "samples": run["samples"], "wall": run["wall"], "eval_seconds": run["seconds"],
                "front": [{"number": t["number"], "label": t["label"], "hold": t["hold"], "values": t["values"]}
                          for t in front],
                "dominate_best_grid": [t["label"] for t in front if dominates(t, best_grid)],
                "spearman": spearman_by_rung(run, objectives, base_space.num_rungs if v.startswith("mf") else 1),
                "curve": [xs.tolist(), ys.tolist()],
                "beats_mix": [t["label"] for t in run["trials"] if t["kind"] == "search"
                              and any(dominates(t, y) for y in run["trials"] if y["kind"] == "reference")][:5]}
    if args.ceiling:
        pts = []
        for label, recipe in ceiling_recipes(first):   # grid and baseline merges are scored already
            key = recipe_key(recipe)
            if key not in hold_cache:
                inner.merger.apply(recipe)
                hold_cache[key] = holdout(inner.merger.model)
            pts.append({"label": label, "hold": hold_cache[key]})
        every = pts + grid["points"] + [t for per_seed in runs.values() for run in per_seed.values()
                                        for t in run["trials"] if t["kind"] == "search"]
        table["ceiling"] = {"hv_ta": holdout_hv(pts, ref), "hv_every": holdout_hv(every, ref), "points": pts}
    table["elapsed"] = time.time() - t_start
    write_report(args, table, default, load)


def write_report(args, table: dict, default: str, load) -> None:
    out = args.out
    v_def, v_ff, v_rand = f"mf-{default}", f"ff-{default}", "mf-random"
    V = table["variants"]
    fmt = lambda x, spec=".4g": "–" if x is None else format(x, spec)  # noqa: E731
    grid = table["grid"]
    lines = ["# Quality benchmark (bench/quality_bench.py)", "",
             f"Command: `python bench/quality_bench.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {machine()}  ",
             f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}; load average at start "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; whole run {table['elapsed'] / 60:.1f} min.", "",
             f"Space {args.space.name}, seeds {args.seeds}, {args.trials or 'the space’s'} trials per search. "
             "Holdout = the zoo's third-party files that no proxy and no full evaluation reads; HV = hypervolume "
             "of the picked front on (hold-code, hold-prose) loss in nats/token, reference point = the worse "
             f"specialist per axis {np.round(table['ref'], 4).tolist()}. Compute = items scored, yardsticks included.",
             "", "| variant | seed | holdout HV | × grid | HV of every trial | items | × grid items | sampled | "
             "front | front trials dominating the best grid merge |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
             f"| grid | – | {fmt(grid['hv'])} | 1.00 | – | {grid['items']} | 1.00 | {len(grid['points'])} | "
             f"{len(grid['front'])} | best grid merge: {grid['best']['label']} "
             f"(code {grid['best']['hold']['code']:.4f}, prose {grid['best']['hold']['prose']:.4f}) |"]
    for v, per_seed in V.items():
        for seed, r in per_seed.items():
            ratio = r["hv"] / grid["hv"] if grid["hv"] else None
            lines.append(f"| {v} | {seed} | {fmt(r['hv'])} | {fmt(ratio, '.2f')} | {fmt(r['hv_all'])} | {r['items']} | "
                         f"{r['items'] / grid['items']:.2f} | {r['samples']} | {len(r['front'])} | "
                         f"{', '.join(r['dominate_best_grid']) or 'none'} |")
    if "ceiling" in table:
        c = table["ceiling"]
        lines += ["", f"**Ceiling** (`--ceiling`): a dense task-arithmetic scan ({len(c['points'])} merges: "
                  f"λ_code + λ_lang ∈ {list(CEILING_SCALES)}, code share 0, 0.1, …, 1), scored on the holdout "
                  f"only, has HV {c['hv_ta']:.4f} = {c['hv_ta'] / grid['hv']:.2f}× the grid's; every merge scored "
                  f"in this run together (scan, grid, every search trial of every variant): {c['hv_every']:.4f} = "
                  f"{c['hv_every'] / grid['hv']:.2f}×. No front picked from these families can exceed that."]
    lines += ["", "Means over seeds (± sd):", "", "| variant | holdout HV | × grid | items |", "|---|---:|---:|---:|"]
    means = {}
    for v, per_seed in V.items():
        m, sd = mean_sd([r["hv"] for r in per_seed.values()])
        means[v] = m
        items, _ = mean_sd([r["items"] for r in per_seed.values()])
        ratio = m / grid["hv"] if m and grid["hv"] else None
        lines.append(f"| {v} | {fmt(m)} ± {fmt(sd, '.2g')} | {fmt(ratio, '.2f')} "
                     f"| {fmt(items, '.0f')} |")
    if v_def in V:
        lines += ["", f"Spearman between each rung's objective and the holdout ({v_def}, mean over seeds):", "",
                  "| rung | " + " | ".join(V[v_def][args.seeds[0]]["spearman"][0]) + " |",
                  "|---|" + "---:|" * len(V[v_def][args.seeds[0]]["spearman"][0])]
        rungs = sorted(V[v_def][args.seeds[0]]["spearman"])
        sp_r0 = {}
        for r in rungs:
            cells = []
            for obj in V[v_def][args.seeds[0]]["spearman"][r]:
                m, sd = mean_sd([run["spearman"][r][obj] for run in V[v_def].values()])
                cells.append(f"{fmt(m, '.2f')} ± {fmt(sd, '.2f')}")
                if r == 0:
                    sp_r0[obj] = m
            lines.append(f"| {'full' if r == rungs[-1] else r} | " + " | ".join(cells) + " |")
        lines += ["", "Targets:", ""]

        def verdict(ok):
            return "met" if ok else "**NOT met**"

        items_ratio, _ = mean_sd([r["items"] / grid["items"] for r in V[v_def].values()])
        g = means[v_def] / grid["hv"] if means.get(v_def) and grid["hv"] else None
        lines.append(f"- default search ({v_def}) ≥ {TARGETS['grid_ratio']}× the grid's holdout HV at ≤ its compute: "
                     f"{fmt(g, '.2f')}× at {fmt(items_ratio, '.2f')}× the grid's items — "
                     f"{verdict(g is not None and g >= TARGETS['grid_ratio'] and items_ratio <= 1)}.")
        lines.append(f"- rung-0 Spearman ≥ {TARGETS['spearman_r0']} per objective: "
                     + ", ".join(f"{k} {fmt(x, '.2f')}" for k, x in sp_r0.items()) + " — "
                     + verdict(all(x is not None and x >= TARGETS["spearman_r0"] for x in sp_r0.values())) + ".")
        if v_ff in V:
            fr = []
            for seed, r in V[v_def].items():
                target = V[v_ff][seed]["hv"]
                xs, ys = map(np.array, r["curve"])
                hit = np.flatnonzero(ys >= target - 1e-15)
                fr.append(float(xs[hit[0]]) / V[v_ff][seed]["items"] if len(hit) and target > 0 else None)
            m, _ = mean_sd(fr)
            reached = sum(f is not None for f in fr)
            lines.append(f"- multi-fidelity reaches the full-fidelity final HV at ≤ {TARGETS['mf_fraction']:g} of its "
                         f"compute: fraction {fmt(m, '.2f')} (reached in {reached}/{len(fr)} seeds) — "
                         f"{verdict(reached == len(fr) and m is not None and m <= TARGETS['mf_fraction'])}.")
        if v_rand in V and v_rand != v_def and means.get(v_rand):
            rr = means[v_def] / means[v_rand]
            lines.append(f"- default sampler ({default}) ≥ {TARGETS['random_ratio']}× random: {rr:.2f}× — "
                         f"{verdict(rr >= TARGETS['random_ratio'])}.")
        mf = {v: m for v, m in means.items() if v.startswith("mf-") and m is not None}
        if mf:
            best = max(mf, key=mf.get)
            lines.append(f"- samplers by mean holdout HV: " + ", ".join(f"{v[3:]} {m:.4g}" for v, m in
                                                                        sorted(mf.items(), key=lambda kv: -kv[1]))
                         + f"; best: {best[3:]}" + (" (the space's default)" if best == v_def else
                                                    f" (the space's default is {default}: change `sampler:`)") + ".")
        beats = sorted({b for r in V[v_def].values() for b in r["beats_mix"]})
        lines.append(f"- search trials whose holdout point dominates the data-mix model's: "
                     f"{', '.join(beats) or 'none'}.")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() == RESULTS.parent.resolve():
        write_section("quality", text)
    else:
        (out / "BENCHMARKS.quality.md").write_text(text)
    (out / "bench-quality" / "table.json").write_text(json.dumps(table, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
