"""The quality-holdout split: third-party text that no proxy rung and no full evaluation ever reads.

The zoo ships third-party code and prose (``external/{code,prose}.jsonl``, never trained on). Half of
those files feed the out-of-distribution proxy tasks (``ext_*``); the other half is kept back so the
search's promise can be checked on text nothing in the loop has seen: the zoo card's targets and
``bench/quality_bench.py`` score it, the proxies never do.

The rule is a stable hash of the record's ``source`` (one file of one package), salted so that it is
independent of the zoo's train/held-out rule: a whole file lands on one side, never split.
"""

from __future__ import annotations

import hashlib

QUALITY_SALT = "automerge-quality-holdout:"


def is_quality_holdout(source: str) -> bool:
    """True when the third-party record ``source`` belongs to the quality holdout (about half of them)."""
    digest = hashlib.sha256((QUALITY_SALT + source).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 2 == 1
