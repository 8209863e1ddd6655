"""A minimal SQL prompt over the report views, for machines without the ``duckdb`` CLI.

Statements end with ``;`` (or a blank line); ``.tables`` lists the views, ``.quit`` / EOF leaves.
It reads lines from any iterable and reports through callbacks, so it runs the same on a
terminal, a pipe or in a test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import duckdb
import pyarrow as pa

from ..errors import SqlError
from .views import META_VIEWS, TABLE_VIEWS, query

HELP = (
    "End a statement with ';'. Views: " + ", ".join(TABLE_VIEWS + META_VIEWS)
    + ". Commands: .tables, .help, .quit"
)


def sql_shell(
    con: duckdb.DuckDBPyConnection,
    lines: Iterable[str],
    *,
    show: Callable[[pa.Table], None],
    note: Callable[[str], None],
) -> int:
    """Run each statement read from ``lines``: results go to ``show``, errors (one line each) and help
    to ``note``. Returns how many statements ran without error."""
    buffer: list[str] = []
    ok = 0

    def run() -> None:
        nonlocal ok
        sql = "\n".join(buffer).strip()
        buffer.clear()
        if not sql.strip(";").strip():
            return
        try:
            table = query(con, sql)
        except SqlError as e:
            note(e.one_line())
            return
        ok += 1
        if table.num_columns:
            show(table)

    for raw in lines:
        line = raw.rstrip("\n")
        stripped = line.strip()
        if not buffer and stripped.startswith("."):
            command = stripped.split()[0]
            if command in (".quit", ".exit", ".q"):
                return ok
            if command == ".tables":
                show(pa.table({"view": list(TABLE_VIEWS + META_VIEWS)}))
            elif command == ".help":
                note(HELP)
            else:
                note(f"unknown command {command}. {HELP}")
            continue
        if stripped:
            buffer.append(line)
        if buffer and (not stripped or stripped.endswith(";")):
            run()
    if buffer:
        run()
    return ok
