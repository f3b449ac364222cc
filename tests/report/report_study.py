"""Build a small finished study in exactly the search's storage format, with Optuna directly.

One Optuna study per rung (``<name>``, ``<name>:r1``, ``<name>:full``), metric names set, trial
user_attrs ``recipe`` (YAML), ``rung``, ``rung_name``, ``parent``, ``origin``, ``kind``, ``label``,
``score:<task>``, ``eval_seconds``, ``apply_seconds``; rung 0's study user_attrs hold the
``space`` (YAML) — as `automerge.search.study` writes them. Baselines are the search's
("<name> alone", "uniform linear", "task arithmetic λ=1", "ties density 0.5"); the reference
model ("mix") stores no recipe.

Scores come from `score_fn(recipe | None, model_path | None, rung_label, limit) -> {task: score}`:
either the synthetic `synthetic_scores` (instant) or a real evaluation; each objective is one
task's score (`tasks`: objective -> task). `limits`: items per task at rungs 0, 1, full.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import warnings
from pathlib import Path
from typing import Callable, Mapping

import optuna
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from automerge.recipe import ModelSpec, Recipe

DEMO_TASKS = {"nl": "prose_ll", "code": "code_body_ll"}  # objective -> task, real evaluation
DEMO_LIMITS = (3, 6, 10)  # items per task at rungs 0, 1, full
SYNTHETIC_TASKS = {"nl": "prose", "code": "code"}  # objective -> the task it is (one task each)
T0 = dt.datetime(2025, 1, 1, 22, 0, 0)

ScoreFn = Callable[[Recipe | None, str | None, str, int | None], Mapping[str, float]]


def synthetic_scores(recipe: Recipe | None, model: str | None, rung: str, limit: int | None) -> dict[str, float]:
    """Smooth made-up scores: code grows with the code-like specialists' scale, prose with lang's."""
    if recipe is None:  # the data-mix reference: decent at both
        return {"code": 0.40, "prose": 0.47}
    lam = float(recipe.parameters.get("lambda", 1.0)) if not isinstance(recipe.parameters.get("lambda"), dict) else 1.0
    w = {}
    for m in recipe.models:
        v = m.parameters.get("weight", 1.0)
        v = sum(v.values()) / len(v) if isinstance(v, dict) else float(v)
        d = m.parameters.get("density", 1.0)
        d = sum(d.values()) / len(d) if isinstance(d, dict) else float(d)
        w[m.name] = lam * v * (0.7 + 0.3 * d)
    if recipe.method == "linear":
        total = sum(w.values()) or 1.0
        w = {k: v / total for k, v in w.items()}
    code = 0.30 + 0.2 * math.tanh(w.get("code", 0) + 0.5 * w.get("tests", 0)) - 0.05 * w.get("lang", 0) ** 2
    prose = 0.40 + 0.2 * math.tanh(w.get("lang", 0)) - 0.04 * (w.get("code", 0) + w.get("tests", 0)) ** 2
    shift = {"0": 0.01, "1": 0.005}.get(rung, 0.0)  # proxy rungs a little optimistic
    return {"code": round(code + shift, 6), "prose": round(prose + shift, 6)}


def space_yaml(base: str, specialists: Mapping[str, str], domains: Mapping[str, str],
               reference: str | None, tasks: Mapping[str, str], limits: tuple) -> str:
    space = {
        "name": "demo", "base": base,
        "specialists": [{"name": n, "path": p, "domain": domains.get(n, "general")} for n, p in specialists.items()],
        "references": [{"name": "mix", "path": reference}] if reference else [],
        "methods": ["task_arithmetic", "ties"],
        "objectives": [{"name": o, "tasks": {t: 1.0}} for o, t in tasks.items()],
        "rungs": {"items": list(limits[:-1]), "eta": 3},
        "full_evaluation": {"limit": limits[-1]},
    }
    return yaml.safe_dump(space, sort_keys=False)


def baseline_recipes(base: str, specialists: Mapping[str, str]) -> list[tuple[str, Recipe]]:
    names = list(specialists)

    def make(method: str, weights: Mapping[str, float], extra: Mapping[str, float], params: dict) -> Recipe:
        return Recipe(method=method, base=base,
                      models=[ModelSpec(name=n, path=specialists[n], parameters={"weight": weights[n], **extra})
                              for n in names], parameters=params)

    out = [(f"{s} alone", make("task_arithmetic", {n: float(n == s) for n in names}, {}, {"lambda": 1.0}))
           for s in names]
    out.append(("uniform linear", make("linear", {n: 1.0 for n in names}, {}, {"normalize": True})))
    out.append(("task arithmetic λ=1", make("task_arithmetic", {n: 1.0 for n in names}, {}, {"lambda": 1.0})))
    out.append(("ties density 0.5", make("ties", {n: 1.0 for n in names}, {"density": 0.5}, {"lambda": 1.0})))
    return out


def sample_recipe(rng: random.Random, base: str, specialists: Mapping[str, str]) -> tuple[Recipe, dict, dict]:
    """A recipe like the search samples (ties or task arithmetic, 2 layer groups), with its params."""
    method = rng.choice(["task_arithmetic", "ties"])
    params: dict = {"method": method}
    dists: dict = {"method": CategoricalDistribution(["task_arithmetic", "ties"])}
    groups = ["block0", "block1", "default"]
    models = []
    for n, p in specialists.items():
        mp: dict = {}
        key = f"{method}.weight.{n}"
        params[key] = round(rng.uniform(0.0, 1.5), 4)
        dists[key] = FloatDistribution(0.0, 1.5)
        mp["weight"] = params[key]
        if method == "ties":
            dens = {}
            for g in groups:
                key = f"ties.density.{n}[{g}]"
                params[key] = round(rng.uniform(0.1, 1.0), 4)
                dists[key] = FloatDistribution(0.1, 1.0)
                dens[g] = params[key]
            mp["density"] = dens
        models.append(ModelSpec(name=n, path=p, parameters=mp))
    recipe = Recipe(method=method, base=base, models=models, parameters={"lambda": 1.0},
                    num_groups=2 if method == "ties" else 1)
    return recipe, params, dists


def make_study(
    url: str,
    name: str,
    *,
    base: str,
    specialists: Mapping[str, str],
    domains: Mapping[str, str] | None = None,
    reference: str | None = None,
    n_search: int = 12,
    promote: tuple[int, int] = (4, 2),
    score_fn: ScoreFn = synthetic_scores,
    tasks: Mapping[str, str] = SYNTHETIC_TASKS,
    limits: tuple = (4, 8, None),
    seed: int = 0,
    first: Recipe | None = None,
) -> dict[str, optuna.Study]:
    """Create and fill `name`, `name:r1`, `name:full` in storage `url`. Returns the three studies.

    `first`: a recipe enqueued before any sampled trial (a warm start), kind search, label "warm-start".
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    domains = dict(domains or {"code": "code", "lang": "nl", "tests": "code"})
    names = [name, f"{name}:r1", f"{name}:full"]
    labels = ["0", "1", "full"]
    studies = {}
    for n in names:
        s = optuna.create_study(study_name=n, storage=url, directions=["maximize", "maximize"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s.set_metric_names(list(tasks))
        studies[n] = s
    s0 = studies[name]
    s0.set_user_attr("rungs", [{"name": lab, "study": n, "items": lim} for lab, n, lim in zip(["r0", "r1", "full"], names, limits)])
    s0.set_user_attr("space", space_yaml(base, specialists, domains, reference, tasks, limits))

    rng = random.Random(seed)
    clock = [T0]

    def add(rung: int, recipe: Recipe | None, *, kind: str, label: str, parent: int | None, origin: int | None,
            params: dict | None = None, dists: dict | None = None, model: str | None = None) -> FrozenTrial:
        study = studies[names[rung]]
        scores = score_fn(recipe, model, labels[rung], limits[rung])
        seconds = 20.0 * (rung + 1) + rng.uniform(0, 5)
        start = clock[0]
        end = start + dt.timedelta(seconds=seconds + 1.0)
        clock[0] = end
        attrs = {"rung": rung, "rung_name": ["r0", "r1", "full"][rung], "items": limits[rung], "parent": parent,
                 "origin": origin, "kind": kind, "label": label, "eval_seconds": round(seconds, 3),
                 "apply_seconds": 1.0, **{f"score:{t}": float(v) for t, v in scores.items()}}
        if recipe is not None:
            attrs["recipe"] = recipe.to_yaml()
        if model is not None:
            attrs["model_path"] = model
        number = len(study.get_trials(deepcopy=False))
        trial = FrozenTrial(
            number=number, state=TrialState.COMPLETE, value=None,
            values=[float(scores[t]) for t in tasks.values()],
            datetime_start=start, datetime_complete=end, params=params or {}, distributions=dists or {},
            user_attrs=attrs, system_attrs={}, intermediate_values={}, trial_id=0,
        )
        study.add_trial(trial)
        return study.get_trials(deepcopy=False)[-1]

    # rung 0: baselines, reference, (warm start), sampled trials
    entries = []  # (number at rung 0, recipe, kind, label, params, dists, model)
    for label, recipe in baseline_recipes(base, specialists):
        t = add(0, recipe, kind="baseline", label=label, parent=None, origin=None)
        entries.append((t.number, recipe, "baseline", label, None, None, None))
    if reference:
        t = add(0, None, kind="reference", label="mix", parent=None, origin=None, model=reference)
        entries.append((t.number, None, "reference", "mix", None, None, reference))
    if first is not None:
        t = add(0, first, kind="search", label="warm-start", parent=None, origin=None)
        entries.append((t.number, first, "search", "warm-start", None, None, None))
    for _ in range(n_search):
        recipe, params, dists = sample_recipe(rng, base, specialists)
        t = add(0, recipe, kind="search", label="", parent=None, origin=None, params=params, dists=dists)
        entries.append((t.number, recipe, "search", "", params, dists, None))

    # promotions: yardsticks always; search trials by sum of objectives (good enough for a fixture)
    current = entries
    for rung, k in ((1, promote[0]), (2, promote[1])):
        prev = {t.number: t for t in studies[names[rung - 1]].get_trials(deepcopy=False)}
        search = [e for e in current if e[2] == "search"]
        search.sort(key=lambda e: -sum(prev[e[0]].values))
        chosen = [e for e in current if e[2] != "search"] + search[:k]
        nxt = []
        for number, recipe, kind, label, params, dists, model in chosen:
            origin = prev[number].user_attrs.get("origin")
            origin = number if origin is None else origin
            t = add(rung, recipe, kind=kind, label=label, parent=number, origin=origin, params=params,
                    dists=dists, model=model)
            nxt.append((t.number, recipe, kind, label, params, dists, model))
        current = nxt
    return studies


# -- real evaluation -----------------------------------------------------------------------------


class RealScorer:
    """Merge with ResidentMerger and score with the real Evaluator (one live model per specialist set)."""

    def __init__(self, data_dir: Path, tasks: dict[str, str]):
        self.data_dir = data_dir
        self.tasks = list(tasks.values())
        self.mergers: dict[tuple, object] = {}
        self.evaluator = None

    def merger(self, recipe):
        from automerge.engine import ResidentMerger

        key = (recipe.base, tuple((m.name, m.path) for m in recipe.models))
        if key not in self.mergers:
            self.mergers[key] = ResidentMerger(base=recipe.base, specialists={m.name: m.path for m in recipe.models},
                                               device="cpu", dtype="float32")
        return self.mergers[key]

    def _evaluator(self, tokenizer):
        from automerge.eval import Evaluator

        if self.evaluator is None:
            self.evaluator = Evaluator(tokenizer=tokenizer, device="cpu", data_dir=self.data_dir, seed=0)
        return self.evaluator

    def results(self, recipe, model_path, tasks, limit):
        """TaskResults of a recipe (merged in place) or of a model directory (a reference)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from automerge.checkpoints import resolve_model_path

        if recipe is not None:
            m = self.merger(recipe)
            m.apply(recipe)
            model, tok = m.model, m.tokenizer
        else:
            path = resolve_model_path(model_path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            tok = AutoTokenizer.from_pretrained(path)
        return self._evaluator(tok).run(model, list(tasks), limit=limit)

    def __call__(self, recipe, model_path, rung, limit):
        res = self.results(recipe, model_path, self.tasks, limit)
        assert all(r.failed is None and math.isfinite(r.score) for r in res.values())
        return {t: float(r.score) for t, r in res.items()}


class RealRunner:
    """automerge.search's TrialRunner with the real merge + Evaluator on the fixture's proxy data."""

    def __init__(self, scorer: RealScorer):
        self.scorer = scorer
        self.jobs: list = []

    def evaluate(self, job):
        import time

        from automerge.search.worker import Evaluation

        self.jobs.append(job)
        t0 = time.perf_counter()
        res = self.scorer.results(job.recipe, job.model_path, job.tasks, job.limit)
        return Evaluation(scores={t: float(r.score) for t, r in res.items()},
                          counts={t: int(r.n) for t, r in res.items()},
                          failed="; ".join(f"{t}: {r.failed}" for t, r in res.items() if r.failed) or None,
                          eval_seconds=time.perf_counter() - t0)


def evaluate_dir(model_dir: Path, data_dir: Path, tasks: list[str], limit: int | None) -> dict[str, float]:
    """Load a saved model directory and score it like the study did."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from automerge.eval import Evaluator

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    res = Evaluator(tokenizer=tok, device="cpu", data_dir=data_dir, seed=0).run(model, tasks, limit=limit)
    return {t: float(r.score) for t, r in res.items()}
