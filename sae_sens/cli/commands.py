"""Importing this module registers every command on the app (one module per command)."""

import inspect

from . import (  # noqa: F401
    collect_cmd,
    demo_cmd,
    export_cmd,
    generate_cmd,
    judge_cmd,
    label_cmd,
    report_cmd,
    run_cmd,
    runs_cmd,
    saes_cmd,
    score_cmd,
    show_cmd,
    sql_cmd,
)
from .base import app


def _reflow(doc: str | None) -> str | None:
    """A command's docstring with the line breaks inside prose paragraphs removed: this Typer keeps every
    single newline, so source-wrapped lines would break again at the terminal's width. Paragraphs with an
    indented line (examples) keep theirs."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
                       for p in paragraphs)


for _info in app.registered_commands:
    if _info.callback is not None and _info.help is None:
        _info.callback.__doc__ = _reflow(_info.callback.__doc__)
