"""Terminal output: tables that fit the terminal, machine formats, progress bars. Only the CLI prints.

A table for a terminal never cuts a value. When the full table is wider than the terminal, it is
made narrower in steps, each only if the previous one did not fit: columns with one value on every
row move into a caption line above the table; then headers are shortened (``SHORT``); then each row
is printed as a vertical record (``name  value`` lines, like psql's ``\\x``).

Off a terminal (a pipe, a redirect, a batch log) the default format is TSV, one line per row with
every value at full precision; ``--format`` chooses another, and ``--output FILE`` infers it from
the file's extension (``EXTENSIONS``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.cells import cell_len
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
from rich.text import Text

# Off a terminal rich would squeeze tables into 80 columns; without a COLUMNS setting, do not limit.
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 10_000)
err_console = Console(stderr=True)
FORMATS = ("table", "tsv", "csv", "json", "markdown")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".md": "markdown",
              ".markdown": "markdown", ".txt": "table"}
AutoFormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="table, tsv, csv, json or markdown (default: a table on a terminal, TSV "
                                  "otherwise; with --output, from the file's extension).", show_default=False),
]
# Short headers for narrow terminals (docs/guide/report.md lists them).
SHORT = {
    "sensitivity": "sens", "original_sensitivity": "orig", "original_sensitivity_window": "orig_win",
    "share_below_half": "<0.5", "ci_low": "lo", "ci_high": "hi", "architecture": "arch", "features": "feats",
    "generator": "gen", "generators": "gens", "generate": "gen", "collect": "coll", "sparsity": "spars",
    "feature_index": "feat", "preamble_samples": "preamble", "p_value": "p", "fallback_parse": "fallback",
    "control_sensitivity": "ctrl", "control_features": "ctrl_feats",
}
# Cell values shown in colour in terminal tables (stage statuses in `runs`).
STYLES = {"done": "green", "stale": "yellow", "incomplete": "yellow", "damaged": "red", "missing": "dim"}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}"  # a terminal's precision; files and pipes get every digit (_plain)
    return str(v)


def _plain(v: Any) -> str:
    """A value at full precision for machine formats (TSV)."""
    if v is None:
        return ""
    text = repr(v) if isinstance(v, float) else str(v)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def resolve_format(fmt: str | None, output: Path | None = None, *, tty: bool | None = None) -> str:
    """The format to write: ``fmt`` when given, else from ``output``'s extension, else a table on a
    terminal and TSV anywhere else."""
    if fmt is not None:
        if fmt not in FORMATS:
            from ..errors import UsageError

            raise UsageError(f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
        return fmt
    if output is not None:
        return EXTENSIONS.get(output.suffix.lower(), "tsv")
    return "table" if (sys.stdout.isatty() if tty is None else tty) else "tsv"


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> Table:
    t = Table(title=title, show_lines=False, header_style="bold cyan")
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*(_cell(v) for v in r))
    return t


def _table_width(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> int:
    """Width of rich's default box table: each column is padded by one space each side, plus borders."""
    widths = [max([cell_len(h), *(cell_len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    return sum(w + 3 for w in widths) + 1


def _styled(text: str) -> Text:
    return Text(text, style=STYLES.get(text, ""))


def fit_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None) -> tuple[
        list[str], list[str], list[list[str]], bool]:
    """(caption parts, headers, cells, vertical) for a table at most ``width`` cells wide (see the
    module docstring for the steps); ``width=None`` keeps the full table."""
    cells = [[_cell(v) for v in r] for r in rows]
    headers = [str(c) for c in columns]
    if width is None or _table_width(headers, cells) <= width:
        return [], headers, cells, False
    caption: list[str] = []
    if len(cells) > 1 and len(headers) > 1:
        constant = [i for i in range(len(headers)) if len({r[i] for r in cells}) == 1]
        if len(constant) == len(headers):
            constant = constant[1:]  # keep one column
        caption = [f"{headers[i]}: {cells[0][i]}" for i in constant if cells[0][i]]  # empty ones say nothing
        keep = [i for i in range(len(headers)) if i not in constant]
        headers = [headers[i] for i in keep]
        cells = [[r[i] for i in keep] for r in cells]
        if _table_width(headers, cells) <= width:
            return caption, headers, cells, False
    short = [SHORT.get(h, h) for h in headers]
    if _table_width(short, cells) <= width:
        return caption, short, cells, False
    return caption, headers, cells, True


def _pack(parts: Sequence[str], width: int, sep: str = " · ") -> list[str]:
    """``parts`` joined by ``sep`` into lines of at most ``width`` cells (a longer part gets a line)."""
    lines: list[str] = []
    for part in parts:
        if lines and cell_len(lines[-1] + sep + part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return lines


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                *, out: Console | None = None) -> None:
    """A table that fits ``out``'s width without cutting any value."""
    out = out or console
    caption, headers, cells, vertical = fit_table(columns, rows, out.width)
    if title and (vertical or caption):
        out.print(Text(title, style="bold"))
    for line in _pack(caption, out.width):  # broken between its parts only, never cut
        out.print(Text(line, style="dim"), soft_wrap=True)
    if vertical:
        pad = max(cell_len(h) for h in headers)
        for n, r in enumerate(cells):
            out.print(Text(f"-[ {n + 1} ]" + "-" * max(0, min(out.width, 40) - 6 - len(str(n + 1))), style="dim"),
                      soft_wrap=True)
            for h, v in zip(headers, r, strict=True):
                out.print(Text(h.ljust(pad) + "  ", style="bold cyan") + _styled(v), soft_wrap=True)
        return
    t = Table(title=None if caption else title, show_lines=False, header_style="bold cyan")
    for h in headers:
        t.add_column(h, no_wrap=True)
    for r in cells:
        t.add_row(*(_styled(v) for v in r))
    out.print(t)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "table", title: str | None = None) -> str | None:
    """Render rows in ``fmt``; returns text for tsv/csv/json/markdown, prints a table for ``table``."""
    if fmt == "table":
        print_table(columns, rows, title)
        return None
    if fmt == "tsv":
        lines = ["\t".join(map(_plain, columns))] + ["\t".join(_plain(v) for v in r) for r in rows]
        return "\n".join(lines) + "\n"
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


def table_text(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """The full table as plain text (for files: no colour, no width limit)."""
    buf = io.StringIO()
    print_table(columns, rows, title, out=Console(file=buf, width=10_000, no_color=True, highlight=False))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def emit(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str | None = None,
         title: str | None = None) -> None:
    """A command's table on stdout: a table on a terminal, TSV in a pipe or file (``fmt`` to choose)."""
    text = render(columns, rows, resolve_format(fmt), title)
    if text is not None:
        sys.stdout.write(text)


def write_file(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, path: Path,
               title: str | None = None) -> None:
    """Write one table to ``path`` in ``fmt`` (a table format as plain text), atomically; stderr names it."""
    from ..report.html import write_user_file

    text = table_text(columns, rows, title) if fmt == "table" else render(columns, rows, fmt) or ""
    write_user_file(path, text)
    err_console.print(f"wrote {path}" + (f" ({title})" if title else ""), highlight=False, soft_wrap=True)


def warn(lines: Sequence[str]) -> None:
    """One ``warning:`` line each, on stderr (never mixed into a table a script reads)."""
    for line in lines:
        err_console.print(Text("warning: ", style="yellow") + Text(line), highlight=False, soft_wrap=True)


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


def money(v: Any) -> str:
    """A cost cell: dollars to four places, or n/a when the price is unknown."""
    return "n/a" if v is None else f"${v:.4f}"


def warn_stale(store: Any, runs: Sequence[str] | str | None = None, saes: Sequence[str] | str | None = None) -> None:
    """One stderr line per run × SAE in scope whose results are stale, damaged or incomplete, with the
    command that refreshes it (freshness.notices): a report never shows old numbers silently."""
    from ..report.views import scope_notices

    as_list = lambda v: [v] if isinstance(v, str) else (list(v) if v else None)  # noqa: E731
    for notice in scope_notices(store, as_list(runs), as_list(saes)):
        err_console.print("warning: " + notice.line(), markup=False, highlight=False, soft_wrap=True)
