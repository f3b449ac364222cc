"""Evaluation: proxy tasks and a batched log-likelihood scorer for search trials, the lm-eval
bridge, and full evaluation (HumanEval in a sandbox, code summarisation, full held-out sets).

Public API (see CONTRACTS.md, section eval/)::

    ev = Evaluator(tokenizer=tok, device="cpu")
    results = ev.run(model, ["prose_next_mc", "code_body_ll"], limit=32)   # dict[str, TaskResult]
    aggregate(results)                                                     # {"nl": …, "code": …}
"""

from ._evaluator import Evaluator, TaskResult, aggregate, available_tasks
from ._retention import retention_table
from ._sandbox import Sandbox, SandboxLimits, SandboxResult, sandbox_info
from ._scorer import loglikelihood, loglikelihood_rolling
from ._split import is_quality_holdout
from ._tasks import FULL_TASKS, PROXY_TASKS, proxy_task_names

__all__ = [
    "Evaluator", "TaskResult", "aggregate", "available_tasks", "retention_table",
    "Sandbox", "SandboxLimits", "SandboxResult", "sandbox_info",
    "loglikelihood", "loglikelihood_rolling",
    "PROXY_TASKS", "FULL_TASKS", "proxy_task_names", "is_quality_holdout",
]
