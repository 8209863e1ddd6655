"""`sae-sens runs`: list runs and SAEs in the store with each stage's status."""

from __future__ import annotations

from typing import Annotated

import typer

from .base import app
from .options import FormatOpt, StoreOpt
from .output import emit, err_console

_STYLE = {"done": "[green]done[/]", "stale": "[yellow]stale[/]", "missing": "[dim]missing[/]"}


@app.command("runs")
def runs_command(
    store: StoreOpt = None,
    run: Annotated[str | None, typer.Option("--run", "-r", help="Only this run.", show_default=False)] = None,
    fmt: FormatOpt = "table",
) -> None:
    """List runs and SAEs in the store with each stage's status (done, stale, missing).

    A stage is stale when an upstream table changed after it ran; rerun it (or `sae-sens run`).

    Example: sae-sens runs --store evals
    """
    from ..runs import list_runs
    from ..store import Store

    st = Store(store)
    rows = list_runs(st, run)
    if not rows:
        err_console.print(f"no runs in {st.root}; start one with `sae-sens run --sae <name>`")
        raise typer.Exit(0)
    cols = ["run", "sae", "collect", "generate", "generators", "score", "finished"]
    table_rows = []
    for r in rows:
        states = [r.family("collect"), r.family("generate"), r.family("score")]
        if fmt == "table":
            states = [_STYLE[s] for s in states]
        table_rows.append([r.run, r.sae, states[0], states[1], ", ".join(r.generators), states[2], r.finished_at])
    emit(cols, table_rows, fmt, title=f"runs in {st.root}")
