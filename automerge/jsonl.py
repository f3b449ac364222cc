"""JSON-lines files read one way everywhere: blank lines skipped, a bad line named by file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from automerge.errors import AutomergeError


def iter_jsonl(path: str | Path, *, error: type[Exception] = AutomergeError,
               fix: str = "each line must be one JSON object") -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of every non-blank line. A line that is not JSON raises
    ``error("PATH:LINE: not valid JSON (why); <fix>")``."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: not valid JSON ({e}); {fix}") from None


def read_jsonl(path: str | Path, **kw) -> list[Any]:
    """Every value of a JSON-lines file (see :func:`iter_jsonl`)."""
    return [rec for _, rec in iter_jsonl(path, **kw)]


def read_texts(path: str | Path, *, error: type[Exception] = AutomergeError) -> list[str]:
    """Texts of a data file (healing, Fisher estimates). A ``.jsonl`` file holds one object a line:
    a "text" string, or "prompt" + "target"/"completion" (joined); any other file is one text."""
    p = Path(path)
    if not p.is_file():
        raise error(f"data file {p} does not exist")
    if p.suffix != ".jsonl":
        return [p.read_text(encoding="utf-8")]
    texts = []
    for n, rec in iter_jsonl(p, error=error):
        if isinstance(rec, dict) and isinstance(rec.get("text"), str):
            texts.append(rec["text"])
        elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and \
                isinstance(rec.get("target", rec.get("completion")), str):
            texts.append(rec["prompt"] + rec.get("target", rec.get("completion")))
        else:
            raise error(f"{p}:{n}: expected an object with a \"text\" string (or \"prompt\" and "
                        "\"target\"/\"completion\")")
    if not texts:
        raise error(f"{p} holds no texts")
    return texts
