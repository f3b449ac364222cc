"""Bridge to lm-evaluation-harness: any lm-eval task, by built-in name or by a YAML file, as a
proxy (nested fixed subsets of its documents) or as a full task.

Set up once per Evaluator and task, replayed per trial:

* the task is loaded once: a YAML path through ``TaskManager(include_defaults=False,
  include_path=<its folder>)`` with relative ``data_files`` / local ``dataset_path`` made absolute
  (relative to the YAML, not the working directory); a name through the built-in index
  (``include_defaults=True``) — only then are lm-eval's own tasks indexed;
* its requests (``Instance``\\ s) are built once for every document; documents are ranked by
  ``sha256(f"{seed}:{spec}:{doc_id}")`` and a run with ``limit=n`` scores the first n;
* per trial: ``loglikelihood`` requests go through automerge's batched scorer (the same numbers as
  ``HFLM.loglikelihood``: tested), ``loglikelihood_rolling`` through its rolling twin, and
  ``generate_until`` through one ``HFLM`` wrapping the live model, created once per model object;
  then lm-eval's own filters, ``process_results`` and aggregation functions.

Never ``simple_evaluate`` per trial (it collects environment information, ~0.7 s, and re-creates
everything) and never ``use_cache`` (a response cache keyed by request text is stale as soon as the
weights change in place).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from automerge.errors import EvalError

PREFIX = "lm_eval:"


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``lm_eval:<name-or-yaml>[?domain=code&metric=acc]`` -> (name-or-path, options)."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    opts: dict[str, str] = {}
    if "?" in body:
        body, q = body.split("?", 1)
        opts = {k: v[-1] for k, v in parse_qs(q, keep_blank_values=False).items()}
        bad = set(opts) - {"domain", "metric"}
        if bad:
            raise EvalError(f"{spec}: unknown option(s) {', '.join(sorted(bad))}; allowed: domain=nl|code, metric=NAME")
    if not body:
        raise EvalError(f"{spec!r}: name an lm-eval task or a YAML file after 'lm_eval:'")
    if opts.get("domain", "nl") not in ("nl", "code"):
        raise EvalError(f"{spec}: domain must be 'nl' or 'code', not {opts['domain']!r}")
    return body, opts


def _absolutise(cfg: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative data paths in a task config resolve against the YAML's folder."""
    cfg = dict(cfg)

    def fix(v):
        if isinstance(v, str):
            p = Path(v).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    dk = dict(cfg.get("dataset_kwargs") or {})
    for key in ("data_files", "data_dir"):
        if key in dk and dk[key] is not None:
            dk[key] = fix(dk[key])
    if dk:
        cfg["dataset_kwargs"] = dk
    dp = cfg.get("dataset_path")
    if isinstance(dp, str) and (dp.startswith((".", "~")) or "/" in dp) and (base / dp).exists():
        cfg["dataset_path"] = str((base / dp).resolve())
    return cfg


def load_lm_eval_tasks(name_or_path: str) -> dict[str, Any]:
    """{task name: lm-eval Task} for a built-in name or a YAML path (groups expand to leaves)."""
    try:
        from lm_eval.tasks import TaskManager
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError as e:  # pragma: no cover - lm-eval is a dependency
        raise EvalError(f"lm-eval is not importable ({e}); install lm-eval>=0.4.5") from e
    p = Path(name_or_path).expanduser()
    try:
        if p.suffix in (".yaml", ".yml") or p.is_file():
            if not p.is_file():
                raise EvalError(f"lm-eval task file {p} does not exist; give a YAML path or a built-in task name")
            p = p.resolve()
            cfg = _absolutise(load_yaml(p, resolve_func=True), p.parent)
            tm = TaskManager(include_defaults=False, include_path=str(p.parent))
            loaded = tm.load([cfg])
        else:
            tm = TaskManager(include_defaults=True)
            if name_or_path not in tm.all_tasks:
                raise EvalError(f"{name_or_path!r} is neither a YAML file nor a built-in lm-eval task; give a path "
                                "to a task YAML (e.g. lm_eval:./tasks/my_task.yaml) or a name from `lm-eval ls tasks`")
            loaded = tm.load([name_or_path])
    except EvalError:
        raise
    except Exception as e:  # noqa: BLE001 - lm-eval raises anything (datasets offline, bad YAML)
        raise EvalError(f"lm-eval could not load task {name_or_path!r}: {type(e).__name__}: {e}. Offline, lm-eval's "
                        "built-in tasks cannot download their data: point a YAML at local files "
                        "(dataset_path: json, dataset_kwargs.data_files: …)") from e
    tasks = loaded.get("tasks", {})
    if not tasks:
        raise EvalError(f"lm-eval task {name_or_path!r} holds no tasks")
    return dict(tasks)


class LMEvalTask:
    """One lm-eval task (or group) prepared once: instances built, documents in a fixed order."""

    def __init__(self, spec: str, *, seed: int = 0):
        self.spec = spec
        self.target, opts = parse_spec(spec)
        self.domain = opts.get("domain", "nl")
        self._metric_opt = opts.get("metric")
        self.tasks = load_lm_eval_tasks(self.target)
        self._by_doc: dict[str, dict[int, list]] = {}
        self._order: dict[str, list[int]] = {}
        self._docs: dict[str, dict[int, Any]] = {}
        self.plan_cache: dict[tuple, Any] = {}   # the Evaluator's scoring plans of its requests
        for name, task in self.tasks.items():
            try:
                task.build_all_requests(limit=None, rank=0, world_size=1, cache_requests=False)
            except Exception as e:  # noqa: BLE001
                raise EvalError(f"lm-eval task {name!r} ({spec}) could not build its requests: {type(e).__name__}: {e}") from e
            by_doc: dict[int, list] = defaultdict(list)
            for inst in task.instances:
                by_doc[inst.doc_id].append(inst)
            for insts in by_doc.values():
                insts.sort(key=lambda x: x.idx)
            self._by_doc[name] = dict(by_doc)
            self._order[name] = sorted(by_doc, key=lambda d: hashlib.sha256(f"{seed}:{spec}:{name}:{d}".encode()).digest())
            self._docs[name] = {d: insts[0].doc for d, insts in by_doc.items()}

    def size(self) -> int:
        return min(len(o) for o in self._order.values())

    def _primary(self, task, metrics: dict[str, float]) -> tuple[str, float]:
        """(metric name, score): the chosen metric made higher-is-better."""
        hib = task.higher_is_better() or {}
        names = [m for m in metrics if not m.endswith("_stderr")]
        if self._metric_opt:
            if self._metric_opt not in metrics:
                raise EvalError(f"{self.spec}: metric {self._metric_opt!r} not produced; available: {', '.join(names)}")
            name = self._metric_opt
        else:
            name = "acc_norm" if "acc_norm" in metrics else ("acc" if "acc" in metrics else names[0])
        v = float(metrics[name])
        base = name.split(",")[0]
        if hib.get(base, True) is False:
            if "perplexity" in base:
                v = 1.0 / v if v > 0 else 0.0
            elif base in ("bits_per_byte",):
                v = 2.0 ** (-v)
            else:
                v = -v
        return name, v

    def run(self, *, limit: int | None, loglikelihood, loglikelihood_rolling, generate_until):
        """Score the first ``limit`` documents of every leaf task. The three callables take a list of
        Instances and return lm-eval's responses. Returns (metric, score, n, metrics) pooled over leaves."""
        all_metrics: dict[str, float] = {}
        scores, weights = [], []
        metric_name = None
        for name, task in self.tasks.items():
            docs = self._order[name][: limit if limit is not None else None]
            insts = [i for d in docs for i in self._by_doc[name][d]]
            for inst in insts:
                inst.resps = []
                inst.filtered_resps = {}
            by_type: dict[str, list] = defaultdict(list)
            for inst in insts:
                by_type[inst.request_type].extend([inst] * (inst.repeats or 1))
            for rtype, reqs in by_type.items():
                fn = {"loglikelihood": loglikelihood, "loglikelihood_rolling": loglikelihood_rolling,
                      "generate_until": generate_until}.get(rtype)
                if fn is None:
                    raise EvalError(f"{self.spec}: lm-eval request type {rtype!r} is not supported")
                resps = fn(reqs)
                for r, inst in zip(resps, reqs):
                    inst.resps.append(r)
            saved = task._instances
            task._instances = insts
            try:
                task.apply_filters()
            finally:
                task._instances = saved
            raw: dict[str, list] = defaultdict(list)
            filter_keys = list(insts[0].filtered_resps) if insts else []
            for fk in filter_keys:
                for d in docs:
                    reqs = self._by_doc[name][d]
                    res = task.process_results(self._docs[name][d], [r.filtered_resps[fk] for r in reqs])
                    for m, v in res.items():
                        raw[m if fk == "none" else f"{m},{fk}"].append(v)
            agg = task.aggregation()
            metrics: dict[str, float] = {}
            for key, values in raw.items():
                fn = agg.get(key.split(",")[0])
                try:
                    metrics[key] = float(fn(values)) if fn else float(np.mean(values))
                except OverflowError:
                    metrics[key] = math.inf
                except (TypeError, ValueError):
                    continue
            m, s = self._primary(task, metrics)
            metric_name = m if metric_name is None or metric_name == m else "mixed"
            scores.append(s)
            weights.append(len(docs))
            prefix = "" if len(self.tasks) == 1 else f"{name}/"
            all_metrics.update({prefix + k: v for k, v in metrics.items()})
        n = int(sum(weights))
        score = float(np.average(scores, weights=weights)) if n else math.nan
        return metric_name or "score", score, n, all_metrics


def export_lm_eval_task(task: str, out_dir: Path, *, limit: int | None = None, seed: int = 0,
                        data_dir: Path | None = None) -> Path:
    """Write one of automerge's proxy tasks as an lm-eval task (``<task>.jsonl`` + ``<task>.yaml``,
    the data path relative to the YAML) holding its first ``limit`` items in the fixed order: the
    same requests lm-eval scores as automerge does. MC: ``multiple_choice`` with an empty target
    delimiter (acc, acc_norm); LL: ``loglikelihood`` (acc = every continuation token greedy).
    Returns the YAML path."""
    import json

    from ._tasks import PROXY_TASKS, load_items, ordered

    spec = PROXY_TASKS.get(task)
    if spec is None:
        raise EvalError(f"unknown proxy task {task!r}")
    items = ordered(load_items(task, data_dir), task, seed)
    items = items[:limit] if limit is not None else items
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"automerge_{task}"
    with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
             f"    test: {name}.jsonl", "test_split: test", "doc_to_text: context"]
    if spec.kind == "mc":
        lines += ["output_type: multiple_choice", "doc_to_choice: choices", "doc_to_target: gold",
                  'target_delimiter: ""', "metric_list:", "  - metric: acc", "  - metric: acc_norm"]
    else:
        # lm-eval's per-document perplexity overflows math.exp for long continuations of weak
        # models; acc (= every token greedy) keeps the same requests
        lines += ["output_type: loglikelihood", "doc_to_target: continuation", 'target_delimiter: ""',
                  "metric_list:", "  - metric: acc"]
    path = out_dir / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
