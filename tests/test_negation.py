"""Negation: negative weights subtract a task vector (task arithmetic's "forgetting via negation").

mergekit parity with negative weights is in test_mergekit_parity (cases *_negation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from automerge.engine import ResidentMerger
from automerge.errors import SpaceError
from automerge.recipe import Recipe
from automerge.search.space import SearchSpace
from tiny_models import save_tiny_model

ZOO = Path(__file__).resolve().parents[1] / "automerge" / "zoo"


def _space(**over) -> SearchSpace:
    d = {"base": "/x/base", "specialists": [{"name": "code", "path": "/x/code"}, {"name": "lang", "path": "/x/lang"}],
         "objectives": [{"name": "code", "tasks": {"code_body_ll": 1.0}}], "device": "cpu", **over}
    return SearchSpace.from_dict(d, source="space.yaml")


def test_space_range_crossing_zero_gives_negative_weights():
    space = _space(methods=["task_arithmetic"], parameters={"weight": [-1.0, 1.0], "lambda": 1.0})
    recipe = space.recipe_from_params({"task_arithmetic.weight.code": 1.0, "task_arithmetic.weight.lang": -0.7})
    assert [m.parameters["weight"] for m in recipe.models] == [1.0, -0.7]
    recipe.validate_for()
    # TIES without normalisation may subtract too: its sign election takes w_i·u_i
    _space(methods={"ties": {"normalize": False}}, parameters={"weight": [-1.0, 1.0], "density": [0.2, 1.0]})


@pytest.mark.parametrize("over, path", [
    (dict(methods=["linear"], parameters={"weight": [-1.0, 1.0]}), "parameters.weight"),
    (dict(methods=["ties"], parameters={"weight": [0.0, 1.0], "density": [0.2, 1.0]},
          specialists=[{"name": "code", "path": "/x/code"},
                       {"name": "lang", "path": "/x/lang", "parameters": {"weight": [-0.5, 0.5]}}]),
     "specialists[1].parameters.weight"),
    (dict(methods={"task_arithmetic": {"normalize": {"choices": [False, True]}}},
          parameters={"weight": {"choices": [-1.0, 1.0]}}), "parameters.weight"),
])
def test_negative_weights_where_a_weight_sum_divides_are_refused(over, path):
    with pytest.raises(SpaceError) as err:
        _space(**over)
    assert str(err.value).startswith(f"space.yaml: {path}:") and "normalize: false" in str(err.value)


def test_negative_weight_subtracts_the_task_vector(tmp_path):
    base = save_tiny_model(tmp_path / "base", arch="llama", seed=0)
    a = save_tiny_model(tmp_path / "a", base=base, seed=1, noise=0.05)
    merger = ResidentMerger(base=base, specialists={"a": a}, device="cpu")
    recipe = Recipe(method="task_arithmetic", base=str(base),
                    models=[{"name": "a", "path": str(a), "parameters": {"weight": -0.5}}])
    merger.apply(recipe)
    for t in merger.tensors:
        x = merger.checkpoints[0].read(t.name, dtype=torch.float32)
        torch.testing.assert_close(t.param, t.base - 0.5 * (x - t.base), rtol=0, atol=1e-6)


def _nll(model, tok, file: Path, *, seq: int = 256, windows: int = 16) -> float:
    ids: list[int] = []
    for line in file.read_text().splitlines():
        ids += tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
    n = min(windows, len(ids) // seq)
    x = torch.tensor(ids[: n * seq]).view(n, seq)
    with torch.no_grad():
        return float(model(input_ids=x, labels=x).loss)


@pytest.mark.skipif(not (ZOO / "models" / "tests").is_dir(), reason="the shipped zoo is not built")
def test_subtracting_tests_moves_the_tests_domain_on_the_zoo():
    """code − 0.2·tests on the shipped zoo: held-out tests loss rises ≥ 0.05 nats/token, code loss rises
    by at most half of that (measured 2026-12-02: tests +0.132, code +0.055).

    The test-size zoo cannot show this: its specialists are too briefly trained to differ by domain
    (every held-out loss moves by the same amount there).
    """
    m, heldout = ZOO / "models", ZOO / "data" / "heldout"
    merger = ResidentMerger(base=m / "base", specialists={"code": m / "code", "tests": m / "tests"}, device="cpu")

    def losses(w_tests: float) -> dict[str, float]:
        merger.apply(Recipe(method="task_arithmetic", base=str(m / "base"), models=[
            {"name": "code", "path": str(m / "code"), "parameters": {"weight": 1.0}},
            {"name": "tests", "path": str(m / "tests"), "parameters": {"weight": w_tests}}]))
        return {d: _nll(merger.model, merger.tokenizer, heldout / f"{d}.jsonl") for d in ("code", "tests")}

    before, after = losses(0.0), losses(-0.2)
    rise = {d: after[d] - before[d] for d in before}
    assert rise["tests"] >= 0.05, rise
    assert rise["code"] <= 0.5 * rise["tests"], rise
