"""Error bars in the report: CI columns, CI-based "dominates", the verdict in words, rung sizes.

The study is a real search (the Worker) with the fake runner of tests/search returning per-item
scores, so the storage holds exactly what a search writes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "search"))

from search_fakes import FakeRunner  # noqa: E402
from search_helpers import make_space  # noqa: E402

from automerge.report import load_study  # noqa: E402
from automerge.report.errorbars import (Comparison, _sentence, best_baseline, compare, rung_sizes,  # noqa: E402
                                        verdict_lines)
from automerge.report.pareto_table import front, pareto_table  # noqa: E402
from automerge.noise import Difference  # noqa: E402
from automerge.search.study import SearchStudy  # noqa: E402
from automerge.search.worker import Worker  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("errbars")
    url = f"sqlite:///{root / 'eb' / 'study.db'}"
    (root / "eb").mkdir()
    s = SearchStudy.open("eb", url, make_space(budget={"trials": 6}))
    Worker(s, FakeRunner(items=True), poll_interval=0.05).run()
    s.close()
    return load_study("eb", results_dir=root)


def test_table_has_error_bars_and_dominates_only_beyond_the_noise(study):
    table = pareto_table(study, "full")
    for obj in study.objectives:
        assert f"±{obj}" in table.columns and table[f"±{obj}"].notna().all()
    best = best_baseline(study, "full")
    assert best is not None and best["label"] == "uniform linear"
    assert "vs:uniform linear" in table.columns and "vs:code alone" in table.columns
    fr = front(study, "full")
    rows = study.rung("full")
    for _, t in table[table["on_front"]].iterrows():
        a = fr[fr["trial"] == t["trial"]].iloc[0]
        assert t["vs:uniform linear"].split(":")[0] in ("dominates", "dominated", "trade-off", "indistinguishable")
        for label in filter(None, t["dominates"].split(", ")):
            b = rows[rows["label"] == label].iloc[0]
            assert compare(study, a, b, "full").verdict == "dominates"
        # and every yardstick not listed is not dominated beyond the noise
        for _, b in rows[rows["kind"] != "search"].iterrows():
            if b["label"] not in t["dominates"].split(", "):
                assert compare(study, a, b, "full").verdict != "dominates"


def test_verdict_names_the_knee_compares_with_ci_and_says_where_the_report_is(study):
    lines = verdict_lines(study, report="results/eb/report.html")
    text = "\n".join(lines)
    assert lines[0].startswith("Verdict at rung full (100 items per task") or "all items" in lines[0]
    assert "knee: trial #" in text and "vs uniform linear (best baseline)" in text
    assert "vs code alone (specialist)" in text and "vs lang alone (specialist)" in text
    assert "mix model (reference)" in text and "±" in text
    assert lines[-1] == "- report: results/eb/report.html"


def test_a_difference_inside_the_noise_is_never_called_better():
    inside = Difference(estimate=0.02, low=-0.01, high=0.05, se=0.015, n=8)
    clear = Difference(estimate=0.04, low=0.01, high=0.07, se=0.015, n=8)
    c = Comparison(other="uniform linear", other_trial=2, role="best baseline", verdict="indistinguishable",
                   diffs={"code": inside, "nl": clear}, units={"code": "nats/token", "nl": "nats/token"}, with_ci=True)
    s = _sentence(c)
    assert "within the noise on code (+0.020 ± 0.030 nats/token)" in s
    assert "better on nl by 0.040 ± 0.030 nats/token" in s
    assert "better on code" not in s


def test_rung_sizes_scale_with_the_items(study):
    sizes = rung_sizes(study)
    assert set(sizes["rung"]) == {"0", "1", "full"}
    for obj in study.objectives:
        g = sizes[sizes["objective"] == obj].set_index("rung")
        # the fake's per-item spread is the same at every rung: half-widths shrink like 1/√items
        hw = g["half_width_95"] * g["items"].map(math.sqrt)
        assert hw.max() / hw.min() < 1.5
        assert (g["items_for_±0.003"] >= g["items_for_±0.01"]).all()
