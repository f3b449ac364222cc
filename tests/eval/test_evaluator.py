"""The Evaluator on a live model: per-task results, in-place weight changes, NaN logits."""

from __future__ import annotations

import math

import pytest
import torch

from automerge.eval import PROXY_TASKS, Evaluator, TaskResult, aggregate, available_tasks
from automerge.errors import EvalError


def test_available_tasks_lists_proxies_full_and_lm_eval():
    names = available_tasks()
    assert set(PROXY_TASKS) <= set(names)
    assert "humaneval" in names and "summarization" in names
    assert any(n.startswith("lm_eval:") for n in names)


def test_run_all_proxies(evaluator, tiny):
    model, _ = tiny
    res = evaluator.run(model, list(PROXY_TASKS), limit=2)
    assert list(res) == list(PROXY_TASKS)
    for name, r in res.items():
        assert isinstance(r, TaskResult)
        assert r.task == name and r.n == 2 and r.failed is None
        assert r.domain == PROXY_TASKS[name].domain in ("nl", "code")
        assert r.metric == PROXY_TASKS[name].metric and r.metrics[r.metric] == r.score
        assert 0.0 <= r.score <= 1.0
        if PROXY_TASKS[name].kind == "ll":
            assert r.metrics["ll_per_token"] < 0
            assert r.score == pytest.approx(math.exp(r.metrics["ll_per_token"]))
    agg = aggregate(res)
    assert set(agg) == {"nl", "code"}
    w = aggregate(res, {"prose_ll": 2.0, "code_body_ll": 1.0})
    assert w == {"nl": pytest.approx(res["prose_ll"].score), "code": pytest.approx(res["code_body_ll"].score)}


def test_per_item_scores_reproduce_the_task_score_and_nest(evaluator, tiny):
    """item_num / item_den (what error bars come from) pool back to the score, and a smaller
    limit gives the first items of a larger one (paired comparisons across rungs)."""
    from automerge.noise import ItemScores

    model, _ = tiny
    big = evaluator.run(model, list(PROXY_TASKS), limit=4)
    small = evaluator.run(model, list(PROXY_TASKS), limit=2)
    for name, r in big.items():
        assert len(r.item_num) == len(r.item_den) == r.n == 4
        items = ItemScores(metric=r.metric, num=r.item_num, den=r.item_den)
        assert items.score() == pytest.approx(r.score, rel=1e-9)
        assert small[name].item_num == pytest.approx(r.item_num[:2], rel=1e-5)
        if PROXY_TASKS[name].kind == "mc":
            assert set(r.item_den) == {1.0}


def test_same_weights_same_scores_and_in_place_updates_are_seen(evaluator, tiny):
    model, _ = tiny
    tasks = ["prose_ll", "code_bug_mc"]
    a = evaluator.run(model, tasks, limit=3)
    n_plans = len(evaluator._plans)
    b = evaluator.run(model, tasks, limit=3)
    assert {k: v.metrics for k, v in a.items()} == {k: v.metrics for k, v in b.items()}
    w = model.model.layers[0].mlp.down_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(3.0)                 # what the merge engine does: same object, new weights
        c = evaluator.run(model, tasks, limit=3)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    assert c["prose_ll"].metrics["ll_per_token"] != a["prose_ll"].metrics["ll_per_token"]
    assert len(evaluator._plans) == n_plans          # nothing re-planned or re-tokenised
    d = evaluator.run(model, tasks, limit=3)
    assert d["prose_ll"].metrics == a["prose_ll"].metrics


def test_nan_logits_give_a_failed_score_not_a_crash(evaluator, tiny):
    model, _ = tiny
    w = model.model.layers[1].self_attn.o_proj.weight
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w[0, 0] = float("nan")
        res = evaluator.run(model, ["prose_next_mc", "code_body_ll", "summarization"], limit=2)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    for name, r in res.items():
        assert r.failed and "NaN" in r.failed, name
        assert r.score == 0.0
    ok = evaluator.run(model, ["code_body_ll"], limit=2)["code_body_ll"]
    assert ok.failed is None


def test_bad_arguments_are_eval_errors(evaluator, tiny):
    with pytest.raises(EvalError, match="unknown task"):
        evaluator.run(tiny[0], ["no_such_task"])
    with pytest.raises(EvalError, match="limit"):
        evaluator.run(tiny[0], ["prose_ll"], limit=0)
    with pytest.raises(EvalError, match="tokenizer"):
        Evaluator(tokenizer=None, device="cpu")


def test_full_set_when_no_limit(tiny):
    model, tok = tiny
    ev = Evaluator(tokenizer=tok, device="cpu", batch_tokens=4096)
    r = ev.run(model, ["code_summary_ll"])["code_summary_ll"]
    assert r.n == ev.task_size("code_summary_ll") > 100


def test_summarization_generates_and_scores(evaluator, tiny):
    from automerge.eval._summarization import summary_metrics

    r = evaluator.run(tiny[0], ["summarization"], limit=2)["summarization"]
    assert r.failed is None and r.n == 2 and r.metric == "chrf"
    assert set(r.metrics) >= {"bleu4", "chrf", "rougeL"}
    perfect = summary_metrics(["Return the sum of a and b."], ["Return the sum of a and b."])
    assert perfect["bleu4"] == pytest.approx(1.0) and perfect["chrf"] == pytest.approx(1.0)
    assert perfect["rougeL"] == pytest.approx(1.0)
    assert summary_metrics(["zzz"], ["Return the sum of a and b."])["bleu4"] == 0.0


def test_prefix_sharing_does_not_change_scores(tiny):
    model, tok = tiny
    tasks = ["prose_next_mc", "code_summary_mc", "code_bug_mc", "code_body_ll"]
    shared = Evaluator(tokenizer=tok, device="cpu", batch_tokens=2048)
    plain = Evaluator(tokenizer=tok, device="cpu", batch_tokens=2048, share_prefixes=False)
    a, b = shared.run(model, tasks, limit=3), plain.run(model, tasks, limit=3)
    for t in tasks:
        for k, v in a[t].metrics.items():
            assert v == pytest.approx(b[t].metrics[k], rel=1e-5, abs=1e-6), (t, k)
    pa, pb = shared._pooled_plan(model, tasks, 3).plan, plain._pooled_plan(model, tasks, 3).plan
    assert pa.n_input_tokens < pb.n_input_tokens == pb.n_request_tokens
