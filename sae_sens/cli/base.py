"""The Typer app object and the progress sink that every command module shares.

Command modules register on ``app`` from here; ``cli.app.main`` imports them, so this module imports
no command (one direction, no cycle). Only typer is imported: every command imports what it needs
(torch, duckdb, ...) inside its body, so ``--help``, ``--version`` and validation errors answer at once.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .progress import RichProgress

__all__ = ["PROG", "RichProgress", "app"]

PROG = "sae-sens"

app = typer.Typer(
    name=PROG,
    help="Measure how sensitive SAE features are: collect -> generate -> score -> report.\n\n"
    "Example: sae-sens run --sae py_4k_topk_s0 --features 50",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    pass  # the app's help is Typer(help=...); this callback only carries --version
