"""`automerge` as a subprocess for tests: the real app when it has `search`, else an app with
just the search commands (same error handling as automerge.cli.main)."""

from __future__ import annotations

import sys

import typer

from automerge.errors import AutomergeError


def main() -> None:
    from automerge import cli

    app = cli.app
    names = {c.name for c in app.registered_commands}
    if "search" not in names:
        from automerge.search.cli import register

        app = typer.Typer(pretty_exceptions_enable=False)
        register(app)
    try:
        app()
    except AutomergeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
