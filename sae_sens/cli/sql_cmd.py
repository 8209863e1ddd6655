"""`sae-sens sql`: the duckdb CLI (PyPI's duckdb-cli) on a read-only snapshot of the report views, or a
built-in prompt over the live files."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import StoreError
from .base import app
from .options import OptionalSaeOpt, StoreOpt
from .output import console, err_console, rich_table

if TYPE_CHECKING:
    import pyarrow as pa

    from ..report.shell import SqlShell
    from ..store import Store

RunsFilterOpt = Annotated[
    list[str] | None,
    typer.Option("--run", "-r", help="Limit to these runs; repeat for several (default: all).", show_default=False),
]
MAX_ROWS = 40  # the built-in prompt prints at most this many rows of a result
MAX_CELL = 60  # and this many characters of a cell (lists of activations are long)
PROMPT = "sae-sens sql> "
CONTINUE = "         ...> "


SNAPSHOT_NOTE_BYTES = 64 << 20  # say that the snapshot is being made when it copies more than this


def _is_pip_wrapper(path: str) -> bool:
    """duckdb-cli's console script: a Python launcher that adds its own ``-cmd``, which ``-safe`` refuses."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return False
    return head.startswith(b"#!") and b"duckdb_cli" in head


def duckdb_cli() -> str | None:
    """The duckdb CLI's binary: ``duckdb`` on PATH, else the one bundled in the duckdb-cli package of this
    Python (installed with sae-sens, so it is there even when the venv is not activated)."""
    found = shutil.which("duckdb")
    if found and not _is_pip_wrapper(found):
        return found
    spec = importlib.util.find_spec("duckdb_cli")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / ("duckdb.exe" if sys.platform == "win32" else "duckdb")
        if bundled.is_file():
            return str(bundled)
    return None


def open_duckdb_cli(binary: str, store: Store, runs: list[str] | None, saes: list[str] | None) -> int:
    """Copy the views' rows into a scratch database, open it in the duckdb CLI read-only and in safe mode
    (no file access, no ATTACH, no INSTALL, no shell), and return the CLI's exit status."""
    from ..report.views import snapshot_bytes, write_snapshot_sql

    with tempfile.TemporaryDirectory(prefix="sae-sens-sql-") as tmp:
        build = write_snapshot_sql(store, Path(tmp), runs, saes)
        size = snapshot_bytes(store, runs, saes)
        if size > SNAPSHOT_NOTE_BYTES:
            err_console.print(f"copying {size / 2**20:,.0f} MiB of tables into a read-only snapshot for the "
                              "duckdb CLI (narrow it with --run/--sae, or read the files in place with --builtin) ...",
                              highlight=False, soft_wrap=True)
        db = Path(tmp) / "store.duckdb"  # "store" is the catalog name the CLI shows
        quiet = Path(tmp) / "empty.sql"  # the copy runs none of the user's ~/.duckdbrc; the session does
        quiet.write_text("")
        with build.open() as script:
            made = subprocess.run([binary, "-bail", "-init", str(quiet), str(db)], stdin=script,
                                  capture_output=True, text=True)
        if made.returncode != 0:
            first = next((line for line in made.stderr.splitlines() if line.strip()), f"exit {made.returncode}")
            raise StoreError(f"could not copy the store {store.root} into a snapshot for the duckdb CLI: {first}",
                             f"check the free space in {Path(tmp).parent} (set TMPDIR to a folder with room), "
                             "or use sae-sens sql --builtin")
        banner = Path(tmp) / "banner.sql"  # -init works in safe mode: one line on how to save a result
        banner.write_text(f'.print "{SAVE_HINT}"\n' if sys.stdin.isatty() else "")
        return _run_interactive([binary, "-safe", "-readonly", "-init", str(banner), str(db)], hint=True)


SAVE_HINT = ('read-only snapshot of the store: to save a result, run sae-sens report --sql "SELECT ..." '
             '-o FILE.csv (or .tsv, .json, .md)')
# what the duckdb CLI says when safe mode or the read-only database refuses a write
REFUSED = ("file system operations are disabled", "cannot be used in -safe mode", "read-only mode",
           "Cannot execute statement of type", "disabled by configuration", "read-only database")


def _relay_stderr(pipe: Any) -> None:
    """The CLI's stderr, line by line, with the way to save a result after each refused write."""
    for raw in iter(pipe.readline, b""):
        sys.stderr.buffer.write(raw)
        line = raw.decode("utf-8", "replace")
        if any(r in line for r in REFUSED):
            sys.stderr.buffer.write(f"hint: {SAVE_HINT}\n".encode())
        sys.stderr.flush()


def _run_interactive(command: list[str], *, hint: bool = False) -> int:
    """Run an interactive child to its end and return its exit status. Ctrl-C on the terminal reaches the
    child (the duckdb CLI cancels the running query and stays open) and is ignored here, where it would
    otherwise kill the child with the whole session. With ``hint``, its stderr passes through a relay
    that adds the way to save a result after a refused write (stdin and stdout stay the terminal)."""
    import threading

    proc = subprocess.Popen(command, stderr=subprocess.PIPE if hint else None)
    relay = None
    if hint and proc.stderr is not None:
        relay = threading.Thread(target=_relay_stderr, args=(proc.stderr,), daemon=True)
        relay.start()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # after the spawn: the child keeps the default
    try:
        code = proc.wait()
        if relay is not None:
            relay.join(timeout=5)
        return code
    finally:
        signal.signal(signal.SIGINT, old)


def _cell(value: Any) -> Any:
    if isinstance(value, list):
        head = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value[:4])
        value = f"[{head}{', …' if len(value) > 4 else ''}] ({len(value)})"
    if isinstance(value, str) and len(value) > MAX_CELL:
        return value[: MAX_CELL - 1] + "…"
    return value


def show_bounded(table: pa.Table) -> None:
    """A result as a table of at most ``MAX_ROWS`` rows with cells cut to ``MAX_CELL`` characters."""
    head = table.slice(0, MAX_ROWS)
    rows = [[_cell(v) for v in row] for row in zip(*(c.to_pylist() for c in head.columns), strict=True)]
    console.print(rich_table(head.column_names, rows))
    if table.num_rows > MAX_ROWS:
        err_console.print(f"({MAX_ROWS} of {table.num_rows:,} rows shown; add LIMIT, or write them all with "
                          "sae-sens report --sql \"...\" --format csv -o FILE)", highlight=False)


def _history_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "sae-sens" / "sql_history"


def interactive(shell: SqlShell) -> None:
    """The prompt on a terminal: line editing and history (readline), a continuation prompt while a
    statement is open; Ctrl-C drops the statement being typed, Ctrl-D leaves."""
    try:
        import readline
    except ImportError:  # pragma: no cover  (Windows)
        readline = None  # type: ignore[assignment]
    history = _history_file()
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    try:
        while True:
            try:
                line = input(CONTINUE if shell.pending else PROMPT)
            except KeyboardInterrupt:
                shell.discard()
                print()
                continue
            except EOFError:
                print()
                break
            if not shell.feed(line):
                break
        shell.close()
    finally:
        if readline is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.set_history_length(1000)
                readline.write_history_file(history)
            except OSError:
                pass


@app.command("sql")
def sql_command(
    store: StoreOpt = None,
    run: RunsFilterOpt = None,
    sae: OptionalSaeOpt = None,
    builtin: Annotated[bool, typer.Option("--builtin", help="Use the built-in prompt even if the duckdb CLI "
                                                           "is installed.")] = False,
) -> None:
    """An interactive DuckDB SQL shell with the report views defined.

    Opens the duckdb CLI (the duckdb-cli package, installed with sae-sens, or `duckdb` on PATH) on a
    read-only snapshot of the store with every table: features, latents, examples, candidates, queries,
    generations, scores, feature_stats, judgments, labels, saes, runs, stages. The CLI runs in its safe
    mode: it cannot write files, attach, install or run shell commands (TEMP tables and views work); the
    snapshot is taken when it starts. Without it, or with --builtin, a small prompt with history over
    the live files (statements end with ';'; .tables, .help, .quit). Piped SQL runs too, and the exit
    status is non-zero when a statement fails.

    Example:

      sae-sens sql --store evals

      echo "SELECT sae, avg(generated_sensitivity) FROM feature_stats GROUP BY sae;" | sae-sens sql
    """
    from ..report.shell import SqlShell
    from ..report.views import connect, has_results
    from ..store import Store
    from .output import warn_stale

    st = Store(store)
    warn_stale(st, run, sae)
    binary = None if builtin else duckdb_cli()
    if binary is not None:
        # not typer.Exit: main() runs click with standalone_mode=False, which drops its code
        sys.exit(open_duckdb_cli(binary, st, run, sae))
    con = connect(st, run, sae)
    if not has_results(con):
        err_console.print(f"note: no runs in {st.root} yet, so the views are empty; run `sae-sens run` first")
    shell = SqlShell(con, show=show_bounded, note=lambda msg: err_console.print(msg, highlight=False, soft_wrap=True))
    if sys.stdin.isatty():
        err_console.print("sae-sens sql: end statements with ';', .tables lists the views, .quit leaves")
        interactive(shell)
        return
    for line in sys.stdin:
        if not shell.feed(line):
            break
    else:
        shell.close()
    if shell.errors:
        sys.exit(1)  # a script or pipe must be able to tell that a statement failed
