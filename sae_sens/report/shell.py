"""A minimal SQL prompt over the report views, for machines without the ``duckdb`` CLI.

Statements end with ``;`` (or a blank line); ``.tables`` lists the views, ``.quit`` / EOF leaves.
``SqlShell`` takes one line at a time and reports through callbacks, so it runs the same on a
terminal (where the caller shows a continuation prompt while a statement is open), a pipe or in a
test.
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


class SqlShell:
    """Feeds lines into statements and runs each one complete: results to ``show``, errors (one line
    each) and help to ``note``. ``ok`` and ``errors`` count statements."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, show: Callable[[pa.Table], None],
                 note: Callable[[str], None]) -> None:
        self.con = con
        self.show = show
        self.note = note
        self.ok = 0
        self.errors = 0
        self._buffer: list[str] = []

    @property
    def pending(self) -> bool:
        """A statement is open (its ';' not yet read): the prompt should say so."""
        return bool(self._buffer)

    def _run(self) -> None:
        sql = "\n".join(self._buffer).strip()
        self._buffer.clear()
        if not sql.strip(";").strip():
            return
        try:
            table = query(self.con, sql)
        except SqlError as e:
            self.errors += 1
            self.note(e.one_line())
            return
        self.ok += 1
        if table.num_columns:
            self.show(table)

    def feed(self, raw: str) -> bool:
        """One input line; False once the user asked to leave."""
        line = raw.rstrip("\n")
        stripped = line.strip()
        if not self._buffer and stripped.startswith("."):
            command = stripped.split()[0]
            if command in (".quit", ".exit", ".q"):
                return False
            if command == ".tables":
                self.show(pa.table({"view": list(TABLE_VIEWS + META_VIEWS)}))
            elif command == ".help":
                self.note(HELP)
            else:
                self.errors += 1
                self.note(f"unknown command {command}. {HELP}")
            return True
        if stripped:
            self._buffer.append(line)
        if self._buffer and (not stripped or stripped.endswith(";")):
            self._run()
        return True

    def discard(self) -> None:
        """Drop the statement being typed (Ctrl-C at the prompt)."""
        self._buffer.clear()

    def close(self) -> None:
        """End of input: run what is left."""
        if self._buffer:
            self._run()


def sql_shell(
    con: duckdb.DuckDBPyConnection,
    lines: Iterable[str],
    *,
    show: Callable[[pa.Table], None],
    note: Callable[[str], None],
) -> int:
    """Run each statement read from ``lines``: results go to ``show``, errors (one line each) and help
    to ``note``. Returns how many statements ran without error."""
    shell = SqlShell(con, show=show, note=note)
    for raw in lines:
        if not shell.feed(raw):
            return shell.ok
    shell.close()
    return shell.ok
