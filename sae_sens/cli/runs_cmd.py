"""`sae-sens runs`: list runs and SAEs in the store with each stage's status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import app
from .options import StoreOpt
from .output import AutoFormatOpt, emit, err_console, resolve_format, write_file


@app.command("runs")
def runs_command(
    store: StoreOpt = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="Only this run.", show_default=False)] = None,
    fmt: AutoFormatOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="Hash every table's content (slower).")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the table to this file (format from its extension: .csv, .tsv, .json, .md, "
        ".txt).", show_default=False)] = None,
) -> None:
    """List runs and SAEs in the store with each stage's status (done, stale, damaged, incomplete,
    waiting (batch), missing).

    A stage is stale when an upstream table changed after it ran, or a stage it reads from is stale;
    incomplete when it stopped before its last table (collect's pass without its selection); rerun it
    (or `sae-sens run`). waiting (batch): generate or judge --batch submitted batches that are not
    collected yet; the same command collects them. The judge column is optional: missing there only
    means no judge ran.

    Example: sae-sens runs --store evals
    """
    from ..runs import list_runs
    from ..store import Store

    fmt = resolve_format(fmt, output)
    st = Store(store)
    rows = list_runs(st, run, verify=verify)
    if not rows:
        err_console.print(f"no runs in {st.root}; start one with `sae-sens run --sae <name>`")
        raise typer.Exit(0)
    cols = ["run", "sae", "collect", "generate", "generators", "score", "judge", "finished"]
    table_rows = []
    for r in rows:
        states = [r.family("collect"), r.family("generate"), r.family("score"), r.family("judge")]
        table_rows.append([r.run, r.sae, states[0], states[1], ", ".join(r.generators), states[2], states[3],
                           r.finished_at])
    if output is not None:
        write_file(cols, table_rows, fmt, output, f"runs in {st.root}")
    else:
        emit(cols, table_rows, fmt, title=f"runs in {st.root}")
    for r in rows:
        for line in r.repairs():
            err_console.print(f"[bold red]damaged[/]: {line}", highlight=False, soft_wrap=True)
    if verify:
        for r in rows:
            left = st.leftovers(r.run, r.sae)
            if left:
                names = ", ".join(str(p.relative_to(st.root)) for p in left[:3]) + (" ..." if len(left) > 3 else "")
                err_console.print(f"[yellow]leftover[/]: {r.run}/{r.sae}: {len(left)} temp file(s) of interrupted "
                                  f"writes ({names}); the next write to that folder removes those of tables, the "
                                  "stage's rerun those of checkpoints", highlight=False, soft_wrap=True)
