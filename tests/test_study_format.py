"""The study format's names: rungs both ways, kinds, redaction, the typed stored recipe, and a
read-only storage that creates nothing."""

from __future__ import annotations

import pytest

from automerge.errors import RecipeError
from automerge.study_format import FULL, Attr, Kind, StudyNotFoundError, open_storage, redact, rung_name, rung_of, \
    rung_study_name, stored_recipe


@pytest.mark.parametrize("num_rungs", [1, 2, 4])
def test_rung_names_round_trip(num_rungs):
    names = [rung_study_name("night1", r, num_rungs) for r in range(num_rungs)]
    assert names[0] == "night1" or num_rungs == 1
    assert names[-1] == ("night1" if num_rungs == 1 else "night1:full")
    for r, name in enumerate(names):
        back = rung_of(name, "night1")
        assert back == (0 if r == 0 else FULL if r == num_rungs - 1 else r)
    assert [rung_name(r, num_rungs) for r in range(num_rungs)][-1] == FULL
    assert rung_of("night1:r2", "night1") == 2
    assert rung_of("night10:r2", "night1") is None and rung_of("night1:x", "night1") is None


def test_kind_is_the_stored_string():
    assert [k.value for k in Kind] == ["search", "baseline", "reference"]
    assert Kind.SEARCH == "search" and f"{Kind.BASELINE}" == "baseline"
    assert Attr.KIND == "kind" and Attr.SCORE + "code" == "score:code"


def test_redact_hides_only_the_password():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("sqlite:////tmp/a/study.db") == "sqlite:////tmp/a/study.db"


def test_stored_recipe_is_typed_and_parsed_once():
    text = "method: ties\nmodels:\n- {name: code, path: x, parameters: {weight: 0.7}}\nparameters: {lambda: 1.1}\n"
    recipe = stored_recipe({Attr.RECIPE: text})
    assert recipe.method == "ties" and recipe.models[0].name == "code"
    assert stored_recipe(text) is recipe  # the same text is not parsed again
    assert stored_recipe({}) is None and stored_recipe({Attr.RECIPE: ""}) is None  # a reference model
    with pytest.raises(RecipeError):
        stored_recipe("method: [unclosed")


def test_read_only_storage_creates_nothing(tmp_path):
    db = tmp_path / "sub" / "study.db"
    with pytest.raises(StudyNotFoundError, match="does not exist"):
        open_storage(f"sqlite:///{db}")
    with pytest.raises(StudyNotFoundError, match="does not exist"):
        open_storage(str(tmp_path / "journal.log"))
    assert not (tmp_path / "sub").exists()
    storage = open_storage(f"sqlite:///{db}", read_only=False)  # the search's: makes the directory
    try:
        assert db.is_file()
        assert open_storage(f"sqlite:///{db}").get_all_studies() == []
    finally:
        storage.engine.dispose()
