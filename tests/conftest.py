"""Shared fixtures: tests run offline, single-threaded (2 cores are shared), on tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The merge engine's compiled kernels cost seconds to compile per method: only
# tests/test_engine_compiled.py turns them on.
os.environ.setdefault("AUTOMERGE_COMPILE", "0")

import pytest
import torch

torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A short "not run here" block at the end of every run (`make test`, CI): what skipped and
    why (the GPU tests on a CPU machine, PostgreSQL without a server), grouped by reason, so the
    gap is visible in the output instead of hidden in a count."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    groups: dict[str, list[str]] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        groups.setdefault(reason.removeprefix("Skipped: "), []).append(rep.nodeid.split("[")[0])
    terminalreporter.section("not run here", sep="-")
    for reason, ids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        tests = sorted(set(ids))
        shown = ", ".join(tests[:3]) + (f", … ({len(tests) - 3} more)" if len(tests) > 3 else "")
        terminalreporter.write_line(f"{len(ids):3d} not run ({reason}): {shown}")
