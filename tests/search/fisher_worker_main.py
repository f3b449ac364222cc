"""One search worker process with the real engine, counting Fisher estimates (two-worker test).

    python fisher_worker_main.py SPACE.yaml RESULTS_DIR COUNTER_FILE GO_FILE

Prints "ready", waits for GO_FILE, runs the search; each Fisher estimate it computes appends a
line to COUNTER_FILE.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    space, results, counter, go = sys.argv[1:5]
    import torch

    torch.set_num_threads(1)
    from automerge import fisher
    from automerge.search.run import SearchOptions, run_search

    real = fisher.estimate_fisher

    def counted(*args, **kwargs):
        with open(counter, "a") as f:
            f.write("estimate\n")
        return real(*args, **kwargs)

    fisher.estimate_fisher = counted
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.05)
    run_search(SearchOptions(space=Path(space), results_dir=Path(results), quiet=True, threads=1, report=False))


if __name__ == "__main__":
    main()
