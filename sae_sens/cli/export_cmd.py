"""`sae-sens export`: results in another tool's format (today: SAEBench eval outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .base import app
from .options import OptionalSaeOpt, StoreOpt

EXPORT_FORMATS = ("saebench",)


@app.command("export")
def export_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into (created if needed).",
                                         file_okay=False, show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="saebench: one SAEBench eval-output JSON per run × SAE × "
                                                      "generator.")] = "saebench",
    store: StoreOpt = None,
    run: Annotated[list[str] | None, typer.Option("--run", "-r", help="Only these runs (default: all).",
                                                  show_default=False)] = None,
    sae: OptionalSaeOpt = None,
    generator: Annotated[list[str] | None, typer.Option("--generator", "-g", help="Only these generators.",
                                                        show_default=False)] = None,
) -> None:
    """Write the results in SAEBench's eval-output format, to sit next to SAEBench's own metrics.

    Each file is <output>/<run>/<sae>__<generator>_eval_results.json with eval_type_id
    "sae_sens_sensitivity": the mean sensitivity with its 95% interval (as in `sae-sens report`),
    the run's settings as eval_config, one detail row per latent, and the SAE's sae_lens ids.

    Example: sae-sens export --store evals --run demo --format saebench -o saebench_results/
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", f"use one of {', '.join(EXPORT_FORMATS)}")
    from ..report.saebench_export import export_saebench
    from ..store import Store
    from .output import err_console, warn_stale

    st = Store(store)
    paths = export_saebench(st, output, run, sae, generator)
    warn_stale(st, run, sae)
    for p in paths:
        err_console.print(f"wrote {p}", highlight=False, soft_wrap=True)
