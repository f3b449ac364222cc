"""Retention table (score ÷ the specialist's score on its own domain, gain over base) and the
`automerge eval` command on tiny models."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from automerge.eval import TaskResult, retention_table
from automerge.cli import app
from automerge.eval.cli import parse_specialist
from automerge.errors import EvalError


def _r(task, score, domain, failed=None):
    return TaskResult(task=task, metric="acc", score=score, n=10, metrics={"acc": score}, domain=domain, failed=failed)


def test_retention_math():
    results = {
        "base": {"t_nl": _r("t_nl", 0.40, "nl"), "t_code": _r("t_code", 0.30, "code")},
        "lang": {"t_nl": _r("t_nl", 0.80, "nl"), "t_code": _r("t_code", 0.20, "code")},
        "code": {"t_nl": _r("t_nl", 0.30, "nl"), "t_code": _r("t_code", 0.60, "code")},
        "merged": {"t_nl": _r("t_nl", 0.60, "nl"), "t_code": _r("t_code", 0.0, "code", failed="NaN logits")},
    }
    df = retention_table(results, base="base", specialists={"lang": "nl", "code": "code"})
    row = lambda m, t: df[(df.model == m) & (df.task == t)].iloc[0]  # noqa: E731
    assert row("merged", "t_nl").retention == pytest.approx(0.75)
    assert row("merged", "t_nl").gain_over_base == pytest.approx(0.20)
    assert row("lang", "t_nl").retention == pytest.approx(1.0)
    assert row("code", "t_code").retention == pytest.approx(1.0)
    assert row("lang", "t_code").retention == pytest.approx(0.2 / 0.6)
    assert math.isnan(row("merged", "t_code").retention) and row("merged", "t_code").failed == "NaN logits"
    assert list(df.role.unique()) == ["base", "specialist", "model"]


def test_parse_specialist():
    assert parse_specialist("code=zoo:code:code") == ("code", "zoo:code", "code")
    assert parse_specialist("lang=/m/lang:nl") == ("lang", "/m/lang", "nl")
    for bad in ("code", "code=/m/x", "code=/m/x:math", "=/m/x:nl"):
        with pytest.raises(EvalError):
            parse_specialist(bad)


def test_eval_command(tmp_path, tiny_dir, tiny_specialist_dir):
    out = tmp_path / "eval.csv"
    res = CliRunner().invoke(app, [
        "eval", str(tiny_specialist_dir), "--base", str(tiny_dir),
        "--specialist", f"code={tiny_specialist_dir}:code", "--specialist", f"lang={tiny_dir}:nl",
        "--task", "prose_ll", "--task", "code_body_ll", "--limit", "2", "--device", "cpu", "--csv", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert set(df.columns) >= {"model", "role", "task", "domain", "score", "retention", "gain_over_base"}
    # the spec dir is both a specialist and a model: evaluated once
    assert sorted(df.model.unique()) == sorted([str(tiny_dir), "code", "lang"])
    code_row = df[(df.model == "code") & (df.task == "code_body_ll")].iloc[0]
    assert code_row.retention == pytest.approx(1.0)
    assert "retention" in res.output or "score" in res.output
    listed = CliRunner().invoke(app, ["eval", "--list-tasks"])
    assert listed.exit_code == 0 and "code_bug_mc" in listed.output
