"""Corpus extraction for the demo zoo: CPython's stdlib, the Python docs' reST sources, third-party code.

Everything here is plain Python (no torch), deterministic, and ordered: files are sorted by their
``source`` name, and the held-out split is a stable hash of that name (see :func:`is_heldout`).

Domains
-------
* ``code``  -- stdlib ``.py`` files that are not tests, as found (comments and docstrings kept).
* ``tests`` -- stdlib test modules (``test_*.py``), as found.
* ``prose`` -- the Python documentation's reST sources (Debian ``python3.X-doc``) cleaned to plain
  prose, one record per ``.rst`` file.
* ``bare_code`` -- the training code files without comments and docstrings (:func:`bare_code`).
* derived from code files: ``docstrings`` (all docstrings of one file), generation pairs
  (signature + docstring -> body) and summarisation pairs (code without docstring -> summary);
  see :func:`function_pairs` for the exact formats.
* ``external`` code/prose: third-party packages found in site-packages, never trained on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from automerge.jsonl import read_jsonl  # noqa: F401 - the zoo's reader of its data files
from automerge.pysource import SUMMARY_MARK, function_blocks, one_line_summary, parse_module

HELDOUT_MOD = 10  # about 1 file in 10 is held out
MAX_FILE_BYTES = 120_000  # larger files are data tables or giant test suites: skipped everywhere

# stdlib directories that hold no ordinary code (data, vendored wheels, test fixtures)
_SKIP_DIRS = {"site-packages", "__pycache__", "lib2to3/tests/data", "pydoc_data", "encodings", "ensurepip",
              "test/test_lib2to3/data", "test/tracedmodules", "test/encoded_modules", "test/decimaltestdata",
              "idlelib/Icons", "turtledemo"}
_SKIP_PREFIXES = ("config-", "lib-dynload", "_sysconfigdata")


@dataclass(frozen=True)
class Record:
    """One source file (or one derived text) of a domain."""

    id: str
    source: str
    text: str
    extra: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict:
        d = {"id": self.id, "source": self.source, "text": self.text}
        d.update(dict(self.extra))
        return d


@dataclass(frozen=True)
class Pair:
    """A prompt/target pair scored on the target tokens only."""

    id: str
    source: str
    prompt: str
    target: str

    def to_json(self) -> dict:
        return {"id": self.id, "source": self.source, "prompt": self.prompt, "target": self.target}


# --------------------------------------------------------------------------------------- split
def stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def is_heldout(source: str) -> bool:
    """The split rule: a file is held out when sha256(source)[:8] (big-endian) % 10 == 0."""
    return stable_hash(source) % HELDOUT_MOD == 0


# --------------------------------------------------------------------------------------- stdlib
def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_text(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) > max_bytes or b"\x00" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n")


def stdlib_files(root: Path | None = None) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(code, tests) as sorted lists of (source name "Lib/<rel>", path). Nothing is read yet."""
    root = root or stdlib_dir()
    code: list[tuple[str, Path]] = []
    tests: list[tuple[str, Path]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(_SKIP_PREFIXES) or any(rel == d or rel.startswith(d + "/") or f"/{d}/" in f"/{rel}"
                                                  for d in _SKIP_DIRS):
            continue
        parts = rel.split("/")
        name = parts[-1]
        in_test_dir = any(p in ("test", "tests", "idle_test") for p in parts[:-1])
        if name.startswith("test_"):
            tests.append(("Lib/" + rel, path))
        elif in_test_dir:
            continue  # test support modules and fixtures: neither domain
        else:
            code.append(("Lib/" + rel, path))
    return code, tests


def load_code_records(files: Iterable[tuple[str, Path]], domain: str, max_bytes: int = MAX_FILE_BYTES) -> list[Record]:
    out = []
    for source, path in files:
        text = _read_text(path, max_bytes)
        if text is None or len(text.strip()) < 200 or parse_module(text) is None:
            continue
        out.append(Record(f"{domain}:{source}", source, text))
    return out


# --------------------------------------------------------------------------------------- docstrings / pairs
def docstrings(text: str, tree: ast.Module | None = None) -> list[str]:
    """All docstrings of a module (module, classes, functions), cleaned, in source order."""
    tree = tree or parse_module(text)
    if tree is None:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 20:
                out.append((getattr(node, "lineno", 0), doc))
    out.sort(key=lambda t: t[0])
    return [d for _, d in out]


def docstring_text(text: str, tree: ast.Module | None = None) -> str:
    return "\n\n".join(docstrings(text, tree))


def bare_code(text: str, tree: ast.Module | None = None) -> str:
    """The file without its comments and docstrings: code with (almost) no English in it.

    The code specialist trains on this, so that it forgets prose instead of learning docstring English
    (third-party prose is mostly docstrings and READMEs). Whole lines holding a docstring or only a
    comment are dropped; a body left empty gets ``pass``; trailing comments are cut. "" when the file
    does not parse or tokenize.
    """
    import io
    import tokenize

    tree = tree or parse_module(text)
    if tree is None:
        return ""
    lines = text.split("\n")
    drop: set[int] = set()
    fill: dict[int, str] = {}  # 1-based line -> replacement (an emptied body's ``pass``)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            continue
        if not isinstance(node, ast.Module) and first.lineno == node.lineno:
            continue  # a one-line ``def f(): "doc"``: keep the line
        drop.update(range(first.lineno, first.end_lineno + 1))
        if len(node.body) == 1 and not isinstance(node, ast.Module):
            fill[first.lineno] = " " * first.col_offset + "pass"
    comments: dict[int, int] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.start[1]
    except (tokenize.TokenError, SyntaxError):
        return ""
    out = []
    for i, line in enumerate(lines, 1):
        if i in fill:
            out.append(fill[i])
        if i in drop:
            continue
        if i in comments:
            line = line[: comments[i]].rstrip()
            if not line.strip():
                continue
        out.append(line)
    return "\n".join(out).strip("\n") + "\n"


@dataclass(frozen=True)
class FunctionPair:
    name: str
    gen_prompt: str   # "def f(...):\n    \"\"\"doc\"\"\""   (ends at the closing quotes)
    gen_target: str   # "\n    body...\n"                     (starts with the newline)
    sum_prompt: str   # "def f(...):\n    body...\n# Summary:"
    sum_target: str   # " first paragraph of the docstring, on one line\n"

    @property
    def summarisation_text(self) -> str:
        return self.sum_prompt + self.sum_target


def function_pairs(text: str, tree: ast.Module | None = None) -> list[FunctionPair]:
    """Functions with a docstring and a body, as generation and summarisation pairs.

    Formats (the function's source is dedented to column 0, decorators dropped):

    * generation:    prompt = header + docstring lines (up to the closing quotes), target = the rest
      of the body starting with its newline.
    * summarisation: prompt = header + body without the docstring lines + ``"# Summary:"``,
      target = ``" " + first paragraph of the cleaned docstring on one line + "\\n"``.
    """
    out = []
    for fb in function_blocks(text, tree or parse_module(text)):
        summary = one_line_summary(fb.docstring)
        if not fb.doc or len(summary) < 10:
            continue
        nh, nd = len(fb.header), len(fb.doc)
        ded = fb.header + fb.doc + fb.body
        gen_prompt = "".join(ded[:nh + nd]).rstrip("\n")
        gen_target = "\n" + "".join(ded[nh + nd:])
        if not gen_target.endswith("\n"):
            gen_target += "\n"
        code_nodoc = "".join(ded[:nh] + ded[nh + nd:])
        if not code_nodoc.endswith("\n"):
            code_nodoc += "\n"
        if len(gen_prompt) > 1500 or not (20 <= len(gen_target) <= 2000) or len(code_nodoc) > 2500:
            continue
        out.append(FunctionPair(fb.node.name, gen_prompt, gen_target, code_nodoc + SUMMARY_MARK,
                                " " + summary + "\n"))
    return out


# --------------------------------------------------------------------------------------- reST -> prose
_SKIP_DIRECTIVES = {
    "toctree", "index", "code-block", "sourcecode", "code", "testcode", "testsetup", "testcleanup",
    "testoutput", "doctest", "literalinclude", "highlight", "productionlist", "image", "figure", "raw",
    "include", "tabularcolumns", "only", "ifconfig", "moduleauthor", "sectionauthor", "currentmodule",
    "program", "graphviz", "csv-table", "list-table", "audit-event", "audit-event-table", "limited-api-list",
    "c:namespace", "c:namespace-push", "c:namespace-pop", "highlightlang", "default-role", "role",
    "sidebar", "maxdepth", "miscnews", "opcode", "pdbcommand", "availability", "impl-detail-skip",
    "literalinclude", "glossary-skip", "autoclass", "automodule", "autofunction", "seealso-skip",
    "centered", "hlist", "cssclass", "deprecated-removed-skip", "statemachine", "digraph",
}
_VERSION_DIRECTIVES = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
                       "deprecated": "Deprecated since version {}:",
                       "deprecated-removed": "Deprecated since version {}:"}
_DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_COMMENT_RE = re.compile(r"^(\s*)\.\.(\s|$)")
_UNDERLINE_RE = re.compile(r"^\s*([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_TABLE_RE = re.compile(r"^\s*[+|]([-=+ ]|$)|^\s*(=+\s+)+=+\s*$")


def _inline(text: str) -> str:
    # :role:`title <target>` -> title ; :role:`~a.b.c` -> c ; :role:`!x` -> x ; :role:`x` -> x
    def role(m: re.Match) -> str:
        body = m.group(2)
        t = re.match(r"^(.*?)\s*<[^<>]*>$", body, re.S)
        if t and t.group(1):
            return t.group(1)
        body = body.lstrip("!")
        if body.startswith("~"):
            body = body[1:].split(".")[-1]
        return body
    text = re.sub(r":([\w:+-]+):`([^`]*)`", role, text)
    text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", text)   # `link <url>`_
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*\n]+?)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?![\w*])", r"\1", text)
    text = re.sub(r"\s?\[#[\w-]*\]_", "", text)
    text = re.sub(r"\|(\w[\w -]*)\|_?", r"\1", text)
    text = text.replace("\\ ", "").replace("\\*", "*").replace("\\`", "`")
    return text


def _directive_text(name: str, arg: str) -> str | None:
    """What a kept directive's own line becomes in prose (None: nothing)."""
    if name in _VERSION_DIRECTIVES:
        ver = arg.split()[0] if arg else ""
        return _VERSION_DIRECTIVES[name].format(ver) + (" " + " ".join(arg.split()[1:]) if len(arg.split()) > 1 else "")
    if name == "rubric" or name == "topic" or name == "admonition":
        return arg or None
    if arg and not name.startswith(("note", "warning", "seealso", "important", "tip", "caution",
                                    "attention", "hint", "danger", "error", "impl-detail")):
        return arg  # object description: keep the signature as one line
    return None


def clean_rst(rst: str) -> str:
    """reST (Python docs flavour) -> plain prose: markup, code and doctest blocks, tables dropped."""
    rst = re.sub(r" ?\\\n\s*", " ", rst.replace("\r\n", "\n"))  # backslash-continued signatures
    lines = rst.replace("\t", "        ").split("\n")
    out: list[str] = []
    skip_indent: int | None = None  # skip lines that are blank or indented more than this
    in_options = False
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
            out.append("")
        if in_options:
            if re.match(r"^\s*:[\w -]+:", line) and stripped:
                continue
            in_options = False
        if not stripped:
            out.append("")
            continue
        m = _DIRECTIVE_RE.match(line)
        if m:
            name, arg = m.group(2).lower(), m.group(3).strip()
            if name in _SKIP_DIRECTIVES or name == "module" or name.startswith("auto"):
                skip_indent = indent
                continue
            kept = _directive_text(name, arg)
            if kept is not None:
                out.append(kept)
            in_options = True
            continue
        if _COMMENT_RE.match(line):  # comments, targets, footnotes, substitutions
            skip_indent = indent
            continue
        if _UNDERLINE_RE.match(line) or _TABLE_RE.match(line):
            continue
        if stripped.startswith(">>>"):
            # doctest block: until a blank line
            while i < len(lines) and lines[i].strip():
                i += 1
            continue
        if stripped.endswith("::"):
            text = stripped[:-2].rstrip()
            if text:
                out.append(text + ("" if stripped.endswith(" ::") else ":"))
            skip_indent = indent
            continue
        out.append(stripped)
    # join paragraphs, collapse blank runs
    text = _inline("\n".join(out))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text + "\n" if text else ""


def doc_sources_dir(search_root: Path = Path("/usr/share/doc")) -> Path | None:
    """The reST sources of this Python's docs from Debian's python3.X-doc package, or None."""
    v = sys.version_info
    d = search_root / f"python{v.major}.{v.minor}" / "html" / "_sources"
    return d if d.is_dir() and any(d.rglob("*.rst.txt")) else None


def doc_package_name() -> str:
    v = sys.version_info
    return f"python{v.major}.{v.minor}-doc"


def prose_records(doc_dir: Path) -> list[Record]:
    out = []
    for path in sorted(doc_dir.rglob("*.rst.txt")):
        rel = path.relative_to(doc_dir).as_posix()[: -len(".txt")]
        if rel.startswith(("whatsnew/changelog", "includes/")) or rel in ("license.rst", "copyright.rst"):
            continue
        try:
            raw = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        text = clean_rst(raw)
        if len(text) < 300:
            continue
        source = "Doc/" + rel
        out.append(Record(f"prose:{source}", source, text))
    return out


def pydoc_topic_records() -> list[Record]:
    """pydoc_data.topics: the language reference topics as plain text (no apt package needed)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Pythons
        return []
    out = []
    for key in sorted(topics):
        text = topics[key].strip()
        if len(text) >= 300:
            source = f"Lib/pydoc_data/topics.py#{key}"
            out.append(Record(f"prose:{source}", source, text + "\n"))
    return out


# --------------------------------------------------------------------------------------- external
EXTERNAL_PACKAGES = ("rich", "typer", "click", "optuna", "jinja2", "yaml", "attr", "tqdm", "pandas",
                     "sqlalchemy", "requests", "packaging", "pydantic", "markdown_it", "alembic", "pygments")


def site_packages_dir() -> Path | None:
    for key in ("purelib", "platlib"):
        p = Path(sysconfig.get_paths()[key])
        if p.is_dir():
            return p
    return None


def _dist_info(site: Path, pkg: str) -> tuple[str, str, str, str]:
    """(dist name, version, licence, long description) for an import package, best effort."""
    import importlib.metadata as md

    names = md.packages_distributions().get(pkg, [])
    for name in sorted(names):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        meta = dist.metadata
        lic = meta.get("License-Expression") or ""
        if not lic or len(lic) > 60:
            l2 = meta.get("License") or ""
            lic = l2 if l2 and len(l2) <= 60 else lic
        if not lic or len(lic) > 60:
            cls = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
            lic = ", ".join(cls) if cls else "see package metadata"
        desc = meta.get_payload() or meta.get("Description") or ""
        ctype = (meta.get("Description-Content-Type") or "").lower()
        return name, dist.version, lic, (ctype + "\x00" + desc)
    return pkg, "?", "see package metadata", ""


def clean_markdown(md_text: str) -> str:
    text = re.sub(r"```.*?```", "", md_text, flags=re.S)
    text = re.sub(r"~~~.*?~~~", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[!\[[^\]]*\]\([^)]*\)\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>\n]+>", "", text)
    lines = []
    for line in text.split("\n"):
        s = line.rstrip()
        if s.startswith("    ") or s.lstrip().startswith(("|", ">>>", "$ ")) or re.match(r"^\s*[-=*_]{3,}\s*$", s):
            continue
        s = re.sub(r"^#+\s*", "", s.strip())
        s = re.sub(r"`([^`]+)`", r"\1", s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"\1", s)
        lines.append(s)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else ""


def external_records(site: Path | None = None, *, max_code_bytes: int = 50_000, max_file_bytes: int = 30_000,
                     packages: Iterable[str] = EXTERNAL_PACKAGES) -> tuple[list[Record], list[Record], list[dict]]:
    """Third-party code and documentation from site-packages: (code, prose, provenance rows)."""
    site = site or site_packages_dir()
    code: list[Record] = []
    prose: list[Record] = []
    prov: list[dict] = []
    if site is None:
        return code, prose, prov
    for pkg in packages:
        root = site / pkg
        if not root.is_dir():
            continue
        dist, version, lic, desc = _dist_info(site, pkg)
        extra = (("package", f"{dist} {version}"), ("licence", lic))
        files = []
        for path in root.rglob("*.py"):
            rel = path.relative_to(site).as_posix()
            parts = rel.split("/")
            if any(p in ("tests", "test", "testing", "_vendor", "vendor") for p in parts) or parts[-1].startswith("test"):
                continue
            files.append((stable_hash(rel), rel, path))
        files.sort()
        used = 0
        n_code = n_doc = 0
        for _, rel, path in files:
            text = _read_text(path)
            if text is None or len(text) > max_file_bytes or len(text) < 1500:
                continue
            tree = parse_module(text)
            if tree is None:
                continue
            if used < max_code_bytes:
                source = "site-packages/" + rel
                code.append(Record(f"external-code:{source}", source, text, extra))
                used += len(text)
                n_code += 1
            ds = docstring_text(text, tree)
            if len(ds) >= 800 and n_doc < 6:
                source = "site-packages/" + rel + "#docstrings"
                prose.append(Record(f"external-prose:{source}", source, ds + "\n", extra))
                n_doc += 1
            if used >= max_code_bytes and n_doc >= 6:
                break
        ctype, _, body = desc.partition("\x00")
        readme = ""
        if body.strip():
            readme = clean_rst(body) if "rst" in ctype or (not ctype and "\n===" in body) else clean_markdown(body)
        if len(readme) >= 500:
            source = f"site-packages/{dist}-{version}.dist-info/METADATA#description"
            prose.append(Record(f"external-prose:{source}", source, readme[:20000], extra))
        prov.append({"package": dist, "version": version, "licence": lic, "code_files": n_code,
                     "doc_records": n_doc + (1 if len(readme) >= 500 else 0)})
    code.sort(key=lambda r: r.source)
    prose.sort(key=lambda r: r.source)
    return code, prose, prov


# --------------------------------------------------------------------------------------- io
def write_jsonl(path: Path, records: Iterable[Record | Pair | dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            d = r if isinstance(r, dict) else r.to_json()
            f.write(json.dumps(d, ensure_ascii=False, sort_keys=False) + "\n")
            n += 1
    return n


def derived_train(code_records: Iterable[Record]) -> tuple[list[str], list[str], list[str]]:
    """(docstring texts, summarisation texts, bare code texts) derived from training code records."""
    docs, summ, bare = [], [], []
    for r in code_records:
        tree = parse_module(r.text)
        ds = docstring_text(r.text, tree)
        if ds:
            docs.append(ds + "\n")
        b = bare_code(r.text, tree)
        if b.strip():
            bare.append(b)
        summ.extend(p.summarisation_text for p in function_pairs(r.text, tree))
    return docs, summ, bare


def derived_heldout(code_records: Iterable[Record]) -> tuple[list[Record], list[Pair], list[Pair]]:
    """(docstrings, generation pairs, summarisation pairs) derived from held-out code records."""
    docs, gen, summ = [], [], []
    for r in code_records:
        tree = parse_module(r.text)
        ds = docstring_text(r.text, tree)
        if ds:
            docs.append(Record(f"docstrings:{r.source}", r.source, ds + "\n"))
        for k, p in enumerate(function_pairs(r.text, tree)):
            gen.append(Pair(f"generation:{r.source}#{k}:{p.name}", r.source, p.gen_prompt, p.gen_target))
            summ.append(Pair(f"summarisation:{r.source}#{k}:{p.name}", r.source, p.sum_prompt, p.sum_target))
    return docs, gen, summ


# --------------------------------------------------------------------------------------- the whole corpus
@dataclass
class Corpus:
    """Everything a build needs, split by file. Lists are in a fixed order (sorted by source)."""

    train: dict[str, list[str]]          # code, tests, prose, docstrings, summarisation, bare_code -> texts
    heldout: dict[str, list]             # code, tests, prose, docstrings (Records); generation, summarisation (Pairs)
    external: dict[str, list[Record]]    # code, prose
    provenance: list[dict]
    info: dict


class MissingDocsError(Exception):
    """Raised when the Python docs' reST sources are not installed (wrapped by build.py)."""


def _pick(records: list[Record], n_train: int, n_heldout: int) -> tuple[list[Record], list[Record]]:
    order = sorted(records, key=lambda r: stable_hash(r.source))
    ho = [r for r in order if is_heldout(r.source)][:n_heldout]
    tr = [r for r in order if not is_heldout(r.source)][:n_train]
    return sorted(tr, key=lambda r: r.source), sorted(ho, key=lambda r: r.source)


def collect(size: str, *, doc_root: Path = Path("/usr/share/doc"), stdlib: Path | None = None) -> Corpus:
    """Extract and split the corpus. ``size="test"`` reads a few small files and needs no apt package."""
    stdlib = stdlib or stdlib_dir()
    code_f, test_f = stdlib_files(stdlib)
    info = {"python": sys.version.split()[0], "stdlib": str(stdlib), "heldout_rule":
            f"sha256(source)[:8] as big-endian int % {HELDOUT_MOD} == 0"}
    if size == "test":
        small = 16_000
        pool = lambda fs: sorted(fs, key=lambda t: stable_hash(t[0]))  # noqa: E731
        code_all = load_code_records([f for f in pool(code_f)][:80], "code", small)
        test_all = load_code_records([f for f in pool(test_f)][:80], "tests", small)
        if not test_all:  # a Python without its test suite: unittest-using modules stand in
            test_all = [Record(r.id.replace("code:", "tests:"), r.source, r.text) for r in code_all
                        if "unittest" in r.text or "assert " in r.text]
        code_tr, code_ho = _pick(code_all, 8, 2)
        test_tr, test_ho = _pick(test_all, 5, 1)
        prose_tr, prose_ho = _pick(pydoc_topic_records(), 25, 3)
        info["docs"] = "pydoc_data.topics"
    elif size == "full":
        doc_dir = doc_sources_dir(doc_root)
        if doc_dir is None:
            raise MissingDocsError(str(doc_root / f"python{sys.version_info.major}.{sys.version_info.minor}"
                                       / "html" / "_sources"))
        code_all = load_code_records(code_f, "code")
        test_all = load_code_records(test_f, "tests", 80_000)
        if len(test_all) < 50:
            raise MissingDocsError("tests")
        prose_all = prose_records(doc_dir)
        split = lambda rs: ([r for r in rs if not is_heldout(r.source)], [r for r in rs if is_heldout(r.source)])  # noqa: E731
        code_tr, code_ho = split(code_all)
        test_tr, test_ho = split(test_all)
        prose_tr, prose_ho = split(prose_all)
        info["docs"] = str(doc_dir)
    else:
        raise ValueError(f"size must be 'full' or 'test', not {size!r}")

    docs_tr, summ_tr, bare_tr = derived_train(code_tr)
    docs_ho, gen_ho, summ_ho = derived_heldout(code_ho)
    if size == "test":
        ext_code, ext_prose, prov = external_records(packages=("typer", "click"), max_code_bytes=12_000,
                                                     max_file_bytes=12_000)
        ext_prose = ext_prose[:3]
    else:
        ext_code, ext_prose, prov = external_records()
    return Corpus(
        train={"code": [r.text for r in code_tr], "tests": [r.text for r in test_tr],
               "prose": [r.text for r in prose_tr], "docstrings": docs_tr, "summarisation": summ_tr,
               "bare_code": bare_tr},
        heldout={"code": code_ho, "tests": test_ho, "prose": prose_ho, "docstrings": docs_ho,
                 "generation": gen_ho, "summarisation": summ_ho},
        external={"code": ext_code, "prose": ext_prose},
        provenance=prov, info=info)


def write_data(corpus: Corpus, data_dir: Path) -> dict[str, dict]:
    """Write data/heldout/*.jsonl and data/external/*.jsonl; returns {relative path: {records, bytes}}."""
    sizes = {}
    for kind, groups in (("heldout", corpus.heldout), ("external", corpus.external)):
        for name, recs in groups.items():
            path = data_dir / kind / f"{name}.jsonl"
            n = write_jsonl(path, recs)
            sizes[f"{kind}/{name}.jsonl"] = {"records": n, "bytes": path.stat().st_size}
    return sizes
