"""Conformance of every registered task: the Task protocol (prepare / size / run) on a tiny model,
for each entry of TASKS and one example name of each family (data:, lm_eval:)."""

from __future__ import annotations

import json
import math

import pytest

from automerge.errors import EvalError
from automerge.eval import FAMILIES, TASKS, Evaluator, TaskResult, get_task
from automerge.eval._lm_eval import export_lm_eval_task
from automerge.eval._tasks import PooledTask, TaskSpec


def _data_file(tmp_path) -> str:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{w} is", "completion": f" a word {i}."}) + "\n"
                            for i, w in enumerate(["one", "two", "three"])))
    return f"data:{path}?domain=code"


# one example name per family: a new family without an example here fails test_every_family_has_an_example
FAMILY_EXAMPLES = {
    "data:": _data_file,
    "lm_eval:": lambda tmp_path: f"lm_eval:{export_lm_eval_task('code_body_mc', tmp_path / 'lm', limit=3)}",
}


@pytest.fixture(scope="module")
def ev(tiny):
    # short generations keep the two full tasks fast; the sandbox is the real one
    return Evaluator(tokenizer=tiny[1], device="cpu", batch_tokens=2048, humaneval_max_new_tokens=8,
                     summary_max_new_tokens=8)


def _check_protocol(ev, model, name: str) -> None:
    task = get_task(name)
    assert task.name == name and isinstance(task.pooled, bool)
    assert task.describe()
    task.prepare(ev)
    n = task.size(ev)
    assert n >= 2 and ev.task_size(name) == n
    r = task.run(ev, model, 2)
    assert isinstance(r, TaskResult) and r.task == name and r.failed is None, r.failed
    assert r.n == 2 and r.domain in ("nl", "code")
    assert math.isfinite(r.score) and 0.0 <= r.score <= 1.0, (name, r.score)
    assert r.metrics.get(r.metric, r.score) == r.score
    # through the Evaluator (pooled tasks then share one plan with the others): the same result
    assert ev.run(model, [name], limit=2)[name].score == pytest.approx(r.score, rel=1e-9)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_runs(ev, tiny, name):
    _check_protocol(ev, tiny[0], name)


@pytest.mark.parametrize("prefix", list(FAMILIES))
def test_every_family_runs(ev, tiny, tmp_path, prefix):
    name = FAMILY_EXAMPLES[prefix](tmp_path)
    assert name.startswith(prefix)
    _check_protocol(ev, tiny[0], name)


def test_every_family_has_an_example():
    assert set(FAMILY_EXAMPLES) == set(FAMILIES)


def test_proxy_specs_carry_their_builder_and_shipped_items():
    for name, task in TASKS.items():
        if isinstance(task, PooledTask):
            assert isinstance(task, TaskSpec) and callable(task.build) and task.max_items > 0, name


def test_unknown_names_fail_listing_what_is_known():
    with pytest.raises(EvalError, match=r"unknown task\(s\) 'nope'.*prose_ll.*humaneval.*data:.*lm_eval:"):
        get_task("nope")
    with pytest.raises(EvalError, match="domain"):
        get_task("data:x.jsonl?domain=math")


def test_generation_tasks_have_no_items_to_prepare(ev):
    with pytest.raises(EvalError, match="generates text"):
        ev.prepared("humaneval")
