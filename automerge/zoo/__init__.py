"""The demo zoo: a tiny Llama base and four fine-tuned specialists built from CPython's own text.

Shipped files live next to this module: ``models/{base,code,lang,tests,mix}/`` (Hugging Face model
directories, fp16 safetensors) and ``data/heldout/*.jsonl`` / ``data/external/*.jsonl`` (evaluation
data never seen in training). ``build_zoo`` rebuilds all of it from text on the machine.

This module stays light: no torch/transformers import until a build runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from automerge.errors import AutomergeError
from automerge.names import ZOO_MODELS

if TYPE_CHECKING:  # pragma: no cover
    pass

ZOO_DIR = Path(__file__).resolve().parent
MODELS_DIR = ZOO_DIR / "models"
DATA_DIR = ZOO_DIR / "data"
MODEL_NAMES = ZOO_MODELS
SPECIALISTS = ("code", "lang", "tests")


class ZooError(AutomergeError):
    """The zoo cannot be built: missing documentation package, unusable output directory, ..."""


def model_path(name: str) -> Path:
    """Directory of a shipped zoo model (``base``, ``code``, ``lang``, ``tests``, ``mix``)."""
    if name not in MODEL_NAMES:
        raise ZooError(f"unknown zoo model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return MODELS_DIR / name


def heldout_path(domain: str) -> Path:
    """Shipped held-out JSONL of a domain (code, prose, tests, docstrings, generation, summarisation)."""
    return DATA_DIR / "heldout" / f"{domain}.jsonl"


def build_zoo(*, size: Literal["full", "test"], out: Path, seed: int = 0, progress: bool = True,
              cache: Path | None = None) -> Path:
    """Build the zoo into ``out`` (see :mod:`automerge.zoo.build`). Returns ``out``."""
    from automerge.zoo.build import build_zoo as _build

    return _build(size=size, out=out, seed=seed, progress=progress, cache=cache)


__all__ = ["ZOO_DIR", "MODELS_DIR", "DATA_DIR", "MODEL_NAMES", "SPECIALISTS", "ZooError", "model_path",
           "heldout_path", "build_zoo"]
