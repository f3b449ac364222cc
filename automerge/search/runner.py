"""The merge-and-evaluate step of a trial: a `Job` in, an `Evaluation` out.

A `TrialRunner` is anything with ``evaluate(job)`` (and optionally ``setup()``, ``free()``);
`EngineRunner` is the real one (`automerge.engine.ResidentMerger` + `automerge.eval.Evaluator`),
tests inject fakes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from automerge.noise import ItemScores


@dataclass
class Job:
    """One evaluation: a recipe (or a reference model) at one rung."""

    rung: int
    rung_name: str
    limit: int | None  # items per task (None: all)
    tasks: list[str]
    kind: str
    label: str
    recipe: Any | None  # automerge.recipe.Recipe; None for a reference model
    model_path: str | None  # the reference model's path
    trial_number: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    scores: dict[str, float]  # task -> primary score
    counts: dict[str, int] = field(default_factory=dict)  # task -> items evaluated
    failed: str | None = None
    apply_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    items: dict[str, ItemScores] = field(default_factory=dict)  # task -> per-item scores (error bars)


class TrialRunner(Protocol):
    def evaluate(self, job: Job) -> Evaluation: ...


class EngineRunner:
    """The real runner: base and task vectors resident (ResidentMerger), one live model rewritten
    in place per trial, scored by the Evaluator. Models load on the first job."""

    def __init__(self, space: Any, *, device: str | None = None, threads: int | None = None):
        self.space = space
        self.device = device or space.device
        self.threads = threads
        self.merger: Any = None
        self.evaluator: Any = None

    def setup(self) -> None:
        if self.merger is not None:
            return
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from automerge.engine import ResidentMerger
        from automerge.eval import Evaluator

        self.merger = ResidentMerger(base=self.space.base,
                                     specialists={s.name: s.path for s in self.space.specialists},
                                     device=self.device, dtype=self.space.dtype)
        self.evaluator = Evaluator(tokenizer=self.merger.tokenizer, device=self.merger.device, seed=self.space.seed)

    def _load_reference(self, path: str) -> None:
        """Write a reference model's weights into the live model, in place: no second model in
        memory (a 7B reference next to the resident merge would not fit a GPU). The next
        `apply` rewrites every tensor, so the merge does not see them."""
        import torch

        from automerge.specialists import open_specialist

        ckpt = open_specialist(path, base=self.merger.base_checkpoint)  # a LoRA or state dict: base + delta
        live = self.merger.model.state_dict()
        with torch.no_grad():
            for name in ckpt.names:
                if name not in live:
                    raise RuntimeError(f"reference {path}: tensor {name} has no parameter in the live model")
                target = live[name]
                target.copy_(ckpt.read(name, dtype=target.dtype, device=target.device))

    def evaluate(self, job: Job) -> Evaluation:
        self.setup()
        t0 = time.perf_counter()
        if job.recipe is not None:
            recipe = job.recipe
            if recipe.method == "fisher" and self.space._fisher:
                from automerge.fisher import reachable_fisher

                recipe = reachable_fisher(recipe, self.space._fisher)  # a peer's trial names the peer's path
            self.merger.apply(recipe)
        else:
            self._load_reference(job.model_path)
        model = self.merger.model
        t1 = time.perf_counter()
        results = self.evaluator.run(model, job.tasks, limit=job.limit)
        t2 = time.perf_counter()
        failed = [f"{t}: {r.failed}" for t, r in results.items() if getattr(r, "failed", None)]
        return Evaluation(
            scores={t: float(r.score) for t, r in results.items()},
            counts={t: int(r.n) for t, r in results.items()},
            failed="; ".join(failed) or None,
            apply_seconds=t1 - t0,
            eval_seconds=t2 - t1,
            metrics={t: dict(r.metrics) for t, r in results.items()},
            items={t: ItemScores(metric=r.metric, num=np.asarray(r.item_num), den=np.asarray(r.item_den))
                   for t, r in results.items() if getattr(r, "item_num", None) is not None and not r.failed},
        )

    def free(self) -> None:
        """After a failure (OOM…): release cached device memory."""
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
