"""Fixtures for the methods tests."""

from __future__ import annotations

import pytest
import torch

from methods_helpers import PatchedBernoulli


@pytest.fixture
def patch_bernoulli(monkeypatch):
    """patch_bernoulli(noise): mergekit's next bernoulli calls draw noise[i] < p."""

    def apply(noise: torch.Tensor) -> PatchedBernoulli:
        patched = PatchedBernoulli(noise)
        monkeypatch.setattr(torch, "bernoulli", patched)
        return patched

    return apply
