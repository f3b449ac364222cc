"""A test-size zoo, built once per session (a few seconds, tens of thousands of parameters)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def test_zoo(tmp_path_factory):
    from automerge.zoo import build_zoo

    return build_zoo(size="test", out=tmp_path_factory.mktemp("zoo") / "zoo", seed=0, progress=False)
