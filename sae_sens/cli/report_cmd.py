"""`sae-sens report`: summaries, comparisons, SQL, plots and HTML over the store's views."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from ..report.keys import GROUP_KEYS, N_RESAMPLES
from .base import app
from .options import OptionalSaeOpt, StoreOpt
from .output import AutoFormatOpt, err_console, render, resolve_format, warn, write_file

if TYPE_CHECKING:  # duckdb and pyarrow are imported when the command runs, not for --help
    import pyarrow as pa

RunsFilterOpt = Annotated[
    list[str] | None,
    typer.Option("--run", "-r", help="Limit to these runs; repeat for several (default: all).", show_default=False),
]
GeneratorsFilterOpt = Annotated[
    list[str] | None,
    typer.Option("--generator", "-g", help="Limit to these generators; repeat for several (default: all).",
                 show_default=False),
]


def _columns_rows(table: pa.Table) -> tuple[list[str], list[tuple]]:
    return table.column_names, list(zip(*(c.to_pylist() for c in table.columns), strict=True))


def _output(table: pa.Table, fmt: str, output: Path | None, title: str | None = None, *,
            block: bool = False) -> None:
    """Print ``table`` in ``fmt``, or write it to ``output`` (a table format is written as plain text).
    ``block``: one of several tables on stdout, so a TSV or CSV one opens with a ``# title`` line and
    ends with a blank line (one table per block; ``-o`` writes one file per table)."""
    columns, rows = _columns_rows(table)
    if output is None:
        text = render(columns, rows, fmt, title)
        if text is not None:
            if block and fmt in ("tsv", "csv"):
                text = f"# {title or 'table'}\n{text}\n"
            sys.stdout.write(text)
        return
    write_file(columns, rows, fmt, output, title)


# the summary's columns in a terminal table (--columns default); --columns all, a file or a pipe get every one
COMPACT = ("features", "sensitivity", "ci_low", "ci_high", "control_sensitivity", "original_sensitivity", "n")


def select_columns(table: pa.Table, keys: list[str], columns: str | None, terminal: bool) -> pa.Table:
    """The summary's columns to show: ``columns`` "all", a comma list, or (None / "default") the grouping
    keys and ``COMPACT`` on a terminal (the sample-count range as one ``n`` column, e.g. ``1-10``),
    every column elsewhere."""
    import pyarrow as pa

    if columns == "all" or (columns in (None, "default") and not terminal):
        return table
    if columns not in (None, "default"):
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in table.column_names]
        if unknown:
            raise UsageError(f"no column {', '.join(unknown)} in the summary",
                             f"choose from {', '.join(table.column_names)}, or --columns all")
        return table.select(wanted)
    lo, hi = table.column("n_min").to_pylist(), table.column("n_max").to_pylist()
    n = [None if a is None else str(a) if a == b else f"{a}-{b}" for a, b in zip(lo, hi, strict=True)]
    table = table.append_column("n", pa.array(n, pa.string()))
    shown = [k for k in (keys or ["run", "sae", "generator"]) if k in table.column_names]
    return table.select(shown + [c for c in COMPACT if c in table.column_names and c not in shown])


def _beside(output: Path | None, name: str) -> Path | None:
    """Where a second table of one report goes when ``-o`` names the first: ``x.csv`` ->
    ``x.<name>.csv`` (each file one table, in the same format; stderr names every file)."""
    if output is None:
        return None
    return output.with_name(f"{output.stem}.{name}{output.suffix}")


@app.command("report")
def report_command(
    store: StoreOpt = None,
    run: RunsFilterOpt = None,
    sae: OptionalSaeOpt = None,
    generator: GeneratorsFilterOpt = None,
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help=f"Regroup the summary: {', '.join(GROUP_KEYS)}; repeat or comma-separate "
                                  "to combine (features of all SAEs in a group are pooled, each feature "
                                  "counted once: several generators' sensitivities for it are averaged).",
                     show_default=False),
    ] = None,
    compare_: Annotated[
        tuple[str, str] | None,
        typer.Option("--compare", help="Two generators or runs side by side per shared feature; two SAEs "
                                       "as distributions (means, intervals, permutation test of the difference).",
                     metavar="A B", show_default=False),
    ] = None,
    sql: Annotated[str | None, typer.Option("--sql", help="Run a SQL query over the views.",
                                               show_default=False)] = None,
    sql_file: Annotated[
        Path | None,
        typer.Option("--sql-file", help="Run the SQL in this file.", exists=True, dir_okay=False, show_default=False),
    ] = None,
    fmt: AutoFormatOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the output to this file (format from its "
                                                         "extension: .csv, .tsv, .json, .md, .txt).", show_default=False)
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Write FILE.png (sensitivity vs width per architecture, with intervals), "
                                    "FILE_hist.png (per-feature sensitivity per SAE) and FILE_l0.png "
                                    "(sensitivity vs L0).", show_default=False),
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Write a self-contained HTML page of every feature's examples and "
                                    "generated samples, highlighted by activation, and every table; a folder "
                                    "(DIR/ or no suffix): an index plus one page per SAE.", show_default=False),
    ] = None,
    resamples: Annotated[int, typer.Option(
        "--resamples", help="Bootstrap resamples for --compare of two SAEs (the interval of b - a and its "
                            "permutation test); a row's own interval is analytic and needs none.", min=10)
    ] = N_RESAMPLES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of those resamples.")] = 0,
    min_original: Annotated[float | None, typer.Option(
        "--min-original-sensitivity", help="The paper's filter: keep only features whose own examples fire at "
        "least this often (e.g. 0.9); prints the share of features each SAE loses.", show_default=False)] = None,
    thresholds: Annotated[bool, typer.Option(
        "--thresholds", help="Also show sensitivity at the thresholds relative to each feature's top activation "
        "(score --relative-thresholds) and the mean frac_of_top.")] = False,
    columns: Annotated[str | None, typer.Option(
        "--columns", help="The summary's columns: default (on a terminal: the keys, features, sensitivity with its "
        "interval, control, original, n; elsewhere every column), all, or a comma list.",
        show_default=False)] = None,
    specificity: Annotated[bool, typer.Option(
        "--specificity", help="Also show, per generator, the evidence beside its sensitivity: base rate "
        "(baseline:), lift, specificity (negatives:), injection rate (inject:), AUROC, dense features; "
        "generate those controls first (sae-sens generate --help).")] = False,
    validity: Annotated[bool, typer.Option(
        "--validity", help="Also show the thresholds table, the LLM judge's verdicts (sae-sens judge) and the "
        "human labels (sae-sens label: accuracy, agreement with the judge).")] = False,
) -> None:
    """Summarise sensitivity per run × SAE × generator, regroup, compare, or query with SQL.

    The views: features, latents, examples, candidates, queries, generations, scores, feature_stats,
    judgments, labels, saes (model, width, architecture, sparsity, ... per SAE), runs and stages
    (stage status).

    Examples:

      sae-sens report

      sae-sens report --by width --by architecture --plot sens.png

      sae-sens report --compare py_4k_topk_s0 py_4k_relu_s0 --format csv -o cmp.csv

      sae-sens report --sql "SELECT width, architecture, avg(generated_sensitivity) FROM feature_stats
      JOIN saes USING (run, sae) GROUP BY ALL ORDER BY ALL"
    """
    from ..report import compare, connect, query, require_results, summarize, write_html, write_plots
    from ..report.summary import summary_warnings
    from ..store import Store
    from .output import console, warn_stale

    if sql is not None and sql_file is not None:
        raise UsageError("--sql and --sql-file are alternatives", "pass one of them")
    if compare_ is not None and by:
        raise UsageError("--compare and --by are alternatives", "pass one of them")
    fmt = resolve_format(fmt, output)
    st = Store(store)
    as_sql = sql is not None or sql_file is not None
    con = connect(st, run, sae, status=as_sql)
    warn_stale(st, run, sae)
    keys = [k.strip() for b in by or () for k in b.split(",") if k.strip()]  # --by width,architecture
    if min_original is not None:
        from ..report.validity import apply_min_original

        _output(apply_min_original(con, min_original, keys), fmt, _beside(output, "kept"),
                f"features kept at --min-original-sensitivity {min_original:g}", block=True)
    if as_sql:
        text = sql if sql is not None else sql_file.read_text()  # type: ignore[union-attr]
        _output(query(con, text), fmt, output)
    else:
        require_results(con, st)
        if compare_ is not None:
            result = compare(con, *compare_, n_resamples=resamples, seed=seed)
            rows = result.rows
            if fmt == "table" and output is None:  # long names as headers would not fit: a and b, named in the title
                rows = rows.rename_columns(["a" if c in (result.a, f"{result.a} (a)") else
                                            "b" if c in (result.b, f"{result.b} (b)") else c for c in rows.column_names])
            _output(rows, fmt, output, title=f"{result.dimension}: a={result.a}, b={result.b}")
            # prose: wrapped to the terminal (a pipe or a file's log gets it on one line)
            (console if fmt == "table" and output is None else err_console).print(
                result.summary, highlight=False, soft_wrap=not (fmt == "table" and output is None))
            warn(result.warnings)
        else:
            table = summarize(con, keys, generators=generator, n_resamples=resamples, seed=seed)
            title = "sensitivity per " + (" × ".join(keys) if keys else "run × SAE × generator")
            shown = select_columns(table, keys, columns, terminal=fmt == "table" and output is None)
            _output(shown, fmt, output, title,
                    block=bool(thresholds or validity or specificity or min_original is not None))
            warn(summary_warnings(table))
            if specificity:
                from ..report.specificity import specificity_summary

                _output(specificity_summary(con, generator, n_resamples=resamples, seed=seed), fmt,
                        _beside(output, "specificity"), "beside the sensitivity: base rate, lift, specificity, "
                        "injection rate, AUROC (95% intervals over features)", block=True)
            if thresholds or validity:
                from ..report.validity import threshold_summary

                _output(threshold_summary(con, generator, n_resamples=resamples, seed=seed), fmt,
                        _beside(output, "thresholds"), "sensitivity at thresholds relative to the top activation",
                        block=True)
            if validity:
                from ..report.validity import validity_tables, validity_warnings

                for title_, table_ in validity_tables(con, generator, n_resamples=resamples, seed=seed):
                    name = "judge" if title_.startswith("LLM judge") else "labels"
                    _output(table_, fmt, _beside(output, name), title_, block=True)
                    warn(validity_warnings(name, table_))
    if plot is not None:
        require_results(con, st)
        paths = write_plots(con, plot, generators=generator, n_resamples=resamples, seed=seed)
        from ..report.validity import threshold_plot_path, write_threshold_plot

        paths.append(write_threshold_plot(con, threshold_plot_path(plot), generators=generator,
                                          n_resamples=resamples, seed=seed))
        err_console.print("wrote " + ", ".join(map(str, paths)))
    if html is not None:
        require_results(con, st)
        err_console.print(f"wrote {write_html(con, html, generator, store=st)}")
