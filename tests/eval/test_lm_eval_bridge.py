"""lm-eval bridge: a user's YAML task (relative data paths) gives lm-eval's own numbers, as a proxy
(nested subsets) or a full task, with one HFLM per model and no simple_evaluate per trial."""

from __future__ import annotations

import json

import pytest

from automerge.eval import Evaluator
from automerge.eval._lm_eval import export_lm_eval_task, parse_spec
from automerge.errors import EvalError


@pytest.fixture(scope="module")
def yaml_task(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval_tasks")
    return export_lm_eval_task("prose_next_mc", d, limit=12)


def _simple_evaluate(model, tok, yaml_path, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(yaml_path.parent)        # lm-eval resolves relative data_files against the cwd
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    out = simple_evaluate(model=lm, tasks=[yaml_path.stem], task_manager=TaskManager(
        include_defaults=False, include_path=str(yaml_path.parent)), log_samples=False, bootstrap_iters=0)
    return out["results"][yaml_path.stem]


def test_bridge_equals_simple_evaluate(yaml_task, tiny, monkeypatch, tmp_path):
    model, tok = tiny
    ev = Evaluator(tokenizer=tok, device="cpu")
    spec = f"lm_eval:{yaml_task}"
    monkeypatch.chdir(tmp_path)                 # our bridge does not depend on the cwd
    ours = ev.run(model, [spec])[spec]
    theirs = _simple_evaluate(model, tok, yaml_task, monkeypatch)
    assert ours.failed is None and ours.n == 12 and ours.domain == "nl"
    assert ours.metric == "acc_norm"
    assert ours.metrics["acc"] == pytest.approx(theirs["acc,none"])
    assert ours.metrics["acc_norm"] == pytest.approx(theirs["acc_norm,none"])
    # and the same items scored as automerge's own proxy task give the same accuracies
    native = ev.run(model, ["prose_next_mc"], limit=12)["prose_next_mc"]
    assert native.metrics["acc"] == pytest.approx(ours.metrics["acc"])
    assert native.metrics["acc_norm"] == pytest.approx(ours.metrics["acc_norm"])


def test_bridge_as_proxy_nested_subsets_and_one_hflm(yaml_task, tiny):
    model, tok = tiny
    ev = Evaluator(tokenizer=tok, device="cpu")
    spec = f"lm_eval:{yaml_task}?domain=code&metric=acc"
    r4 = ev.run(model, [spec], limit=4)[spec]
    r8 = ev.run(model, [spec], limit=8)[spec]
    assert (r4.n, r8.n, r4.domain, r4.metric) == (4, 8, "code", "acc")
    t = ev.lm_eval_task(spec)
    order = t._order["automerge_prose_next_mc"]
    assert order[:4] == order[:8][:4] and len(order) == 12
    assert ev.lm_eval_task(spec) is t                 # the task is built once


def test_generate_until_task_uses_one_hflm(tmp_path, tiny):
    model, tok = tiny
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps({"q": f"Say {w}:", "a": w}) + "\n" for w in ("yes", "no", "maybe")))
    y = tmp_path / "gen_task.yaml"
    y.write_text("task: am_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: gen.jsonl\n"
                 "test_split: test\noutput_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\n"
                 "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 4\n  do_sample: false\n"
                 "metric_list:\n  - metric: exact_match\n")
    ev = Evaluator(tokenizer=tok, device="cpu")
    spec = f"lm_eval:{y}"
    a = ev.run(model, [spec], limit=2)[spec]
    h = ev._hflm
    b = ev.run(model, [spec])[spec]
    assert ev._hflm is h                          # one HFLM for the whole run
    assert (a.n, b.n, a.metric) == (2, 3, "exact_match")
    assert 0.0 <= b.score <= 1.0


def test_bad_specs():
    with pytest.raises(EvalError, match="domain"):
        parse_spec("lm_eval:x.yaml?domain=math")
    with pytest.raises(EvalError, match="unknown option"):
        parse_spec("lm_eval:x.yaml?foo=1")
    assert parse_spec("lm_eval:./t.yaml?metric=acc") == ("./t.yaml", {"metric": "acc"})
    with pytest.raises(EvalError, match="does not exist"):
        Evaluator.__new__(Evaluator)  # noqa: B018 - nothing to set up
        from automerge.eval._lm_eval import load_lm_eval_tasks
        load_lm_eval_tasks("/nonexistent/task.yaml")
