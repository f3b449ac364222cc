"""A doc that names a file that does not exist is a bug: every Markdown file named in the package's
code and docstrings, the README, docs/, bench/ and tests must exist in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ["README.md", "pyproject.toml", "Makefile", "docs/**/*.md", "automerge/**/*.py", "automerge/**/*.md",
           "bench/**/*.py", "tests/**/*.py", "search_spaces/*.yaml"]
# Files the code writes, not files of the repository: a bench's table under another --out
# (bench/search_bench.py: BENCHMARKS.search.md).
WRITTEN = re.compile(r"BENCHMARKS\.\w+\.md")
MD_NAME = re.compile(r"(?<![\w./:-])([\w.-]+/)*[\w-][\w.-]*\.md\b")


def _named(text: str) -> list[str]:
    out = []
    for m in MD_NAME.finditer(text):
        token_start = max(text.rfind(c, 0, m.start()) for c in " \n\t(\"'`<[") + 1
        if "://" not in text[token_start:m.start()]:  # not part of a URL
            out.append(m.group(0))
    return out


def _repo_md_names() -> set[str]:
    return {p.name for p in ROOT.rglob("*.md") if not {".venv", ".git", "node_modules"} & set(p.parts)}


def _exists(name: str, where: Path, bare_names: set[str]) -> bool:
    if "/" not in name:  # a bare file name: some file of the repository has it
        return name in bare_names or WRITTEN.fullmatch(name) is not None
    return any((base / name).is_file() for base in (ROOT, where.parent, ROOT / "automerge"))


def test_every_markdown_file_named_exists():
    bare = _repo_md_names()
    this = Path(__file__).resolve()  # its own examples of stale names below
    files = sorted({p for pattern in SCANNED for p in ROOT.glob(pattern) if p.is_file() and p != this})
    assert len(files) > 50, files
    missing = [f"{p.relative_to(ROOT)}: {name}" for p in files
               for name in _named(p.read_text(encoding="utf-8", errors="replace")) if not _exists(name, p, bare)]
    assert not missing, "documents named but not in the repository:\n" + "\n".join(missing)


def test_the_check_sees_a_missing_file(tmp_path):
    """The scanner finds the kinds of reference that were stale (docstring, path, bare name)."""
    text = 'Defaults are mergekit\'s (see shared/MERGE_MATH.md); "CONTRACTS.md, section eval/" and docs/x.md.'
    names = _named(text)
    assert names == ["shared/MERGE_MATH.md", "CONTRACTS.md", "docs/x.md"]
    assert not any(_exists(n, ROOT / "README.md", _repo_md_names()) for n in names)
    assert _named("see https://github.com/arcee-ai/mergekit/blob/main/README.md") == []
