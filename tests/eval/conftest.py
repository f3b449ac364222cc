"""Fixtures for the eval tests: tiny random models (tests/tiny_models.py), loaded once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# lm-eval's YAML tasks load JSON through `datasets`, which writes arrow copies to ~/.cache unless told
# otherwise (read when datasets is imported: no test module imports it at collection time).
if "HF_DATASETS_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="automerge-eval-hfds-")
    os.environ["HF_DATASETS_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("eval_tiny") / "llama", arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_specialist_dir(tmp_path_factory, tiny_dir):
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("eval_tiny") / "spec", base=tiny_dir, seed=1, noise=0.05)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, tokenizer) of a tiny llama; tests that change weights must restore them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    return model, tok


@pytest.fixture(scope="session")
def evaluator(tiny):
    from automerge.eval import Evaluator

    return Evaluator(tokenizer=tiny[1], device="cpu", batch_tokens=2048)
