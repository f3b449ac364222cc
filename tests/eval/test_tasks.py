"""Proxy items: shipped, well-formed, deterministic to rebuild; subsets nested and stable."""

from __future__ import annotations

import ast
import json

import pytest

from automerge.eval import PROXY_TASKS, Evaluator
from automerge.eval import _tasks
from automerge.eval._split import is_quality_holdout
from automerge.errors import EvalError

HELDOUT_CODE = '''
import os


def clamp(x, lo, hi):
    """Clamp x to the closed interval [lo, hi] and return it."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


class Stack:
    def push(self, item):
        """Push one item on top of the stack and return the new size."""
        self.items.append(item)
        return len(self.items)

    def window(self, n):
        """Return the last n items of the stack, newest last."""
        start = max(0, len(self.items) - n)
        return self.items[start:len(self.items)]


def join_path(base, name):
    """Join a directory and a file name with one separator."""
    if base.endswith("/"):
        return base + name
    return os.path.join(base, name)
'''

PROSE = ("The json module encodes and decodes JSON documents. The loads function parses a string and returns "
         "the Python object it describes. The dumps function does the opposite and returns a string. Both accept "
         "keyword arguments that change how numbers are handled. When the input is not valid JSON, an error is "
         "raised with the line and column where parsing stopped.\n\nA merge keeps what each specialist learned. "
         "The search tries many recipes and keeps the best ones. Every trial is scored on the same items, so two "
         "trials can be compared fairly. Larger rungs score more items and cost more time.\n")


def test_shipped_data_is_complete():
    manifest = json.loads((_tasks.DATA_DIR / "manifest.json").read_text())
    for name, spec in PROXY_TASKS.items():
        items = _tasks.load_items(name)
        assert manifest["counts"][name] == len(items) >= 100, name
        ids = [it["id"] for it in items]
        assert len(set(ids)) == len(ids), f"{name}: duplicate ids"
        for it in items:
            if spec.kind == "mc":
                assert len(it["choices"]) == _tasks.N_CHOICES and 0 <= it["gold"] < len(it["choices"])
                assert len(set(it["choices"])) == len(it["choices"]), it["id"]
            else:
                assert it["continuation"] and it["context"]
    kinds = {(s.domain, s.kind) for s in PROXY_TASKS.values()}
    assert {("nl", "mc"), ("nl", "ll"), ("code", "mc"), ("code", "ll")} <= kinds


def test_shipped_file_order_is_the_seed0_order():
    for name in PROXY_TASKS:
        items = _tasks.load_items(name)
        assert [it["id"] for it in items] == [it["id"] for it in _tasks.ordered(items, name, 0)]


def test_bug_items_hold_the_original_and_three_parsing_mutants():
    items = _tasks.load_items("code_bug_mc")
    for it in items[:50]:
        assert it["context"] == ""
        for c in it["choices"]:
            ast.parse(c)
        gold = it["choices"][it["gold"]]
        assert all(c != gold for i, c in enumerate(it["choices"]) if i != it["gold"])


def test_bug_mutants_kinds():
    code = "def f(a, b):\n    if a < b:\n        return g(a, b) + 1\n    return 0\n"
    muts = _tasks.bug_mutants(code)
    assert set(muts) == {"comparison", "off_by_one", "swap_args"}
    assert "a > b" in muts["comparison"][0]
    assert any("g(b, a)" in m for m in muts["swap_args"])
    assert all(m != code for ms in muts.values() for m in ms)
    # symmetric calls are never "bugs"
    assert "swap_args" not in _tasks.bug_mutants("def t(self):\n    self.assertEqual(x, 1)\n")


def _write_heldout(d):
    d.mkdir()
    code = [{"id": f"code:m{i}.py", "source": f"Lib/m{i}.py", "text": HELDOUT_CODE.replace("clamp", f"clamp{i}")}
            for i in range(6)]
    prose = [{"id": f"prose:d{i}", "source": f"Doc/d{i}.rst", "text": PROSE.replace("json", f"json{i}")}
             for i in range(6)]
    tests = [{"id": "tests:t.py", "source": "Lib/test/test_m.py",
              "text": "import unittest\n\nclass T(unittest.TestCase):\n    def test_clamp(self):\n"
                      "        self.assertEqual(clamp(5, 0, 3), 3)\n        self.assertEqual(clamp(-1, 0, 3), 0)\n"}]
    for name, recs in (("code", code), ("prose", prose), ("tests", tests)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return d


def test_build_is_deterministic(tmp_path):
    held = _write_heldout(tmp_path / "heldout")
    a, b = tmp_path / "a", tmp_path / "b"
    ca = _tasks.build_proxy_data(held, a)
    cb = _tasks.build_proxy_data(held, b)
    assert ca == cb and ca
    for f in sorted(a.iterdir()):
        assert f.read_bytes() == (b / f.name).read_bytes(), f.name
    assert {"code_summary_ll", "code_body_ll", "code_bug_mc", "prose_ll"} <= set(ca)


def _holdout_sources() -> set[str]:
    """Sources of the zoo's third-party files that the quality-holdout rule keeps back."""
    ext = _tasks.DATA_DIR.parent.parent / "zoo" / "data" / "external"
    out = set()
    for name in ("code", "prose"):
        p = ext / f"{name}.jsonl"
        if p.is_file():
            out |= {r["source"] for r in map(json.loads, p.read_text().splitlines()) if r.get("source")
                    and is_quality_holdout(r["source"])}
    return out


def test_no_proxy_or_full_evaluation_item_reads_the_quality_holdout(tiny):
    """The quality holdout is text nothing in the search loop reads: every shipped proxy item, and the
    items of the full evaluation's summarisation task, come from files outside it."""
    held = _holdout_sources()
    ev = Evaluator(tokenizer=tiny[1], device="cpu")
    read = {name: ev.prepared(name).items for name in PROXY_TASKS}
    read["summarization"] = ev.prepared("code_summary_ll").items      # what the full task generates from
    for name, items in read.items():
        leaked = sorted({it["source"] for it in items if it["source"] in held
                         or (name.startswith("ext_") and is_quality_holdout(it["source"]))})
        assert not leaked, f"{name} reads {len(leaked)} quality-holdout file(s), e.g. {leaked[0]}"
    ext_sources = {it["source"] for name in ("ext_code_body_ll", "ext_prose_ll") for it in read[name]}
    assert ext_sources, "the out-of-distribution proxies must still read third-party files"


def test_builder_leaves_the_quality_holdout_out(tmp_path):
    held = _write_heldout(tmp_path / "heldout")
    ext = tmp_path / "external"
    ext.mkdir()
    code = [{"id": f"ext:pkg/m{i}.py", "source": f"pkg/m{i}.py", "text": HELDOUT_CODE.replace("clamp", f"c{i}")}
            for i in range(12)]
    prose = [{"id": f"ext:pkg/d{i}.md", "source": f"pkg/d{i}.md", "text": PROSE.replace("json", f"j{i}")}
             for i in range(12)]
    assert {is_quality_holdout(r["source"]) for r in code + prose} == {True, False}   # both sides present
    for name, recs in (("code", code), ("prose", prose)):
        (ext / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    counts = _tasks.build_proxy_data(held, out, external_dir=ext)
    assert counts.get("ext_code_body_ll") and counts.get("ext_prose_ll")
    for name in ("ext_code_body_ll", "ext_prose_ll"):
        items = _tasks.load_items(name, out)
        assert not [it["source"] for it in items if is_quality_holdout(it["source"])], name


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(EvalError, match="missing"):
        _tasks.load_items("prose_ll", tmp_path)
    with pytest.raises(EvalError, match="unknown proxy task"):
        _tasks.load_items("nope")


def test_subsets_are_nested_and_stable(tiny):
    tok = tiny[1]
    a = Evaluator(tokenizer=tok, device="cpu")
    b = Evaluator(tokenizer=tok, device="cpu")            # a second run, a fresh object
    for name in ("prose_next_mc", "code_body_ll"):
        ids_a = [it["id"] for it in a.prepared(name).items]
        ids_b = [it["id"] for it in b.prepared(name).items]
        assert ids_a == ids_b
        # rung r scores the first n_r items: every smaller rung is a prefix of the larger one
        rungs = [ids_a[:n] for n in (4, 16, 64)]
        assert rungs[0] == rungs[1][:4] and rungs[1] == rungs[2][:16]
    other = Evaluator(tokenizer=tok, device="cpu", seed=1)
    assert [it["id"] for it in other.prepared("prose_ll").items] != [it["id"] for it in a.prepared("prose_ll").items]


def test_pooled_plan_scores_exactly_the_first_items(evaluator, tiny):
    model, _ = tiny
    evaluator.run(model, ["code_summary_mc", "prose_ll"], limit=3)
    pp = evaluator._pooled_plan(model, ["code_summary_mc", "prose_ll"], 3)
    assert pp is evaluator._pooled_plan(model, ["code_summary_mc", "prose_ll"], 3)   # cached
    assert pp.slices["code_summary_mc"] == (0, 3 * _tasks.N_CHOICES, 3)
    assert pp.slices["prose_ll"] == (12, 15, 3)


def test_shipped_items_match_the_zoo_heldout_split():
    """The shipped items were built from the zoo's current held-out files (rebuild when they change)."""
    import hashlib

    zoo_data = _tasks.DATA_DIR.parent.parent / "zoo" / "data"
    manifest = json.loads((_tasks.DATA_DIR / "manifest.json").read_text())
    checked = 0
    for rel, digest in manifest["inputs_sha256"].items():
        p = zoo_data / rel
        if p.is_file():
            assert hashlib.sha256(p.read_bytes()).hexdigest() == digest, (
                f"{p} changed since the proxy items were built: run `python -m automerge.eval.build_data "
                "--heldout automerge/zoo/data/heldout --external automerge/zoo/data/external --out automerge/eval/data`")
            checked += 1
    assert checked, "the zoo's held-out data (automerge/zoo/data/heldout) is missing from this checkout"
