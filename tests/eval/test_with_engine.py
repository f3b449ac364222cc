"""The Evaluator scores the merge engine's live model: one Evaluator, one model object, the
weights rewritten in place by ResidentMerger.apply between runs."""

from __future__ import annotations

from automerge import engine
from automerge.eval import Evaluator


def test_scores_follow_in_place_merges(tiny_dir, tiny_specialist_dir):
    from automerge.recipe import ModelSpec, Recipe

    merger = engine.ResidentMerger(base=tiny_dir, specialists={"code": tiny_specialist_dir}, device="cpu")
    ev = Evaluator(tokenizer=merger.tokenizer, device=merger.device)
    model = merger.model
    tasks = ["prose_ll", "code_summary_mc"]

    def merged(weight):
        merger.apply(Recipe(method="task_arithmetic", base=str(tiny_dir), models=[
            ModelSpec(name="code", path=str(tiny_specialist_dir), parameters={"weight": weight})]))
        assert merger.model is model
        return ev.run(merger.model, tasks, limit=3)

    a0, a1, b0 = merged(0.0), merged(1.0), merged(0.0)
    assert a0["prose_ll"].metrics == b0["prose_ll"].metrics            # same weights, same numbers
    assert a1["prose_ll"].metrics["ll_per_token"] != a0["prose_ll"].metrics["ll_per_token"]
    assert len(ev._plans) == 1                                           # planned once
