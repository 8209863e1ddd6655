"""`sae-sens export`: results in another tool's format (SAEBench eval outputs, the original tool's CSVs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .base import app
from .options import OptionalSaeOpt, StoreOpt

EXPORT_FORMATS = ("saebench", "original")


@app.command("export")
def export_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write into (created if needed).",
                                         file_okay=False, show_default=False)],
    fmt: Annotated[str, typer.Option("--format", metavar="saebench|original",
                                     help="saebench: one SAEBench eval-output JSON per run × SAE × generator; "
                                          "original: the original tool's six CSVs per run × SAE × generator, in "
                                          "<output>/<run>/<generator>/<sae>/.")] = "saebench",
    store: StoreOpt = None,
    run: Annotated[list[str] | None, typer.Option("--run", "-r", help="Only these runs (default: all).",
                                                  show_default=False)] = None,
    sae: OptionalSaeOpt = None,
    generator: Annotated[list[str] | None, typer.Option("--generator", "-g", help="Only these generators.",
                                                        show_default=False)] = None,
) -> None:
    """Write the results in another tool's format: SAEBench's eval outputs, or the original tool's folder.

    saebench: <output>/<run>/<sae>__<generator>_eval_results.json with eval_type_id
    "sae_sens_sensitivity": the mean sensitivity with its 95% interval (as in `sae-sens report`),
    the run's settings as eval_config, one detail row per latent, and the SAE's sae_lens ids.

    original: <output>/<run>/<generator>/<sae>/ holds the original tool's feature_examples.csv,
    generated_samples.csv, generation_queries_with_responses.csv, generated_samples_with_activations.csv,
    original_examples_with_activations.csv and feature_stats.csv, with its columns (docs: "Coming
    from the original tool").

    Example: sae-sens export --store evals --run demo --format saebench -o saebench_results/

    Example: sae-sens export --store evals --run demo --format original -o original_evals/
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}", f"use one of {', '.join(EXPORT_FORMATS)}")
    from ..store import Store
    from .output import err_console, warn_stale

    st = Store(store)
    if fmt == "original":
        from ..report.original_export import export_original

        paths = export_original(st, output, run, sae, generator)
    else:
        from ..report.saebench_export import export_saebench

        paths = export_saebench(st, output, run, sae, generator)
    warn_stale(st, run, sae)
    for p in paths:
        err_console.print(f"wrote {p}", highlight=False, soft_wrap=True)
