"""`python -m automerge`: the same command line as the installed `automerge` script."""

from automerge.cli import main

if __name__ == "__main__":
    main()
