"""The Evaluator: scores the one live model of a search, trial after trial, without reloading it.

``Evaluator(tokenizer=…, device=…)`` is made once per search process. ``run(model, tasks,
limit=n)`` takes the live model object (weights rewritten in place by the merge engine between
calls) and returns one :class:`TaskResult` per task. Everything that does not depend on the
weights is done once and cached: task items, their tokenisation, the length-sorted batch plan of
every (task set, limit) on the device, the lm-eval task objects and their requests, and the
``HFLM`` wrapper of the model.

Scores: every ``TaskResult.score`` is the task's primary metric, higher is better, in [0, 1]:
``acc``/``acc_norm`` for multiple choice, ``token_prob`` = exp(mean per-token log-likelihood) for
log-likelihood tasks, pass@1 for HumanEval, chrF/100 for summarisation (lm-eval tasks: the
task's metric, made higher-is-better). A task whose model output is not finite (NaN/Inf logits)
is a failed result: ``failed`` says why and ``score`` is 0.0 (the worst score), so a broken
merge never crashes a search and never wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from automerge.errors import EvalError

from . import _data_tasks, _tasks
from ._generate import NonFiniteLogits, generate_greedy
from ._lm_eval import PREFIX as LM_EVAL_PREFIX
from ._scorer import (TokenEncoder, _pad_id, _tokenizer_max_length, attention_cost, build_plan,
                      default_batch_tokens, score_plan, supports_packing)
from ._tasks import FULL_TASKS, PROXY_TASKS


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


def available_tasks() -> dict[str, str]:
    """Task name -> one-line description (proxies, full tasks, and the lm-eval bridge)."""
    out = {t.name: f"[proxy {t.domain} {t.kind}, {t.metric}] {t.description}" for t in PROXY_TASKS.values()}
    out.update({t.name: f"[full {t.domain}, {t.metric}] {t.description}" for t in FULL_TASKS.values()})
    out[_data_tasks.PREFIX + "<file>.jsonl[?domain=nl|code&metric=NAME]"] = (
        "your own items, one JSON object a line: {text} (per-token likelihood), {prompt, completion} or "
        "{prompt, choices, answer} (multiple choice); scored like the proxies (nested fixed subsets)")
    out[LM_EVAL_PREFIX + "<name-or-yaml>[?domain=nl|code&metric=NAME]"] = (
        "any lm-eval task: a built-in name or a task YAML (relative data paths resolve against the YAML); "
        "proxy with limit (first n documents of a fixed shuffled order) or full without")
    return out


def aggregate(results: Mapping[str, TaskResult], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-domain weighted mean of task scores: {"nl": …, "code": …} (domains present only).
    A failed task counts with its score 0.0. ``weights`` default to 1 per task."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for name, r in results.items():
        w = 1.0 if weights is None else float(weights.get(name, 0.0))
        if w > 0:
            acc.setdefault(r.domain, []).append((w, r.score))
    return {d: sum(w * s for w, s in v) / sum(w for w, _ in v) for d, v in acc.items()}


@dataclass
class _Prepared:
    items: list[dict]
    encoded: list[list[tuple[list[int], list[int]]]]   # per item: one (ctx, cont) per request
    cont_chars: list[list[int]]                        # per item: len(continuation) per request
    kind: str = "ll"                                   # "mc" | "ll" | "text" (windows made per model length)
    metric: str = "token_prob"
    domain: str = "nl"


@dataclass
class _PooledPlan:
    plan: object
    slices: dict[str, tuple[int, int, int]] = field(default_factory=dict)   # task -> (start, end, n_items)
    item_requests: dict[str, list[int]] = field(default_factory=dict)      # task -> requests per item


class Evaluator:
    """Scores a live model on proxy and full tasks; see the module docstring."""

    def __init__(self, *, tokenizer, device, tasks: Sequence[str] | None = None, data_dir: Path | None = None,
                 batch_tokens: int | None = None, seed: int = 0, max_length: int | None = None,
                 gen_batch_size: int = 8, humaneval_max_new_tokens: int = 256,
                 summary_max_new_tokens: int = 48, sandbox=None, share_prefixes: bool = True):
        if tokenizer is None:
            raise EvalError("Evaluator needs the tokenizer of the models it scores")
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.data_dir = Path(data_dir) if data_dir is not None else _tasks.DATA_DIR
        self.batch_tokens = int(batch_tokens) if batch_tokens else default_batch_tokens(self.device)
        self.seed = int(seed)
        self.max_length = max_length
        self.gen_batch_size = gen_batch_size
        self.humaneval_max_new_tokens = humaneval_max_new_tokens
        self.summary_max_new_tokens = summary_max_new_tokens
        self._sandbox = sandbox
        self.share_prefixes = share_prefixes
        self._encoder = TokenEncoder(tokenizer)
        self._prepared: dict[str, _Prepared] = {}
        self._plans: dict[tuple, _PooledPlan] = {}
        self._lm_eval: dict[str, object] = {}
        self._windows: dict[tuple[str, int], list[list[tuple[list[int], list[int]]]]] = {}
        self._hflm = None
        self._hflm_model_id: int | None = None
        self.last_humaneval = None   # HumanEvalReport of the last humaneval run (per-sample reasons)
        for t in tasks or ():
            self.prepare(t)

    # ----------------------------------------------------------------------------------- setup
    def _check_names(self, tasks: Sequence[str]) -> None:
        bad = [t for t in tasks if t not in PROXY_TASKS and t not in FULL_TASKS and not t.startswith(LM_EVAL_PREFIX)
               and not _data_tasks.is_data_task(t)]
        if bad:
            raise EvalError(f"unknown task(s) {', '.join(map(repr, bad))}; known: "
                            f"{', '.join([*PROXY_TASKS, *FULL_TASKS])}, lm_eval:<name-or-yaml> or data:<file>.jsonl")
        for t in tasks:
            if _data_tasks.is_data_task(t):
                _data_tasks.parse(t)

    def prepare(self, task: str) -> None:
        """Load and tokenise a task now (otherwise done at its first run)."""
        self._check_names([task])
        if task in PROXY_TASKS or _data_tasks.is_data_task(task):
            self._proxy(task)
        elif task.startswith(LM_EVAL_PREFIX):
            self._lm_eval_task(task)
        elif task == "summarization":
            self._proxy("code_summary_ll")

    def _proxy(self, task: str) -> _Prepared:
        p = self._prepared.get(task)
        if p is None:
            if _data_tasks.is_data_task(task):
                dt = _data_tasks.load(task)
                items = _tasks.ordered(dt.items, dt.name.order_key, self.seed)
                kind, metric, domain = ("ll" if dt.kind == "completion" else dt.kind), dt.metric, dt.domain
            else:
                spec = PROXY_TASKS[task]
                items = _tasks.ordered(_tasks.load_items(task, self.data_dir), task, self.seed)
                kind, metric, domain = spec.kind, spec.metric, spec.domain
            if kind == "text":   # windows depend on the model's context length: made in _pooled_plan
                p = _Prepared(items=items, encoded=[], cont_chars=[], kind=kind, metric=metric, domain=domain)
            else:
                reqs = [[(it["context"], c) for c in it["choices"]] if kind == "mc"
                        else [(it["context"], it["continuation"])] for it in items]
                flat = [r for rs in reqs for r in rs]
                try:
                    enc = self._encoder.encode_pairs(flat)
                except ValueError as e:
                    raise EvalError(f"task {task!r}: {e}") from None
                encoded, pos = [], 0
                for rs in reqs:
                    encoded.append(enc[pos:pos + len(rs)])
                    pos += len(rs)
                p = _Prepared(items=items, encoded=encoded, cont_chars=[[len(c) for _, c in rs] for rs in reqs],
                              kind=kind, metric=metric, domain=domain)
            self._prepared[task] = p
        return p

    def _item_requests(self, task: str, max_len: int) -> list[list[tuple[list[int], list[int]]]]:
        """Encoded requests per item; a text item's are its rolling windows at this context length."""
        p = self._proxy(task)
        if p.kind != "text":
            return p.encoded
        key = (task, max_len)
        if key not in self._windows:
            self._windows[key] = [self._encoder.rolling_windows(it["text"], max_len) for it in p.items]
        return self._windows[key]

    def _lm_eval_task(self, spec: str):
        t = self._lm_eval.get(spec)
        if t is None:
            from ._lm_eval import LMEvalTask
            t = LMEvalTask(spec, seed=self.seed)
            self._lm_eval[spec] = t
        return t

    def task_size(self, task: str) -> int:
        """Number of items (documents, problems) the task has: the largest useful ``limit``."""
        self._check_names([task])
        if task in PROXY_TASKS or _data_tasks.is_data_task(task):
            return len(self._proxy(task).items)
        if task == "summarization":
            return len(self._proxy("code_summary_ll").items)
        if task == "humaneval":
            from ._humaneval import load_problems
            return len(load_problems())
        return self._lm_eval_task(task).size()

    def _model_max_length(self, model) -> int:
        return self.max_length or _tokenizer_max_length(getattr(model, "config", None), self.tokenizer)

    # ----------------------------------------------------------------------------------- run
    def run(self, model, tasks: Sequence[str], *, limit: int | None = None) -> dict[str, TaskResult]:
        """Score ``model`` (the live object; not copied, not re-wrapped) on ``tasks``: proxy tasks on
        their first ``limit`` items (all when None), full tasks likewise. Results keyed by task name."""
        tasks = list(dict.fromkeys(tasks))
        self._check_names(tasks)
        if limit is not None and limit < 1:
            raise EvalError(f"limit must be a positive number of items, not {limit}")
        if model.training:
            model.eval()
        out: dict[str, TaskResult] = {}
        proxies = [t for t in tasks if t in PROXY_TASKS or _data_tasks.is_data_task(t)]
        if proxies:
            out.update(self._run_proxies(model, proxies, limit))
        for t in tasks:
            if t == "humaneval":
                out[t] = self._run_humaneval(model, limit)
            elif t == "summarization":
                out[t] = self._run_summarization(model, limit)
            elif t.startswith(LM_EVAL_PREFIX):
                out[t] = self._run_lm_eval(model, t, limit)
        return {t: out[t] for t in tasks}

    def _pooled_plan(self, model, tasks: Sequence[str], limit: int | None) -> _PooledPlan:
        max_len = self._model_max_length(model)
        pack = self.share_prefixes and supports_packing(model)
        key = (tuple(tasks), limit, max_len, pack)
        pp = self._plans.get(key)
        if pp is None:
            encoded: list[tuple[list[int], list[int]]] = []
            groups: list[int] = []
            slices = {}
            item_requests: dict[str, list[int]] = {}
            for t in tasks:
                p = self._proxy(t)
                n = len(p.items) if limit is None else min(limit, len(p.items))
                start = len(encoded)
                item_requests[t] = []
                for reqs in self._item_requests(t, max_len)[:n]:
                    item_requests[t].append(len(reqs))
                    g = len(groups)                  # one group per item: its choices share prefixes
                    encoded.extend(reqs)
                    groups.extend([g] * len(reqs))
                slices[t] = (start, len(encoded), n)
            plan = build_plan(encoded, max_length=max_len, device=self.device, batch_tokens=self.batch_tokens,
                              pad_id=_pad_id(self.tokenizer), cut_long_continuations=True,
                              groups=groups if pack else None, attn_cost=attention_cost(model.config))
            pp = _PooledPlan(plan=plan, slices=slices, item_requests=item_requests)
            self._plans[key] = pp
        return pp

    def _run_proxies(self, model, tasks: Sequence[str], limit: int | None) -> dict[str, TaskResult]:
        pp = self._pooled_plan(model, tasks, limit)
        ll, _ = score_plan(model, pp.plan)
        cont_tok = pp.plan.cont_lengths
        out = {}
        for t in tasks:
            p = self._prepared[t]
            s, e, n = pp.slices[t]
            lls = ll[s:e]
            bad = int((~np.isfinite(lls)).sum())
            if bad:
                out[t] = self._failed(t, p.metric, p.domain, n,
                                      f"the model produced NaN/Inf logits ({bad} of {e - s} requests non-finite)")
                continue
            if p.kind == "mc":
                metrics = _mc_metrics(lls, p.items[:n], p.cont_chars[:n])
                num, den = _mc_items(lls, p.items[:n], p.cont_chars[:n], p.metric), None
            else:
                metrics = _ll_metrics(lls, cont_tok[s:e])
                # per item: the sum over its requests (a rolling-window `data:` text has several)
                bounds = np.cumsum([0, *pp.item_requests[t]])
                num = np.add.reduceat(lls, bounds[:-1]) if n else lls[:0]
                den = np.add.reduceat(np.asarray(cont_tok[s:e], dtype=float), bounds[:-1]) if n else None
            out[t] = TaskResult(task=t, metric=p.metric, score=float(metrics[p.metric]), n=n,
                                metrics=metrics, domain=p.domain, item_num=tuple(float(x) for x in num),
                                item_den=tuple(float(x) for x in (den if den is not None else [1.0] * n)))
        return out

    @staticmethod
    def _failed(task: str, metric: str, domain: str, n: int, why: str) -> TaskResult:
        return TaskResult(task=task, metric=metric, score=0.0, n=n, metrics={}, domain=domain, failed=why)

    # ----------------------------------------------------------------------------------- full tasks
    def _generate(self, model, prompts, *, max_new_tokens, stop):
        max_len = self._model_max_length(model)
        return generate_greedy(model, self.tokenizer, prompts, max_new_tokens=min(max_new_tokens, max_len // 2),
                               stop=stop, batch_size=self.gen_batch_size, max_length=max_len, device=self.device)

    def _get_sandbox(self):
        if self._sandbox is None:
            from ._sandbox import Sandbox
            self._sandbox = Sandbox()
        return self._sandbox

    def _run_humaneval(self, model, limit: int | None) -> TaskResult:
        from ._humaneval import STOP_SEQUENCES, load_problems, run_humaneval

        spec = FULL_TASKS["humaneval"]
        probs = load_problems(limit)
        try:
            rep = run_humaneval(lambda ps: self._generate(model, ps, max_new_tokens=self.humaneval_max_new_tokens,
                                                          stop=STOP_SEQUENCES),
                                problems=probs, sandbox=self._get_sandbox())
        except NonFiniteLogits as e:
            return self._failed("humaneval", spec.metric, spec.domain, len(probs), str(e))
        self.last_humaneval = rep
        metrics = {"pass@1": rep.pass_at_1}
        metrics.update({f"n_{k.replace(' ', '_')}": float(v) for k, v in rep.reasons.items()})
        return TaskResult(task="humaneval", metric="pass@1", score=rep.pass_at_1, n=rep.n, metrics=metrics,
                          domain=spec.domain)

    def _run_summarization(self, model, limit: int | None) -> TaskResult:
        from ._summarization import SUMMARY_STOP, summary_metrics

        spec = FULL_TASKS["summarization"]
        p = self._proxy("code_summary_ll")
        items = p.items[:limit] if limit is not None else p.items
        try:
            hyps = self._generate(model, [it["context"] for it in items], max_new_tokens=self.summary_max_new_tokens,
                                  stop=SUMMARY_STOP)
        except NonFiniteLogits as e:
            return self._failed("summarization", spec.metric, spec.domain, len(items), str(e))
        metrics = summary_metrics(hyps, [it["continuation"] for it in items])
        return TaskResult(task="summarization", metric="chrf", score=metrics["chrf"], n=len(items), metrics=metrics,
                          domain=spec.domain)

    # ----------------------------------------------------------------------------------- lm-eval
    def hflm(self, model):
        """The one lm-eval HFLM wrapping ``model`` (created at the first need, reused while the model
        object is the same)."""
        if self._hflm is None or self._hflm_model_id != id(model):
            from lm_eval.models.huggingface import HFLM
            self._hflm = HFLM(pretrained=model, tokenizer=self.tokenizer, batch_size=self.gen_batch_size,
                              max_length=self._model_max_length(model))
            self._hflm_model_id = id(model)
        return self._hflm

    def _run_lm_eval(self, model, spec: str, limit: int | None) -> TaskResult:
        task = self._lm_eval_task(spec)
        max_len = self._model_max_length(model)
        cache = task._plans

        def loglikelihood(reqs):
            pack = self.share_prefixes and supports_packing(model)
            key = ("ll", tuple(id(r) for r in reqs), max_len, pack)
            plan = cache.get(key)
            if plan is None:
                args = [r.args for r in reqs]
                enc = self._encoder.encode_pairs(args)
                ids: dict[str, int] = {}
                groups = [ids.setdefault(c, len(ids)) for c, _ in args] if pack else None
                plan = build_plan(enc, max_length=max_len, device=self.device, batch_tokens=self.batch_tokens,
                                  pad_id=_pad_id(self.tokenizer), groups=groups)
                cache.clear() if len(cache) > 16 else None
                cache[key] = plan
            ll, greedy = score_plan(model, plan, greedy=True)
            if not np.all(np.isfinite(ll)):
                raise NonFiniteLogits("the model produced NaN/Inf logits")
            return [(float(a), bool(b)) for a, b in zip(ll, greedy)]

        def rolling(reqs):
            key = ("roll", tuple(id(r) for r in reqs), max_len)
            got = cache.get(key)
            if got is None:
                windows, owner = [], []
                for i, r in enumerate(reqs):
                    w = self._encoder.rolling_windows(r.args[0], max_len)
                    windows.extend(w)
                    owner.extend([i] * len(w))
                plan = build_plan(windows, max_length=max_len, device=self.device, batch_tokens=self.batch_tokens,
                                  pad_id=_pad_id(self.tokenizer))
                got = (plan, np.asarray(owner))
                cache[key] = got
            plan, owner = got
            ll, _ = score_plan(model, plan)
            if not np.all(np.isfinite(ll)):
                raise NonFiniteLogits("the model produced NaN/Inf logits")
            tot = np.zeros(len(reqs))
            np.add.at(tot, owner, ll)
            return [float(x) for x in tot]

        def generate_until(reqs):
            res = self.hflm(model).generate_until(reqs, disable_tqdm=True)
            return res

        try:
            metric, score, n, metrics = task.run(limit=limit, loglikelihood=loglikelihood,
                                                 loglikelihood_rolling=rolling, generate_until=generate_until)
        except NonFiniteLogits as e:
            return self._failed(spec, "score", task.domain, 0, str(e))
        if not math.isfinite(score):
            return self._failed(spec, metric, task.domain, n, "the task's metric is not finite")
        return TaskResult(task=spec, metric=metric, score=score, n=n, metrics=metrics, domain=task.domain)


# --------------------------------------------------------------------------------------- metrics
def _mc_metrics(lls: np.ndarray, items: Sequence[dict], cont_chars: Sequence[Sequence[int]]) -> dict[str, float]:
    """acc (argmax of summed log-likelihood), acc_norm (argmax per character, lm-eval's), and
    p_correct (softmax over the choices' log-likelihoods, mass on the gold one, averaged)."""
    acc = accn = pc = 0.0
    pos = 0
    for it, chars in zip(items, cont_chars):
        k = len(chars)
        v = lls[pos:pos + k]
        pos += k
        g = int(it["gold"])
        acc += float(np.argmax(v) == g)
        accn += float(np.argmax(v / np.asarray(chars, dtype=np.float64)) == g)
        z = v - v.max()
        pc += float(np.exp(z[g]) / np.exp(z).sum())
    n = max(len(items), 1)
    return {"acc": acc / n, "acc_norm": accn / n, "p_correct": pc / n}


def _mc_items(lls: np.ndarray, items: Sequence[dict], cont_chars: Sequence[Sequence[int]], metric: str) -> list[float]:
    """Per item, the value `_mc_metrics` averages for ``metric`` (acc, acc_norm or p_correct)."""
    out, pos = [], 0
    for it, chars in zip(items, cont_chars):
        v = lls[pos:pos + len(chars)]
        pos += len(chars)
        g = int(it["gold"])
        if metric == "acc":
            out.append(float(np.argmax(v) == g))
        elif metric == "acc_norm":
            out.append(float(np.argmax(v / np.asarray(chars, dtype=np.float64)) == g))
        else:
            z = v - v.max()
            out.append(float(np.exp(z[g]) / np.exp(z).sum()))
    return out


def _ll_metrics(lls: np.ndarray, n_tokens: np.ndarray) -> dict[str, float]:
    """Pooled over items: ll_per_token = Σ log p / Σ tokens (nats, ≤ 0), token_prob = exp of it
    (inverse perplexity, in (0, 1]), ppl = its inverse."""
    tot = float(np.sum(lls))
    ntok = float(np.sum(n_tokens))
    lpt = tot / max(ntok, 1.0)
    return {"token_prob": math.exp(lpt), "ll_per_token": lpt, "ppl": math.exp(-lpt), "tokens": ntok}
