"""Evaluation: proxy tasks and a batched log-likelihood scorer for search trials, the lm-eval
bridge, and full evaluation (HumanEval in a sandbox, code summarisation, full held-out sets).

Public API (the task list: automerge/eval/README.md)::

    ev = Evaluator(tokenizer=tok, device="cpu")
    results = ev.run(model, ["prose_next_mc", "code_body_ll"], limit=32)   # dict[str, TaskResult]
    aggregate(results)                                                     # {"nl": …, "code": …}
"""

from importlib import import_module as _import_module

# Imported on first use (PEP 562), so that `import automerge.eval.cli` (every `automerge` command
# line) loads neither torch nor pandas: name -> the submodule that defines it.
_LAZY = {
    "Evaluator": "_evaluator", "aggregate": "_evaluator", "available_tasks": "_evaluator",
    "retention_table": "_retention",
    "Sandbox": "_sandbox", "SandboxLimits": "_sandbox", "SandboxResult": "_sandbox", "sandbox_info": "_sandbox",
    "loglikelihood": "_scorer", "loglikelihood_rolling": "_scorer",
    "is_quality_holdout": "_split",
    "Task": "_tasks", "TaskResult": "_tasks", "TASKS": "_tasks", "FAMILIES": "_tasks", "get_task": "_tasks",
    "FULL_TASKS": "_tasks", "PROXY_TASKS": "_tasks", "proxy_task_names": "_tasks",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(_import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
