"""Maintainer script: rebuild the shipped proxy items from the demo zoo's held-out split.

    python -m automerge.eval.build_data --heldout automerge/zoo/data/heldout \
        --external automerge/zoo/data/external --out automerge/eval/data
"""

from automerge.eval._tasks import _main

if __name__ == "__main__":
    _main()
