"""Functions cut out of Python source, dedented: what the zoo trains on (``automerge.zoo.corpus``)
and what the proxy tasks are built from (``automerge.eval._tasks``), one extraction for both.

A function's block is its source lines from ``def`` to its last line, decorators dropped, dedented
to column 0, split into header (up to the line ending in ``:``), docstring lines as written, and
body (what follows the docstring: comments and blank lines between them belong to the body).
A block that does not dedent cleanly (a line left of the ``def``), a one-line ``def f(): x`` and
a docstring-only function are skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

SUMMARY_MARK = "# Summary:"      # ends a summarisation prompt: code without its docstring, then this


def parse_module(text: str) -> ast.Module | None:
    """The module's AST, or None when it does not parse (syntax, null bytes, too deep)."""
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def one_line_summary(doc: str) -> str:
    """The first paragraph of a cleaned docstring, on one line."""
    para = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines() if line.strip())


@dataclass(frozen=True)
class FunctionBlock:
    node: ast.FunctionDef | ast.AsyncFunctionDef
    header: list[str]     # dedented lines, line ends kept
    doc: list[str]        # the docstring's lines as written ([] when none)
    body: list[str]
    docstring: str        # the cleaned docstring ("" when none)


def _has_docstring(node: ast.AST) -> bool:
    first = node.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _block_lines(node, lines: list[str]) -> tuple[list[str], list[str], list[str]] | None:
    """(header, docstring, body) source lines of a function, or None when it has no separate body."""
    first = node.body[0]
    has_doc = _has_docstring(node)
    if (has_doc and len(node.body) < 2) or first.lineno <= node.lineno:
        return None
    if has_doc:
        return (lines[node.lineno - 1:first.lineno - 1], lines[first.lineno - 1:first.end_lineno],
                lines[first.end_lineno:node.end_lineno])
    return lines[node.lineno - 1:first.lineno - 1], [], lines[first.lineno - 1:node.end_lineno]


def function_blocks(text: str, tree: ast.Module | None = None) -> Iterator[FunctionBlock]:
    """Every function of a module (nested ones too, in ``ast.walk`` order) whose block dedents cleanly."""
    tree = tree if tree is not None else parse_module(text)
    if tree is None:
        return
    lines = text.splitlines(keepends=True)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
            continue
        parts = _block_lines(node, lines)
        if parts is None:
            continue
        header, docl, body = parts
        if not header or not body or not header[-1].rstrip().endswith(":"):
            continue
        if docl and not docl[-1].rstrip().endswith(('"""', "'''")):
            continue
        indent = node.col_offset
        if any(ln.strip() and not ln.startswith(" " * indent) for ln in header + docl + body):
            continue

        def ded(block: list[str]) -> list[str]:
            return [ln[indent:] if ln.strip() else ln.lstrip(" ") for ln in block]

        yield FunctionBlock(node=node, header=ded(header), doc=ded(docl), body=ded(body),
                            docstring=(ast.get_docstring(node, clean=True) or "") if docl else "")
