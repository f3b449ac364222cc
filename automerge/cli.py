"""The `automerge` command line: a thin typer app; each sub-package registers its own commands."""

from __future__ import annotations

import sys

import typer

from automerge.errors import AutomergeError

app = typer.Typer(
    name="automerge",
    help="Find the best way to merge fine-tuned LLM specialists that share one base model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Find the best way to merge fine-tuned LLM specialists that share one base model."""


def _register_commands() -> None:
    # Each sub-package owns its commands; heavy imports happen inside the commands.
    from automerge import analyze_cli, fisher, heal_cli, merge_cli
    from automerge.eval import cli as eval_cli
    from automerge.report import cli as report_cli
    from automerge.search import cli as search_cli
    from automerge.zoo import cli as zoo_cli

    search_cli.register(app)
    report_cli.register(app)
    merge_cli.register(app)
    eval_cli.register(app)
    fisher.register(app)
    zoo_cli.register(app)
    analyze_cli.register(app)
    heal_cli.register(app)


_register_commands()


def main() -> None:
    try:
        app()
    except AutomergeError as err:
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
