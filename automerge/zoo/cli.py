"""`automerge zoo build`: rebuild the demo zoo from text on this machine."""

from __future__ import annotations

from pathlib import Path

import typer

from automerge.zoo import ZooError


def register(app: typer.Typer) -> None:
    """Add the ``zoo`` command group to the main app."""
    zoo = typer.Typer(name="zoo", help="The built-in demo zoo (tiny Llama base + specialists).",
                      no_args_is_help=True)

    @zoo.command("build")
    def build(
        size: str = typer.Option("full", "--size", help="full: the shipped zoo (~45 min on one CPU core); "
                                 "test: a tiny zoo in seconds, for tests (needs no apt package)."),
        out: Path = typer.Option(Path("zoo"), "--out", help="Output directory (must not exist or be empty)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the whole build (same seed + machine = same bytes)."),
        threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)."),
        cache: Path | None = typer.Option(None, "--cache", help="Keep trained stages here; an interrupted "
                                          "build resumes from them (same bytes as without cache)."),
    ) -> None:
        """Build the zoo: corpus + held-out split, tokenizer, base, code/lang/tests specialists, mix."""
        if size not in ("full", "test"):
            raise ZooError(f"--size must be 'full' or 'test', not {size!r}")
        if threads:
            import torch

            torch.set_num_threads(threads)
        from automerge.zoo.build import build_zoo

        path = build_zoo(size=size, out=out, seed=seed, progress=True, cache=cache)  # type: ignore[arg-type]
        typer.echo(f"zoo written to {path}")

    app.add_typer(zoo, name="zoo")
