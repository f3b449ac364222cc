"""data:PATH.jsonl tasks: the user's own items scored exactly like the shipped proxies (and like
lm-eval on the same requests); a bad file or record is refused naming its line."""

from __future__ import annotations

import json

import pytest

from automerge.eval import Evaluator
from automerge.eval import _data_tasks, _tasks
from automerge.errors import EvalError, SpaceError


def _write(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _shipped(task: str, n: int) -> list[dict]:
    return _tasks.load_items(task)[:n]


def test_data_tasks_score_like_the_shipped_proxies(tiny, tmp_path):
    """The same items as a shipped proxy (a copy of prose_ll / prose_next_mc cut to 10 items) and as
    data: files give the same metrics."""
    model, tok = tiny
    ll, mc = _shipped("prose_ll", 10), _shipped("prose_next_mc", 10)
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    _write(shipped_dir / "prose_ll.jsonl", ll)
    _write(shipped_dir / "prose_next_mc.jsonl", mc)
    comp = _write(tmp_path / "comp.jsonl", [{"id": it["id"], "prompt": it["context"], "completion": it["continuation"]}
                                            for it in ll])
    choice = _write(tmp_path / "mc.jsonl", [{"id": it["id"], "prompt": it["context"], "choices": it["choices"],
                                             "answer": it["gold"]} for it in mc])
    ref = Evaluator(tokenizer=tok, device="cpu", data_dir=shipped_dir).run(model, ["prose_ll", "prose_next_mc"])
    ev = Evaluator(tokenizer=tok, device="cpu")
    got = ev.run(model, [f"data:{comp}", f"data:{choice}?domain=code"])
    a, b = got[f"data:{comp}"], got[f"data:{choice}?domain=code"]
    assert (a.metric, a.domain, a.n, b.metric, b.domain, b.n) == ("token_prob", "nl", 10, "acc_norm", "code", 10)
    for mine, theirs in ((a, ref["prose_ll"]), (b, ref["prose_next_mc"])):
        assert set(mine.metrics) == set(theirs.metrics)
        for k, v in theirs.metrics.items():
            assert mine.metrics[k] == pytest.approx(v, abs=1e-6), k
    metric = ev.run(model, [f"data:{choice}?metric=acc"])[f"data:{choice}?metric=acc"]
    assert metric.metric == "acc" and metric.score == pytest.approx(ref["prose_next_mc"].metrics["acc"])


def test_data_tasks_equal_lm_eval_on_the_same_requests(tiny, tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    items = [{"context": c, "continuation": x} for c, x in [
        ("The quick brown", " fox jumps over the lazy dog."), ("def add(a, b):", "\n    return a + b\n"),
        ("", "hello world"),                                               # empty prompt: the prefix token
        ("Tests check that the function returns the right value. " * 12, " Then it raises."),  # left-cut
        ("x = ", "1")]]
    comp = _write(tmp_path / "comp.jsonl", [{"prompt": it["context"], "completion": it["continuation"]}
                                            for it in items])
    texts = ["The quick brown fox jumps over the lazy dog. " * 12, "def add(a, b):\n    return a + b\n"]
    text = _write(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    ev = Evaluator(tokenizer=tok, device="cpu", max_length=64)        # several windows per long text
    got = ev.run(model, [f"data:{comp}", f"data:{text}"])
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=64)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(it["context"], it["continuation"]), idx=i)
            for i, it in enumerate(items)]
    theirs_ll = sum(x for x, _ in lm.loglikelihood(reqs, disable_tqdm=True))
    rolling = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
               for i, t in enumerate(texts)]
    theirs_roll = sum(lm.loglikelihood_rolling(rolling, disable_tqdm=True))
    for r, theirs in ((got[f"data:{comp}"], theirs_ll), (got[f"data:{text}"], theirs_roll)):
        assert r.metrics["ll_per_token"] * r.metrics["tokens"] == pytest.approx(theirs, abs=1e-3)
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert got[f"data:{text}"].metrics["tokens"] == n_tokens        # every token of every text, once


def test_data_task_subsets_are_nested_and_fixed(tiny, tmp_path):
    model, tok = tiny
    items = _shipped("code_body_ll", 12)
    path = _write(tmp_path / "d.jsonl", [{"id": it["id"], "prompt": it["context"], "completion": it["continuation"]}
                                         for it in items])
    task = f"data:{path}"
    a, b = Evaluator(tokenizer=tok, device="cpu"), Evaluator(tokenizer=tok, device="cpu")
    order = [it["id"] for it in a.prepared(task).items]
    assert order == [it["id"] for it in b.prepared(task).items]                   # the same for every run
    assert order == [it["id"] for it in _tasks.ordered(items, f"data:{path}", 0)]  # the shipped proxies' rule
    small = a.run(model, [task], limit=4)[task]
    # the first 4 of that order, alone in a file, score the same
    first4 = {i: it for i, it in enumerate(items)}
    keep = [next(it for it in first4.values() if it["id"] == i) for i in order[:4]]
    alone = _write(tmp_path / "first4.jsonl", [{"id": it["id"], "prompt": it["context"],
                                                "completion": it["continuation"]} for it in keep])
    whole = a.run(model, [f"data:{alone}"])[f"data:{alone}"]
    assert small.n == whole.n == 4 and small.metrics["ll_per_token"] == pytest.approx(whole.metrics["ll_per_token"])
    assert a.task_size(task) == 12


@pytest.mark.parametrize("lines, line, words", [
    (['{"text": "a"}', '{"text": "b"'], 2, "not valid JSON"),
    (['["text"]'], 1, "JSON object"),
    (['{"text": "a"}', '{"prompt": "p", "completion": "c"}'], 2, "one kind per file"),
    (['{"prompt": "p", "answer": 1}'], 1, "fields"),
    (['{"prompt": "p", "choices": ["a", "b"], "answer": 2}'], 1, "answer"),
    (['{"prompt": "p", "choices": "ab", "answer": 0}'], 1, "choices"),
    (['{"text": ""}'], 1, "non-empty"),
    (['{"id": "x", "text": "a"}', '', '{"id": "x", "text": "b"}'], 3, "repeats line 1"),
])
def test_bad_records_are_refused_by_line(tmp_path, lines, line, words):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(EvalError) as err:
        _data_tasks.load(f"data:{path}")
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: ") and words in msg and "\n" not in msg, msg


@pytest.mark.parametrize("query, words", [
    ("?domain=math", "domain"), ("?metric=bleu", "metric"), ("?limit=3", "unknown option"),
])
def test_bad_task_names_are_refused(tmp_path, query, words):
    path = _write(tmp_path / "ok.jsonl", ['{"text": "a b c"}'])
    with pytest.raises(EvalError, match=words):
        _data_tasks.load(f"data:{path}{query}")
    with pytest.raises(EvalError, match="does not apply"):
        _data_tasks.load(f"data:{path}?metric=acc")
    with pytest.raises(EvalError, match="does not exist"):
        _data_tasks.load(f"data:{tmp_path / 'missing.jsonl'}")


def test_search_space_takes_data_tasks(tmp_path, tiny_dir, tiny_specialist_dir):
    from automerge.search.space import SearchSpace

    good = _write(tmp_path / "val.jsonl", ['{"prompt": "p", "completion": " c"}'])
    bad = _write(tmp_path / "bad.jsonl", ['{"prompt": "p", "completion": " c"}', '{"prompt": 3, "completion": "c"}'])

    def space(task):
        return SearchSpace.from_dict({
            "base": str(tiny_dir), "specialists": [{"name": "a", "path": str(tiny_specialist_dir)}],
            "methods": ["task_arithmetic"], "parameters": {"weight": [0, 1]},
            "objectives": [{"name": "val", "tasks": {task: 1.0}}]}, source="space.yaml")

    space(f"data:{good}?domain=code").check_models()
    with pytest.raises(SpaceError, match=r"^space.yaml: objectives\[0\].tasks.data:.*: task .*domain 'math'"):
        space(f"data:{good}?domain=math")
    s = space(f"data:{bad}")             # the name is fine; the file is read before any model loads
    with pytest.raises(SpaceError, match=rf"^space.yaml: objectives\[0\].tasks.data:{bad}: {bad}:2: "):
        s.check_models()


def test_eval_command_takes_data_tasks(tmp_path, tiny_dir):
    import typer
    from typer.testing import CliRunner

    from automerge.eval.cli import register

    app = typer.Typer()

    @app.callback()
    def _main():
        pass

    register(app)
    good = _write(tmp_path / "val.jsonl", ['{"prompt": "def f():", "completion": "\\n    return 1\\n"}'])
    res = CliRunner().invoke(app, ["eval", str(tiny_dir), "--base", str(tiny_dir), "--task", f"data:{good}?domain=code",
                                   "--device", "cpu", "--csv", str(tmp_path / "out.csv")])
    assert res.exit_code == 0, res.output
    assert "data:" in (tmp_path / "out.csv").read_text()
    bad = _write(tmp_path / "bad.jsonl", ['{"prompt": "p"}'])
    res = CliRunner().invoke(app, ["eval", str(tiny_dir), "--task", f"data:{bad}", "--device", "cpu"])
    # raised before any model loads; automerge's main turns it into `error: …` and exit code 2
    assert isinstance(res.exception, EvalError) and str(res.exception).startswith(f"{bad}:1: ")


def test_qwen_example_reads_each_specialists_own_validation_data():
    from pathlib import Path

    from automerge.search.space import SearchSpace

    qwen = SearchSpace.load(Path(__file__).resolve().parents[2] / "search_spaces" / "qwen2.5-coder-7b.yaml")
    data = {o.name: [t for t in o.tasks if t.startswith("data:")] for o in qwen.objectives}
    assert all(data.values()), data      # every objective's rungs read a specialist's held-out split
    assert {_data_tasks.parse(t).domain for ts in data.values() for t in ts} == {"code", "nl"}
