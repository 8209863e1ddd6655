"""The Typer app object and the progress sink that every command module shares.

Command modules register on ``app`` from here; ``cli.app.main`` imports them, so this module imports
no command (one direction, no cycle). Only typer is imported: every command imports what it needs
(torch, duckdb, ...) inside its body, so ``--help``, ``--version`` and validation errors answer at once.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
import typer.core

from .progress import RichProgress

__all__ = ["PROG", "RichProgress", "app"]

PROG = "sae-sens"

# Value placeholders as Click and `llm` print them (INTEGER, TEXT, PATH), not Typer's type names
# (`<int range>`, `<list[str]>`): a reader wants to know what to type, not the Python annotation.
_PLAIN_TYPES = {"int": "INTEGER", "int range": "INTEGER", "float": "FLOAT", "float range": "FLOAT", "str": "TEXT",
                "path": "PATH", "file": "FILE", "directory": "DIR", "dir": "DIR"}


def _plain_type(label: str) -> str:
    import re

    inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
    listed = re.fullmatch(r"list\[(.*)\]", inner)
    inner = listed.group(1) if listed else inner
    return _PLAIN_TYPES.get(inner, inner.upper() if "|" not in inner else inner)


def _install_plain_types() -> None:
    base = typer.core._TyperParameter
    typer_type = base.display_type

    def display_type(self: Any, ctx: Any) -> str:
        label = typer_type(self, ctx)
        return _plain_type(label) if isinstance(label, str) and label.startswith("<") else label

    base.display_type = display_type  # type: ignore[method-assign]

    def usage_name(self: Any) -> str:  # FEATURE, not {feature}; optional ones in brackets
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    typer.core.TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


_install_plain_types()

class _Command(typer.core.TyperCommand):
    """Click's plain help, which fits 80 columns (options, then their help below or beside them),
    except that a paragraph holding a command line is printed as written: a command is never broken
    across lines, so it can be copied."""

    def format_help_text(self, ctx: typer._click.Context, formatter: typer._click.HelpFormatter) -> None:  # type: ignore[name-defined]
        if self.help and "\b" not in self.help:
            self.help = "\n\n".join(_keep_commands(p) for p in self.help.split("\n\n"))
        super().format_help_text(ctx, formatter)

    def get_short_help_str(self, limit: int = 45) -> str:
        # the command list wraps a long line; it never cuts one with "..."
        if self.short_help:
            return self.short_help
        first = " ".join((self.help or "").split("\n\n", 1)[0].split())
        return first.split(". ", 1)[0].rstrip(".") + "." if first else ""


def _keep_commands(paragraph: str) -> str:
    """A help paragraph with its command lines kept whole: ``Example: sae-sens x ...`` becomes the label
    (wrapped as prose) and the command on its own line (Click's ``\\b``: not rewrapped)."""
    if paragraph.startswith((" ", "\t")):  # an indented block (commands, a shell line): as written
        return "\b\n" + paragraph
    at = paragraph.find(f"{PROG} ")
    if at < 0:
        return paragraph
    label, command = paragraph[:at].strip(), paragraph[at:]
    if label and not label.endswith(":"):  # a command named inside a sentence: leave the sentence whole
        return paragraph
    block = "\b\n    " + "\n    ".join(line.strip() for line in command.splitlines())
    return f"{label}\n\n{block}" if label else block


class _App(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    name=PROG,
    help="Measure how sensitive SAE features are: collect -> generate -> score -> report.\n\n"
    "Example: sae-sens run --sae py_4k_topk_s0 --features 50",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
