"""Work items (`automerge.search.work`): one class per kind builds its own trial, and the claim
keys keep the stored format, so studies written before resume (a claim is read back into the
same item)."""

from __future__ import annotations

import re
import time

import pytest
from optuna.trial import TrialState
from search_helpers import make_space

from automerge.search.space import WarmStart
from automerge.search.study import RUNNING, ClaimRow, SearchStudy
from automerge.search.work import BaselineWork, Promotion, ReferenceWork, Sample, TrialMaker, WarmStartWork, \
    fixed_items, from_claim

# the stored key format of each kind (the claims table's `item`, the trial attr `key`)
KEY_FORMAT = {Sample: r"s\d+", Promotion: r"p\d+", BaselineWork: r"b:.+", ReferenceWork: r"ref:.+",
              WarmStartWork: r"w:[0-9a-f]{16}"}


def _claim(key: str, rung: int = 0) -> ClaimRow:
    now = time.time()
    return ClaimRow("st", rung, key, None, "host:1:x", now, 1, RUNNING, now)


def _items(tmp_path):
    space = make_space()
    ties = space.baseline_trials()[-1]  # an earlier round's recipe the space expresses (fake model paths)
    warm = [WarmStart(label="warm start: earlier", recipe=ties.recipe.model_copy(update={"seed": 1}),
                      params=ties.params)]
    return space, warm, fixed_items(space, warm)


def test_every_kind_keeps_its_stored_key_format_and_reads_back_from_its_claim(tmp_path):
    space, _, fixed = _items(tmp_path)
    items = [*fixed.values(), Sample(reason="sample", slot=7),
             Promotion(reason="top", rung=1, parent=12, parent_kind="baseline")]
    assert {type(w) for w in items} == set(KEY_FORMAT)
    for w in items:
        assert re.fullmatch(KEY_FORMAT[type(w)], w.key), (type(w).__name__, w.key)
        back = from_claim(_claim(w.key, w.rung), None, fixed, parent_kind=lambda rung, n: "baseline")
        assert type(back) is type(w) and back.key == w.key and back.kind == w.kind and back.rung == w.rung
        assert back.reason == "retry"
    assert [type(w) for w in fixed.values()] == [BaselineWork] * 5 + [ReferenceWork] + [WarmStartWork]


def test_an_unknown_claim_key_is_named():
    with pytest.raises(ValueError, match="unknown work item 'x:9'"):
        from_claim(_claim("x:9"), None, {}, parent_kind=lambda rung, n: "search")


def test_each_kind_builds_its_own_trial(sqlite_url, tmp_path):
    space, warm, fixed = _items(tmp_path)
    study = SearchStudy.open("wk", sqlite_url, space)
    failed: list[str] = []
    maker = TrialMaker(study, "host:1:me", fail_trial=lambda rung, t, why: failed.append(why),
                       fail_unnamed=lambda claim, why: failed.append(why))
    made = {key: w.build(maker) for key, w in fixed.items()}
    sample = Sample(reason="sample", slot=0).build(maker)
    by_number = {t.number: t for t in study.trials(0)}
    for key, new in [*made.items(), ("s0", sample)]:
        t = by_number[new.number]
        assert t.state == TrialState.RUNNING and t.user_attrs["key"] == key and t.user_attrs["origin"] == t.number
        assert t.user_attrs["kind"] == fixed[key].kind if key in fixed else t.user_attrs["kind"] == "search"
    ref = by_number[made["ref:mix"].number]
    assert made["ref:mix"].recipe is None and ref.user_attrs["model_path"] == "/nonexistent/mix"
    w = by_number[made[warm[0].key].number]
    assert w.user_attrs["label"].startswith("warm start") and w.params  # the space expresses it: params kept
    assert sample.recipe is not None and by_number[sample.number].params
    # a promotion copies params, recipe, label and origin one rung up
    study.studies[0].tell(sample.number, [0.5, 0.5])
    up = Promotion(reason="top", rung=1, parent=sample.number).build(maker)
    t1 = {t.number: t for t in study.trials(1)}[up.number]
    assert t1.params == by_number[sample.number].params and t1.user_attrs["origin"] == sample.number
    assert t1.user_attrs["parent"] == sample.number and t1.user_attrs["key"] == f"p{sample.number}"
    assert up.recipe.to_yaml() == sample.recipe.to_yaml() and not failed
    study.close()
