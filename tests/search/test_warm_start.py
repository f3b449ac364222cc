"""--warm-start: earlier recipes map onto the space's specialists by name, or fail naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from automerge.errors import SpaceError
from automerge.recipe import Recipe
from automerge.search.space import SearchSpace, warm_start_trials

DEMO = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"


def _recipe(tmp_path: Path, models: list[dict], base: str = "zoo:base") -> Path:
    r = Recipe.from_dict(dict(method="ties", base=base, models=models, parameters={"lambda": 1.0}))
    return r.save(tmp_path / "earlier.yaml")


def test_absent_specialist_gets_weight_zero(tmp_path):
    space = SearchSpace.load(DEMO)
    path = _recipe(tmp_path, [{"name": "code", "path": "/elsewhere/code", "parameters": {"weight": 0.8, "density": 0.4}}])
    (warm,) = warm_start_trials(space, [path])
    assert warm.key.startswith("w:") and "warm" in warm.label
    models = {m.name: m for m in warm.recipe.models}
    assert list(models) == space.specialist_names
    assert models["code"].parameters == {"weight": 0.8, "density": 0.4}
    assert models["code"].path == "zoo:code"  # the space's path, not the recipe's
    assert models["lang"].parameters == {"weight": 0.0}


def test_unknown_model_named_with_file(tmp_path):
    space = SearchSpace.load(DEMO)
    path = _recipe(tmp_path, [{"name": "vision", "path": "/x", "parameters": {"weight": 1.0}}])
    with pytest.raises(SpaceError, match=r"earlier\.yaml.*vision"):
        warm_start_trials(space, [path])


def test_other_base_refused(tmp_path):
    space = SearchSpace.load(DEMO)
    path = _recipe(tmp_path, [{"name": "code", "path": "/x", "parameters": {"weight": 1.0}}], base="zoo:mix")
    with pytest.raises(SpaceError, match="base"):
        warm_start_trials(space, [path])
