"""Untrusted programs run in the sandbox: each attack is a failed sample with its reason, and the
run goes on. HumanEval runs for real with a canned "model" (known-good and known-bad completions)."""

from __future__ import annotations

import os

import pytest

from automerge.eval import Sandbox, SandboxLimits, sandbox_info
from automerge.eval._humaneval import STOP_SEQUENCES, load_problems, program, run_humaneval


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxLimits(timeout_s=2.0, memory_mb=512), workers=2)


def test_sandbox_reports_its_walls():
    info = sandbox_info()
    assert info["backend"] in ("bwrap", "unshare", "none")
    assert info["user"] in ("nobody", "caller")
    assert {"filesystem", "network", "processes", "verdict", "warning"} <= set(info)
    assert bool(info["warning"]) == (info["backend"] == "none" or info["user"] != "nobody")


def test_attacks_are_contained_and_the_run_goes_on(sandbox, tmp_path):
    outside = tmp_path / "outside.txt"
    progs = {
        "infinite_loop": "while True:\n    pass\n",
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
        "alloc_10gb": "x = bytearray(10 * 2**30)\nprint(len(x))\n",
        "write_outside": f"open({str(outside)!r}, 'w').write('pwned')\n",
        "socket": "import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))\n",
        "good": "def f(x):\n    return x + 1\nassert f(1) == 2\nopen('inside.txt', 'w').write('ok')\n",
    }
    res = dict(zip(progs, sandbox.run_many(list(progs.values()))))
    assert res["good"].passed and res["good"].reason == "passed"
    for name in ("infinite_loop", "fork_bomb", "alloc_10gb", "write_outside", "socket"):
        assert not res[name].passed, name
    assert "timed out" in res["infinite_loop"].reason
    assert "fork" in res["fork_bomb"].reason
    assert "MemoryError" in res["alloc_10gb"].reason
    assert "write outside" in res["write_outside"].reason
    assert "network" in res["socket"].reason
    assert not outside.exists()
    assert res["infinite_loop"].elapsed_s < 10


def test_early_exit_and_output_flood_fail(sandbox):
    r = sandbox.run_many(["import sys\nsys.exit(0)\n", "import sys\nsys.exit(3)\n",
                          "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 1_000_000)\n",
                          "print('hello')\n"])
    assert [x.passed for x in r] == [False, False, False, True]
    assert "SystemExit" in r[0].reason and "SystemExit: 3" in r[1].reason
    assert "File too large" in r[2].reason or "file size" in r[2].reason
    assert r[3].stdout.strip() == "hello"
    # with tests in the driver, exiting early (even with status 0) is a failure, not a pass
    t = sandbox.run_tests("import os\ndef f(x):\n    os._exit(0)\n", entry_point="f",
                          tests="def check(c):\n    assert c(1) == 1\n")
    assert not t.passed and "ended before answering" in t.reason


def test_environment_is_scrubbed(sandbox):
    os.environ["AUTOMERGE_SECRET_TEST"] = "leak"
    try:
        r = sandbox.run("import os\nassert 'AUTOMERGE_SECRET_TEST' not in os.environ\n"
                        "assert os.getcwd() == os.environ['HOME']\n")
    finally:
        del os.environ["AUTOMERGE_SECRET_TEST"]
    assert r.passed, r.reason


def test_humaneval_with_canned_completions(sandbox):
    probs = load_problems(4)
    assert [p["task_id"] for p in probs] == [f"HumanEval/{i}" for i in range(4)]
    assert len(load_problems()) == 164

    def canned(prompts):
        out = []
        for i, _ in enumerate(prompts):
            if i % 2 == 0:   # known-correct: the canonical solution, with a stop sequence and junk after it
                out.append(probs[i]["canonical_solution"] + "\n\ndef junk():\n    raise SystemExit\n")
            else:            # known-bad
                out.append("    return None\n")
        return out

    rep = run_humaneval(canned, problems=probs, sandbox=sandbox)
    assert rep.n == 4 and rep.pass_at_1 == pytest.approx(0.5)
    assert [r.passed for _, _, r in rep.samples] == [True, False, True, False]
    assert all("failed" in r.reason for _, _, r in rep.samples[1::2])
    assert "\ndef junk" not in rep.samples[0][1]            # cut at the stop sequence
    assert program(probs[0], "x").endswith(f"check({probs[0]['entry_point']})\n")
    assert "\ndef" in STOP_SEQUENCES


def test_humaneval_runs_for_real_through_the_evaluator(evaluator, tiny):
    r = evaluator.run(tiny[0], ["humaneval"], limit=2)["humaneval"]
    assert r.failed is None and r.n == 2 and r.metric == "pass@1"
    assert 0.0 <= r.score <= 1.0
    assert len(evaluator.last_humaneval.samples) == 2
