"""A search worker process with the fake runner (for multi-process and kill -9 tests).

    python worker_main.py URL STUDY SPACE.yaml [--delay S] [--stale-after S] [--heartbeat S]
                          [--rendezvous DIR] [--hold-after N --hold-file PATH]

Prints one line per event: "<kind> <rung> <number> <message>", flushed.

Events instead of timing, so a loaded machine cannot break the tests:
--rendezvous DIR: the first evaluation writes DIR/<pid> and waits until two workers have done so
    (both are then mid-trial at once, so each finishes at least one trial);
--hold-after N: after N evaluations the next search trial writes --hold-file and waits there,
    mid-trial, until the test kills the process.
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

WAIT_LIMIT = 300.0  # seconds; a bound, not a timing: the awaited event comes long before


class GatedRunner(FakeRunner):
    """The fake runner with the rendezvous and hold gates above."""

    def __init__(self, *, delay: float, rendezvous: Path | None, hold_after: int | None, hold_file: Path | None):
        super().__init__(delay=delay)
        self.rendezvous, self.hold_after, self.hold_file = rendezvous, hold_after, hold_file
        self.done = 0

    def evaluate(self, job):
        if self.rendezvous is not None and self.done == 0:
            self.rendezvous.mkdir(parents=True, exist_ok=True)
            (self.rendezvous / str(os.getpid())).write_text(job.label)
            t0 = time.monotonic()
            while len(list(self.rendezvous.iterdir())) < 2:
                if time.monotonic() - t0 > WAIT_LIMIT:
                    raise SystemExit(f"rendezvous: no second worker within {WAIT_LIMIT:.0f} s")
                time.sleep(0.05)
        if self.hold_after is not None and self.done >= self.hold_after and job.kind == "search":
            self.hold_file.write_text(f"{job.rung} {job.trial_number}\n")
            time.sleep(WAIT_LIMIT)  # killed here
            raise SystemExit("hold: not killed")
        result = super().evaluate(job)
        self.done += 1
        return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("study")
    ap.add_argument("space")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--stale-after", type=float, default=600.0)
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--rendezvous", type=Path)
    ap.add_argument("--hold-after", type=int)
    ap.add_argument("--hold-file", type=Path)
    a = ap.parse_args()
    space = SearchSpace.load(a.space)
    study = SearchStudy.open(a.study, a.url, space)

    def on_event(e):
        print(f"{e.kind} {e.rung} {e.number} {e.message}", flush=True)

    runner = GatedRunner(delay=a.delay, rendezvous=a.rendezvous, hold_after=a.hold_after, hold_file=a.hold_file)
    w = Worker(study, runner, stale_after=a.stale_after, heartbeat_interval=a.heartbeat,
               poll_interval=0.2, on_event=on_event)
    stats = w.run()
    print(f"stats {stats}", flush=True)
    study.close()


if __name__ == "__main__":
    main()
