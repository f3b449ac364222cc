"""Reproducible noise for the random sparsifiers (DARE, DELLA).

A mask must not depend on where or when a recipe is applied: another worker, an
export, a CPU run. So the noise comes from a CPU generator seeded by a stable
hash of (recipe seed, tensor name) -- never Python's salted hash() -- and is
moved to the device afterwards.
"""

from __future__ import annotations

import hashlib

import torch


def stable_seed(seed: int, tensor_name: str) -> int:
    """A 63-bit generator seed derived from sha256(f"{seed}:{tensor_name}")."""
    digest = hashlib.sha256(f"{seed}:{tensor_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_noise(shape_k: tuple[int, ...], *, seed: int, tensor_name: str) -> torch.Tensor:
    """Uniform [0, 1) fp32 noise of shape [k, *shape] on the CPU.

    Row i is specialist i's noise: DARE keeps an entry where noise < density,
    DELLA where noise < its keep probability. The generator fills rows in order,
    so row i does not change when specialists are appended.
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(stable_seed(seed, tensor_name))
    return torch.rand(tuple(shape_k), generator=generator, dtype=torch.float32)
