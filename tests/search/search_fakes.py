"""A fake TrialRunner for worker/scheduler tests: scores are a known function of the recipe.

Two objectives over two specialists, code and lang: with w = mean weight per specialist,
    code score = 1 - (w_code - 0.8)^2 - 0.3 * w_lang^2
    nl score   = 1 - (w_lang - 0.8)^2 - 0.3 * w_code^2
plus rung noise that shrinks as the rung evaluates more items (seeded by the recipe).
With ``items=True`` each task also returns per-item scores (`fake_items`): the first n items of
one fixed per-task sequence plus the trial's score, so their mean is the score and any two trials
are paired on the same items.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from automerge.noise import ItemScores
from automerge.search.worker import Evaluation, Job


def fake_items(task: str, score: float, n: int) -> ItemScores:
    """n per-item values with mean `score`: a per-task item difficulty (the same items for every
    trial, nested: the first n of one sequence), a smaller trial-specific part (seeded by the
    score), and the score."""
    seed = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
    difficulty = np.random.default_rng(seed).normal(0.0, 0.05, 1000)[:n]
    own = np.random.default_rng(int.from_bytes(hashlib.sha256(repr((task, score)).encode()).digest()[:4], "little"))
    x = difficulty + own.normal(0.0, 0.01, n)
    return ItemScores(metric="p_correct", num=x - x.mean() + score, den=np.ones(n))


def _mean(value):
    if isinstance(value, dict):
        return sum(value.values()) / len(value)
    return float(value)


def recipe_weights(recipe) -> dict[str, float]:
    out = {}
    for m in recipe.models:
        w = _mean(m.parameters.get("weight", 1.0))
        d = _mean(m.parameters.get("density", 1.0))
        out[m.name] = w * (0.5 + 0.5 * d)
    if recipe.method == "linear":
        total = sum(out.values()) or 1.0
        out = {k: v / total for k, v in out.items()}
    return out


def true_scores(recipe) -> dict[str, float]:
    w = recipe_weights(recipe)
    wc, wl = w.get("code", 0.0), w.get("lang", 0.0)
    return {"code_body_ll": 1 - (wc - 0.8) ** 2 - 0.3 * wl**2,
            "prose_ll": 1 - (wl - 0.8) ** 2 - 0.3 * wc**2}


class FakeRunner:
    def __init__(self, delay: float = 0.0, fail_labels: tuple[str, ...] = (), nan_methods: tuple[str, ...] = (),
                 items: bool = False):
        self.items = items
        self.delay = float(os.environ.get("FAKE_RUNNER_DELAY", delay))
        self.fail_labels = fail_labels
        self.nan_methods = nan_methods
        self.jobs: list[Job] = []

    def evaluate(self, job: Job) -> Evaluation:
        self.jobs.append(job)
        if self.delay:
            time.sleep(self.delay)
        if job.label in self.fail_labels:
            raise RuntimeError("CUDA out of memory (fake)")
        if job.recipe is None:  # reference model
            scores = {"code_body_ll": 0.7, "prose_ll": 0.7}
        else:
            scores = true_scores(job.recipe)
            if job.recipe.method in self.nan_methods:
                scores = {k: float("nan") for k in scores}
            seed = hashlib.sha256(job.recipe.to_yaml().encode()).digest()
            noise = (seed[0] / 255 - 0.5) * (0.2 / (job.limit or 1000) ** 0.5)
            scores = {k: v + noise for k, v in scores.items()}
        scores = {t: scores.get(t, 0.5) for t in job.tasks}
        n = job.limit or 100
        items = {t: fake_items(t, s, n) for t, s in scores.items()} if self.items else {}
        return Evaluation(scores=scores, counts={t: n for t in job.tasks}, eval_seconds=self.delay, items=items)
