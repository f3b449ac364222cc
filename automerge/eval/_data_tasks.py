"""``data:PATH.jsonl`` tasks: proxies from the user's own data (say, the held-out split of each
specialist's fine-tuning set), scored like the shipped proxies.

A task name is ``data:PATH.jsonl`` with an optional query ``?domain=code|nl&metric=NAME``; PATH is a
local JSON-lines file (``~`` expanded, relative to the working directory). Every line is one
object, all of one kind:

* ``{"text": …}`` — per-token log-likelihood of the whole text (lm-eval's ``loglikelihood_rolling``:
  disjoint windows of the model's context length, the first after the prefix token);
* ``{"prompt": …, "completion": …}`` — per-token log-likelihood of the completion given the prompt;
* ``{"prompt": …, "choices": […], "answer": i}`` — multiple choice by log-likelihood.

An optional ``"id"`` names the item (default: its line number). Scores and metrics are the shipped
proxies': ``token_prob`` (default; also ``ll_per_token``, ``ppl`` in the metrics) for the first
two kinds, ``acc_norm`` (default), ``acc`` or ``p_correct`` for multiple choice. The domain defaults
to ``nl``. Order, batching, prefix sharing and caching are the Evaluator's: items ranked by
``sha256(f"{seed}:data:{PATH}:{id}")``, so rung r scores a prefix of one fixed order (nested
subsets, the same for every trial).

A bad file or record is an :class:`~automerge.errors.EvalError` naming the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from automerge.errors import EvalError
from automerge.jsonl import iter_jsonl

PREFIX = "data:"
KINDS = {"text": ("text",), "completion": ("prompt", "completion"), "mc": ("prompt", "choices", "answer")}
METRICS = {"text": ("token_prob",), "completion": ("token_prob",), "mc": ("acc_norm", "acc", "p_correct")}
DEFAULT_METRIC = {"text": "token_prob", "completion": "token_prob", "mc": "acc_norm"}
DOMAINS = ("nl", "code")
_OPTIONAL = {"id"}


def is_data_task(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class DataTaskName:
    """A parsed ``data:`` task name (no file read)."""

    spec: str           # the name as written
    path: Path          # resolved file path
    order_key: str      # what items are ranked by: "data:PATH" as written, without the query
    domain: str
    metric: str | None  # None: the kind's default


def parse(spec: str) -> DataTaskName:
    """Split and check a ``data:PATH.jsonl[?domain=…&metric=…]`` name; EvalError says what is wrong."""
    if not is_data_task(spec):
        raise EvalError(f"{spec!r} is not a data task (data:PATH.jsonl)")
    body = spec[len(PREFIX):]
    path_s, _, query = body.partition("?")
    if not path_s:
        raise EvalError(f"task {spec!r}: no file; write data:PATH.jsonl")
    opts: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k not in ("domain", "metric"):
            raise EvalError(f"task {spec!r}: unknown option {k!r}; use ?domain=nl|code and/or &metric=NAME")
        opts[k] = v
    domain = opts.get("domain", "nl")
    if domain not in DOMAINS:
        raise EvalError(f"task {spec!r}: domain {domain!r}; use domain=nl or domain=code")
    metric = opts.get("metric")
    known = sorted({m for ms in METRICS.values() for m in ms})
    if metric is not None and metric not in known:
        raise EvalError(f"task {spec!r}: metric {metric!r}; use one of {', '.join(known)}")
    return DataTaskName(spec=spec, path=Path(path_s).expanduser(), order_key=PREFIX + path_s, domain=domain,
                        metric=metric)


@dataclass(frozen=True)
class DataTask:
    name: DataTaskName
    kind: str           # "text" | "completion" | "mc"
    metric: str
    items: list[dict]   # id + the record's fields; MC items carry context/choices/gold like shipped ones

    @property
    def domain(self) -> str:
        return self.name.domain


def _kind_of(rec: dict, where: str) -> str:
    keys = set(rec) - _OPTIONAL
    for kind, fields in KINDS.items():
        if keys == set(fields):
            return kind
    raise EvalError(f"{where}: fields {sorted(rec)}; a record is {{\"text\"}}, {{\"prompt\", \"completion\"}} or "
                    "{\"prompt\", \"choices\", \"answer\"} (plus an optional \"id\")")


def _check(rec: dict, kind: str, where: str) -> dict:
    def text(field: str, *, empty_ok: bool = False) -> str:
        v = rec[field]
        if not isinstance(v, str) or (not empty_ok and not v):
            raise EvalError(f"{where}: \"{field}\" must be a non-empty string")
        return v

    if kind == "text":
        return {"text": text("text")}
    if kind == "completion":
        return {"context": text("prompt", empty_ok=True), "continuation": text("completion")}
    choices = rec["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise EvalError(f"{where}: \"choices\" must be a list of at least 2 non-empty strings")
    ans = rec["answer"]
    if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
        raise EvalError(f"{where}: \"answer\" must be the index of the right choice, 0 to {len(choices) - 1}; "
                        f"got {ans!r}")
    return {"context": text("prompt", empty_ok=True), "choices": list(choices), "gold": ans}


def load(spec: str) -> DataTask:
    """Read and check a data task's file: every line a JSON object of one kind."""
    name = parse(spec)
    path = name.path
    if not path.is_file():
        raise EvalError(f"task {spec!r}: file {path} does not exist (paths are relative to the working directory)")
    items: list[dict] = []
    kind: str | None = None
    ids: dict[str, int] = {}
    for n, rec in iter_jsonl(path, error=EvalError):
        where = f"{path}:{n}"
        if not isinstance(rec, dict):
            raise EvalError(f"{where}: a line must be a JSON object, not {type(rec).__name__}")
        k = _kind_of(rec, where)
        if kind is None:
            kind = k
        elif k != kind:
            raise EvalError(f"{where}: a {k!r} record in a file of {kind!r} records; one kind per file")
        item_id = rec.get("id", f"line{n}")
        if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
            raise EvalError(f"{where}: \"id\" must be a string or an integer")
        item_id = str(item_id)
        if item_id in ids:
            raise EvalError(f"{where}: id {item_id!r} repeats line {ids[item_id]}; ids must be unique")
        ids[item_id] = n
        items.append({"id": item_id, **_check(rec, k, where)})
    if kind is None:
        raise EvalError(f"task {spec!r}: {path} holds no records")
    metric = name.metric or DEFAULT_METRIC[kind]
    if metric not in METRICS[kind]:
        raise EvalError(f"task {spec!r}: metric {metric!r} does not apply to {kind!r} records; use "
                        f"{' or '.join(METRICS[kind])}")
    return DataTask(name=name, kind=kind, metric=metric, items=items)
