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

from . import _tasks
from ._generate import NonFiniteLogits, generate_greedy
from ._scorer import (TokenEncoder, attention_cost, build_plan, default_batch_tokens, pad_id, score_plan,
                      supports_packing, tokenizer_max_length)
from ._tasks import FAMILIES, TASKS, ItemSet, TaskResult, get_task, resolve_tasks


def available_tasks() -> dict[str, str]:
    """Task name -> one-line description (every registered task, and each family's name pattern)."""
    out = {name: t.describe() for name, t in TASKS.items()}
    out.update({f.usage: f.description for f in FAMILIES.values()})
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
class Prepared:
    """A pooled task's items, tokenised once per Evaluator."""

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
        self._prepared: dict[str, Prepared] = {}
        self._plans: dict[tuple, _PooledPlan] = {}
        self._lm_eval: dict[str, object] = {}
        self._windows: dict[tuple[str, int], list[list[tuple[list[int], list[int]]]]] = {}
        self._hflm = None
        self._hflm_model_id: int | None = None
        self.last_humaneval = None   # HumanEvalReport of the last humaneval run (per-sample reasons)
        for t in tasks or ():
            self.prepare(t)

    # ----------------------------------------------------------------------------------- setup
    def prepare(self, task: str) -> None:
        """Load and tokenise a task now (otherwise done at its first run)."""
        get_task(task).prepare(self)

    def task_size(self, task: str) -> int:
        """Number of items (documents, problems) the task has: the largest useful ``limit``."""
        return get_task(task).size(self)

    def prepared(self, task: str) -> Prepared:
        """A pooled task's items, tokenised (once per Evaluator)."""
        p = self._prepared.get(task)
        if p is None:
            t = get_task(task)
            if not t.pooled:
                raise EvalError(f"task {task!r} generates text: it has no log-likelihood items to prepare")
            p = self._prepare_items(task, t.items(self))
            self._prepared[task] = p
        return p

    def _prepare_items(self, task: str, its: ItemSet) -> Prepared:
        if its.kind == "text":   # windows depend on the model's context length: made in _pooled_plan
            return Prepared(items=its.items, encoded=[], cont_chars=[], kind=its.kind, metric=its.metric,
                            domain=its.domain)
        reqs = [[(it["context"], c) for c in it["choices"]] if its.kind == "mc"
                else [(it["context"], it["continuation"])] for it in its.items]
        try:
            enc = self._encoder.encode_pairs([r for rs in reqs for r in rs])
        except ValueError as e:
            raise EvalError(f"task {task!r}: {e}") from None
        encoded, pos = [], 0
        for rs in reqs:
            encoded.append(enc[pos:pos + len(rs)])
            pos += len(rs)
        return Prepared(items=its.items, encoded=encoded, cont_chars=[[len(c) for _, c in rs] for rs in reqs],
                        kind=its.kind, metric=its.metric, domain=its.domain)

    def _item_requests(self, task: str, max_len: int) -> list[list[tuple[list[int], list[int]]]]:
        """Encoded requests per item; a text item's are its rolling windows at this context length."""
        p = self.prepared(task)
        if p.kind != "text":
            return p.encoded
        key = (task, max_len)
        if key not in self._windows:
            self._windows[key] = [self._encoder.rolling_windows(it["text"], max_len) for it in p.items]
        return self._windows[key]

    def lm_eval_task(self, spec: str):
        """The lm-eval task of an ``lm_eval:`` name, loaded once per Evaluator."""
        t = self._lm_eval.get(spec)
        if t is None:
            from ._lm_eval import LMEvalTask
            t = LMEvalTask(spec, seed=self.seed)
            self._lm_eval[spec] = t
        return t

    def _model_max_length(self, model) -> int:
        return self.max_length or tokenizer_max_length(getattr(model, "config", None), self.tokenizer)

    # ----------------------------------------------------------------------------------- run
    def run(self, model, tasks: Sequence[str], *, limit: int | None = None) -> dict[str, TaskResult]:
        """Score ``model`` (the live object; not copied, not re-wrapped) on ``tasks``: proxy tasks on
        their first ``limit`` items (all when None), full tasks likewise. Results keyed by task name."""
        tasks = list(dict.fromkeys(tasks))
        resolved = resolve_tasks(tasks)
        if limit is not None and limit < 1:
            raise EvalError(f"limit must be a positive number of items, not {limit}")
        if model.training:
            model.eval()
        out: dict[str, TaskResult] = {}
        pooled = [t.name for t in resolved if t.pooled]
        if pooled:                      # one batch plan for every pooled task
            out.update(self.run_pooled(model, pooled, limit))
        for t in resolved:
            if not t.pooled:
                out[t.name] = t.run(self, model, limit)
        return {t: out[t] for t in tasks}

    def _pooled_plan(self, model, tasks: Sequence[str], limit: int | None) -> _PooledPlan:
        max_len = self._model_max_length(model)
        pack = self.share_prefixes and supports_packing(model)
        key = (tuple(tasks), limit, max_len, pack)
        pp = self._plans.get(key)
        if pp is None:
            encoded: list[tuple[list[int], list[int]]] = []
            groups: list[int] = []
            pp = _PooledPlan(plan=None)
            for t in tasks:
                p = self.prepared(t)
                n = len(p.items) if limit is None else min(limit, len(p.items))
                start = len(encoded)
                pp.item_requests[t] = []
                for reqs in self._item_requests(t, max_len)[:n]:
                    pp.item_requests[t].append(len(reqs))
                    g = len(groups)                  # one group per item: its choices share prefixes
                    encoded.extend(reqs)
                    groups.extend([g] * len(reqs))
                pp.slices[t] = (start, len(encoded), n)
            pp.plan = build_plan(encoded, max_length=max_len, device=self.device, batch_tokens=self.batch_tokens,
                                 pad_id=pad_id(self.tokenizer), cut_long_continuations=True,
                                 groups=groups if pack else None, attn_cost=attention_cost(model.config))
            self._plans[key] = pp
        return pp

    def run_pooled(self, model, tasks: Sequence[str], limit: int | None) -> dict[str, TaskResult]:
        """Score pooled tasks together: one batch plan, one pass over it."""
        pp = self._pooled_plan(model, tasks, limit)
        ll, _ = score_plan(model, pp.plan)
        return {t: self._pooled_result(t, pp, ll) for t in tasks}

    def _pooled_result(self, t: str, pp: _PooledPlan, ll: np.ndarray) -> TaskResult:
        p = self._prepared[t]
        s, e, n = pp.slices[t]
        lls = ll[s:e]
        bad = int((~np.isfinite(lls)).sum())
        if bad:
            return TaskResult.failure(t, p.metric, p.domain, n,
                                      f"the model produced NaN/Inf logits ({bad} of {e - s} requests non-finite)")
        if p.kind == "mc":
            metrics = _mc_metrics(lls, p.items[:n], p.cont_chars[:n])
            num, den = _mc_items(lls, p.items[:n], p.cont_chars[:n], p.metric), None
        else:
            cont_tok = pp.plan.cont_lengths[s:e]
            metrics = _ll_metrics(lls, cont_tok)
            # per item: the sum over its requests (a rolling-window `data:` text has several)
            bounds = np.cumsum([0, *pp.item_requests[t]])
            num = np.add.reduceat(lls, bounds[:-1]) if n else lls[:0]
            den = np.add.reduceat(np.asarray(cont_tok, dtype=float), bounds[:-1]) if n else None
        return TaskResult(task=t, metric=p.metric, score=float(metrics[p.metric]), n=n,
                          metrics=metrics, domain=p.domain, item_num=tuple(float(x) for x in num),
                          item_den=tuple(float(x) for x in (den if den is not None else [1.0] * n)))

    # ----------------------------------------------------------------------------------- generation
    def generate(self, model, prompts, *, max_new_tokens, stop):
        """Greedy completions of ``prompts`` (full tasks), at most half the model's context long."""
        max_len = self._model_max_length(model)
        return generate_greedy(model, self.tokenizer, prompts, max_new_tokens=min(max_new_tokens, max_len // 2),
                               stop=stop, batch_size=self.gen_batch_size, max_length=max_len, device=self.device)

    def sandbox(self):
        """The sandbox generated programs run in (made at the first need)."""
        if self._sandbox is None:
            from ._sandbox import Sandbox
            self._sandbox = Sandbox()
        return self._sandbox

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

    def lm_eval_callbacks(self, model, cache: dict) -> dict:
        """lm-eval's three request types answered for ``model``: ``loglikelihood`` and
        ``loglikelihood_rolling`` by the batched scorer (plans kept in ``cache``, the task's),
        ``generate_until`` by the one HFLM. Non-finite logits raise NonFiniteLogits."""
        max_len = self._model_max_length(model)

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
                                  pad_id=pad_id(self.tokenizer), groups=groups)
                cache.clear() if len(cache) > 16 else None
                cache[key] = plan
            ll, greedy = score_plan(model, plan, greedy=True)
            _check_finite(ll)
            return [(float(a), bool(b)) for a, b in zip(ll, greedy)]

        def loglikelihood_rolling(reqs):
            key = ("roll", tuple(id(r) for r in reqs), max_len)
            got = cache.get(key)
            if got is None:
                windows, owner = [], []
                for i, r in enumerate(reqs):
                    w = self._encoder.rolling_windows(r.args[0], max_len)
                    windows.extend(w)
                    owner.extend([i] * len(w))
                plan = build_plan(windows, max_length=max_len, device=self.device, batch_tokens=self.batch_tokens,
                                  pad_id=pad_id(self.tokenizer))
                got = (plan, np.asarray(owner))
                cache[key] = got
            plan, owner = got
            ll, _ = score_plan(model, plan)
            _check_finite(ll)
            tot = np.zeros(len(reqs))
            np.add.at(tot, owner, ll)
            return [float(x) for x in tot]

        def generate_until(reqs):
            return self.hflm(model).generate_until(reqs, disable_tqdm=True)

        return {"loglikelihood": loglikelihood, "loglikelihood_rolling": loglikelihood_rolling,
                "generate_until": generate_until}


def _check_finite(ll: np.ndarray) -> None:
    if not np.all(np.isfinite(ll)):
        raise NonFiniteLogits("the model produced NaN/Inf logits")


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
