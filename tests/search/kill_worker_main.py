"""A search worker (the real Worker, the fake runner) that can hold a trial: after --hold-after
evaluations, its next search trial writes --hold-file and blocks until the process is killed, so a
test kills it mid-trial on an event instead of a guess in time.

    python kill_worker_main.py URL STUDY SPACE.yaml [--delay S] [--stale-after S] [--hold-after N --hold-file F]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from search_fakes import FakeRunner  # noqa: E402

from automerge.search.space import SearchSpace  # noqa: E402
from automerge.search.study import SearchStudy  # noqa: E402
from automerge.search.worker import Worker  # noqa: E402


class HoldingRunner(FakeRunner):
    def __init__(self, *, hold_after: int | None, hold_file: str | None, **kw):
        super().__init__(**kw)
        self.hold_after, self.hold_file = hold_after, hold_file

    def evaluate(self, job):
        if self.hold_file and len(self.jobs) >= self.hold_after and job.kind == "search":
            Path(self.hold_file).write_text(str(os.getpid()))
            while True:          # mid-trial, heartbeat running, until SIGKILL
                time.sleep(3600)
        return super().evaluate(job)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("study")
    ap.add_argument("space")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--stale-after", type=float, default=600.0)
    ap.add_argument("--heartbeat", type=float, default=0.5)
    ap.add_argument("--hold-after", type=int, default=None)
    ap.add_argument("--hold-file", default=None)
    a = ap.parse_args()
    study = SearchStudy.open(a.study, a.url, SearchSpace.load(a.space))

    def on_event(e):
        print(f"{e.kind} {e.rung} {e.number} {e.message}", flush=True)

    runner = HoldingRunner(delay=a.delay, hold_after=a.hold_after, hold_file=a.hold_file)
    w = Worker(study, runner, stale_after=a.stale_after, heartbeat_interval=a.heartbeat, poll_interval=0.2,
               on_event=on_event)
    print(f"stats {w.run()}", flush=True)
    study.close()


if __name__ == "__main__":
    main()
