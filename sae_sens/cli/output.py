"""Terminal output: rich tables, machine formats, progress bars. Only the CLI prints."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# Piped or redirected output has no terminal width; rich would squeeze wide tables into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)
FORMATS = ("table", "csv", "json", "markdown")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    t = Table(title=title, show_lines=False, header_style="bold cyan")
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*(_cell(v) for v in r))
    return t


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table", title: str | None = None) -> str | None:
    """Render rows in ``fmt``; returns text for csv/json/markdown, prints a rich table for ``table``."""
    if fmt == "table":
        console.print(rich_table(columns, rows, title))
        return None
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[("" if v is None else v) for v in r] for r in rows])
        return buf.getvalue()
    if fmt == "json":
        return json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=2) + "\n"
    if fmt == "markdown":
        lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    from ..errors import UsageError

    raise UsageError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")


def emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table", title: str | None = None) -> None:
    text = render(columns, rows, fmt, title)
    if text is not None:
        sys.stdout.write(text)


def progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )
