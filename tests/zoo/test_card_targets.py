"""The shipped zoo card states its targets truthfully (reads the shipped figures; no training, no scoring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automerge.zoo import card

ZOO = Path(card.__file__).resolve().parent
CARD_JSON = ZOO / "data" / "card.json"


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(CARD_JSON.read_text(encoding="utf-8"))


def test_card_rows_cover_the_quality_holdout(shipped):
    labels = ["base", "code", "lang", "tests", "mix"] + [m[0] for m in card.merge_list()]
    assert list(shipped["rows"]) == labels
    for row in shipped["rows"].values():
        assert set(row) == set(card.DOMAIN_ORDER)
    assert {"hold-code", "hold-prose"} <= set(shipped["tokens"])


def test_stated_targets_follow_from_the_rows(shipped):
    """Every target's figure is recomputed from the card rows, and "met" only where it meets its threshold."""
    assert shipped["targets"] == card.targets(shipped["rows"])
    for t in shipped["targets"]:
        meets = t["figure"] > t["threshold"] if t["strict"] else t["figure"] >= t["threshold"]
        assert t["met"] is meets, t


def test_targets_cover_the_issue(shipped):
    names = [t["target"] for t in shipped["targets"]]
    assert len(names) == 12 and len(set(names)) == 12
    assert sum("trails" in n for n in names) == 6 and sum("forgetting" in n for n in names) == 2


def test_readme_card_is_the_shipped_card(shipped):
    """The README's card block is exactly what --write-readme renders from data/card.json."""
    text = (ZOO / "README.md").read_text(encoding="utf-8")
    a = text.index(card.CARD_START) + len(card.CARD_START)
    assert text[a: text.index(card.CARD_END)] == "\n" + card.render(shipped)


def test_target_figures_and_flags():
    rows = {"base": {"hold-code": 5.0, "hold-prose": 5.0}, "code": {"hold-code": 4.7, "hold-prose": 5.0},
            "lang": {"hold-code": 5.3, "hold-prose": 4.6}}
    for m in card.TARGET_MERGES:
        rows[m] = {"hold-code": 4.8, "hold-prose": 4.65}
    got = {t["target"]: (t["figure"], t["met"]) for t in card.targets(rows)}
    assert got["code beats base on hold-code"] == (0.3, True)
    assert got["lang beats code on hold-prose"] == (0.4, True)
    assert got["code worse than base on hold-prose (forgetting)"] == (0.0, False)  # equal is no forgetting
    assert got["lang worse than base on hold-code (forgetting)"] == (0.3, True)
    assert got["linear code+lang 0.5/0.5 trails lang on hold-prose"] == (0.05, False)
    assert got["linear code+lang 0.5/0.5 trails code on hold-code"] == (0.1, True)
