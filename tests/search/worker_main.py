"""A search worker process with the fake runner (for multi-process and kill -9 tests).

    python worker_main.py URL STUDY SPACE.yaml [--delay S] [--stale-after S] [--heartbeat S]

Prints one line per event: "<kind> <rung> <number> <message>", flushed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from search_fakes import FakeRunner  # noqa: E402

from automerge.search.space import SearchSpace  # noqa: E402
from automerge.search.study import SearchStudy  # noqa: E402
from automerge.search.worker import Worker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("study")
    ap.add_argument("space")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--stale-after", type=float, default=600.0)
    ap.add_argument("--heartbeat", type=float, default=1.0)
    a = ap.parse_args()
    space = SearchSpace.load(a.space)
    study = SearchStudy.open(a.study, a.url, space)

    def on_event(e):
        print(f"{e.kind} {e.rung} {e.number} {e.message}", flush=True)

    w = Worker(study, FakeRunner(delay=a.delay), stale_after=a.stale_after, heartbeat_interval=a.heartbeat,
               poll_interval=0.2, on_event=on_event)
    stats = w.run()
    print(f"stats {stats}", flush=True)
    study.close()


if __name__ == "__main__":
    main()
