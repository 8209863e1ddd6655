"""Validity summaries: is a low sensitivity the feature's doing, or the generator's, or the threshold's?

* ``threshold_summary``: per run × SAE × generator, mean sensitivity at the absolute threshold and at
  each threshold relative to the feature's top activation (``feature_stats.sensitivity_relative``),
  with bootstrap intervals over features, and the mean ``frac_of_top``;
* ``apply_min_original``: the paper's feature filter (keep features whose own examples still fire at
  least ``min_original`` of the time) applied to the connection's ``feature_stats`` view, so every
  summary after it sees only the kept features; returns what each SAE lost;
* ``write_threshold_plot``: sensitivity against the threshold, one line per SAE × generator.

Kept apart from ``summary.py`` so the main summary's columns do not change with these options.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import UsageError
from ..schemas import CONTROL_SQL, REFERENCE_SQL
from .intervals import mean_ci
from .summary import N_RESAMPLES, SMALL_N
from .views import query


def _generator_where(generators: Sequence[str] | None, prefix: str = "WHERE") -> tuple[str, list[str]]:
    if not generators:  # base-rate, injection and negatives rows are no sensitivity (report --specificity)
        return f"{prefix} NOT {REFERENCE_SQL}", []
    return f"{prefix} generator IN ({', '.join('?' for _ in generators)})", list(generators)


def level_label(r: float | None, absolute: float | None = None) -> str:
    """``1%`` for a relative threshold r = 0.01; the absolute threshold as ``> 1e-06``."""
    if r is None:
        return f"> {absolute:g}" if absolute is not None else "absolute"
    return f"{r * 100:g}%"


def with_intervals(table: pa.Table, values: str, mean_at: str, *, n_resamples: int, seed: int) -> pa.Table:
    """Replace the list column ``values`` (per-feature values of each row's group) by ``ci_low`` and
    ``ci_high`` placed after ``mean_at``: 95% intervals of the mean (intervals.mean_ci), as in the main summary."""
    col = table.column(values).combine_chunks()
    lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    codes = np.repeat(np.arange(table.num_rows), lengths)
    low, high = mean_ci(codes, flat, table.num_rows)
    table = table.drop_columns([values])
    at = table.column_names.index(mean_at) + 1
    return (table.add_column(at, f"{mean_at}_low", pa.array(low, from_pandas=True))
            .add_column(at + 1, f"{mean_at}_high", pa.array(high, from_pandas=True)))


def threshold_levels(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> pa.Table:
    """Long form: per run × SAE × generator × level (the absolute threshold, then each relative one),
    features, mean sensitivity and its 95% interval over features."""
    where, params = _generator_where(generators)
    sql = f"""
        WITH fs AS (SELECT * FROM feature_stats {where}),
        rel AS (
            SELECT run, sae, generator, feature_index,
                unnest(relative_thresholds) AS r, unnest(sensitivity_relative) AS s
            FROM fs
        ),
        levels AS (
            SELECT run, sae, generator, feature_index, CAST(NULL AS DOUBLE) AS r, threshold AS absolute,
                generated_sensitivity AS s FROM fs
            UNION ALL
            SELECT run, sae, generator, feature_index, r, NULL, s FROM rel
        )
        SELECT run, sae, generator, r AS relative, any_value(absolute) AS absolute,
            count(s) AS features, avg(s) AS sensitivity, list(s) FILTER (WHERE s IS NOT NULL) AS _values
        FROM levels GROUP BY run, sae, generator, r
        ORDER BY run, sae, generator, r NULLS FIRST
    """
    table = query(con, sql, params)
    labels = [level_label(r, a) for r, a in zip(table.column("relative").to_pylist(),
                                                 table.column("absolute").to_pylist(), strict=True)]
    table = table.add_column(3, "level", pa.array(labels, pa.string()))
    return with_intervals(table, "_values", "sensitivity", n_resamples=n_resamples, seed=seed)


def threshold_summary(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                      n_resamples: int = N_RESAMPLES, seed: int = 0) -> pa.Table:
    """Wide form, one row per run × SAE × generator: mean frac_of_top, then the mean sensitivity at
    each level with its interval as two numeric columns (``sens 1%``, ``sens 1% lo``, ``sens 1% hi``, ...)."""
    long = threshold_levels(con, generators, n_resamples=n_resamples, seed=seed).to_pylist()
    where, params = _generator_where(generators)
    frac = {(r["run"], r["sae"], r["generator"]): (r["features"], r["mean_frac_of_top"]) for r in query(con, f"""
        SELECT run, sae, generator, count(generated_sensitivity) AS features, avg(mean_frac_of_top) AS mean_frac_of_top
        FROM feature_stats {where} GROUP BY ALL""", params).to_pylist()}
    rows: dict[tuple[str, str, str], dict[str, object]] = {}
    for r in long:
        key = (r["run"], r["sae"], r["generator"])
        n, mean_frac = frac.get(key, (0, None))
        row = rows.setdefault(key, {"run": key[0], "sae": key[1], "generator": key[2], "features": n,
                                    "small_n": bool(n < SMALL_N), "mean_frac_of_top": mean_frac})
        name = "sens " + r["level"]
        row[name] = r["sensitivity"]
        # numbers, never a "[low, high]" string: CSV, JSON and Parquet readers get floats (NULL: none)
        row[name + " lo"] = r["sensitivity_low"]
        row[name + " hi"] = r["sensitivity_high"]
    columns: list[str] = []
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    return pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows.values()])


def apply_min_original(con: duckdb.DuckDBPyConnection, min_original: float, by: Sequence[str] = ()) -> pa.Table:
    """Keep only features with ``original_sensitivity >= min_original`` in the ``feature_stats`` view
    (features whose originals were not scored are dropped too: they cannot pass). Returns per run ×
    SAE, or per the summary's ``by`` keys (width, architecture, ...: so a trend across them can be read
    against how many features the filter removed from each): features before, kept, lost, and the
    share lost. A feature counts once whatever its generators (its originals are the same for all)."""
    if not 0 <= min_original <= 1:
        raise UsageError(f"--min-original-sensitivity must be in [0, 1], got {min_original:g}", "e.g. 0.9")
    (view_sql,) = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'feature_stats'").fetchone() or (None,)
    if view_sql is None:
        raise UsageError("no feature_stats view to filter")
    renamed, n = re.subn(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?VIEW\s+\"?feature_stats\"?\s",
                         "CREATE OR REPLACE VIEW _feature_stats_all ", view_sql, count=1, flags=re.I)
    if not n:
        raise RuntimeError(f"unexpected view definition: {view_sql[:80]}")
    con.execute(renamed)
    con.execute(f"""CREATE OR REPLACE VIEW feature_stats AS
        SELECT * FROM _feature_stats_all WHERE original_sensitivity >= {float(min_original)!r}""")
    # one definition of the kept features for every table a report prints: the judge's verdicts and
    # the human labels are over the same features as the summary
    for name in ("judgments", "labels"):
        found = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name]).fetchall()
        if not found:
            continue
        sql = found[0][0]
        con.execute(re.sub(r"^\s*CREATE\s+(OR\s+REPLACE\s+)?VIEW\s+\"?" + name + r"\"?\s",
                           f"CREATE OR REPLACE VIEW _{name}_all ", sql, count=1, flags=re.I))
        con.execute(f"""CREATE OR REPLACE VIEW {name} AS
            SELECT * FROM _{name}_all x WHERE EXISTS (SELECT 1 FROM feature_stats f
                WHERE f.run = x.run AND f.sae = x.sae AND f.feature_index = x.feature_index)""")
    from .summary import _keys

    keys = [k for k in (_keys(by) if by else ("run", "sae")) if k != "generator"] or ["run", "sae"]
    cols = ", ".join(f"p.{k}" if k in ("run", "sae") else f"s.{k}" for k in keys)
    return query(con, f"""
        WITH per_feature AS (
            SELECT run, sae, feature_index, bool_and(coalesce(original_sensitivity >= {float(min_original)!r}, false)) AS kept
            FROM _feature_stats_all WHERE NOT {REFERENCE_SQL} GROUP BY ALL
        )
        SELECT {cols}, count(*) AS features, count(*) FILTER (WHERE kept) AS kept,
            count(*) FILTER (WHERE NOT kept) AS lost, avg((NOT kept)::DOUBLE) AS share_lost
        FROM per_feature p LEFT JOIN saes s USING (run, sae) GROUP BY ALL ORDER BY ALL
    """)


def write_threshold_plot(con: duckdb.DuckDBPyConnection, path: str | Path, *,
                         generators: Sequence[str] | None = None, n_resamples: int = N_RESAMPLES,
                         seed: int = 0) -> Path:
    """Mean sensitivity against the threshold (absolute, then relative levels in increasing order) as
    small multiples: one panel per run × SAE, one line per generator in it (offset a little along x so
    interval bars do not stack), shared axes, one legend below the panels, outside the data."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long = threshold_levels(con, generators, n_resamples=n_resamples, seed=seed).to_pylist()
    levels: list[tuple[float, str]] = sorted({(-1.0 if r["relative"] is None else r["relative"], r["level"])
                                              for r in long})
    x_of = {label: i for i, (_, label) in enumerate(levels)}
    several_runs = len({x["run"] for x in long}) > 1
    panels: dict[str, dict[str, list[dict[str, object]]]] = {}
    for r in long:
        panel = f"{r['run']}/{r['sae']}" if several_runs else str(r["sae"])
        panels.setdefault(panel, {}).setdefault(str(r["generator"] or "(all)"), []).append(r)
    gens = sorted({g for lines in panels.values() for g in lines})
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(gens)}
    n = max(len(panels), 1)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows + 0.9), dpi=150, sharex=True,
                             sharey=True, squeeze=False)
    width = 0.5  # the generators of a panel spread over half a level's step
    for ax, (panel, lines) in zip(axes.flat, sorted(panels.items()), strict=False):
        for k, g in enumerate(sorted(lines)):
            rows = sorted((r for r in lines[g] if r["sensitivity"] is not None), key=lambda r: x_of[str(r["level"])])
            shift = (k - (len(lines) - 1) / 2) * (width / max(len(lines), 1))
            xs = [x_of[str(r["level"])] + shift for r in rows]
            ys = np.array([r["sensitivity"] for r in rows], dtype=float)
            lo = np.array([r["sensitivity_low"] for r in rows], dtype=float)
            hi = np.array([r["sensitivity_high"] for r in rows], dtype=float)
            ax.errorbar(xs, ys, yerr=[np.clip(np.nan_to_num(ys - lo), 0, None), np.clip(np.nan_to_num(hi - ys), 0, None)],
                        marker="o", markersize=3, capsize=2, linewidth=1, color=colours[g], label=g)
        ax.set_title(panel, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(panels)]):
        ax.set_xticks(range(len(levels)), [label for _, label in levels], fontsize=8)
        if i + ncols >= len(panels):  # the lowest panel of its column: its ticks and the axis label
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("threshold (absolute, then of top act.)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("mean sensitivity", fontsize=9)
    handles = [plt.Line2D([], [], color=colours[g], marker="o", linewidth=1) for g in gens]
    fig.legend(handles, gens, loc="lower center", ncol=min(len(gens), 3), fontsize=8, frameon=False)
    fig.suptitle("Sensitivity vs threshold (95% intervals over features)", fontsize=10)
    legend_rows = math.ceil(len(gens) / 3)
    fig.tight_layout(rect=(0, 0.02 + 0.05 * legend_rows / nrows, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def threshold_plot_path(path: Path) -> Path:
    """Where ``report --plot F.png`` puts the threshold curve: ``F_thresholds.png``."""
    return path.with_name(f"{path.stem}_thresholds{path.suffix}")


def _has_rows(con: duckdb.DuckDBPyConnection, view: str) -> bool:
    try:
        return bool(con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0])
    except duckdb.Error:  # a view this store's connection does not define
        return False


def judge_summary(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                  n_resamples: int = N_RESAMPLES, seed: int = 0) -> pa.Table:
    """Per run × SAE × generator × judge, means over features with 95% intervals: sensitivity over
    every judged text, sensitivity over the texts the judge called valid (direct check), the share
    called valid, and the indistinguishable rate (share of blind pairs where the judge took the
    generated text for the real one; 0.5 = it cannot tell). Unparsed answers count nowhere."""
    where, params = _generator_where(generators, "AND")
    sql = f"""
        WITH texts AS (
            SELECT DISTINCT run, sae, generator, judge, feature_index, sample_index FROM judgments
            WHERE true {where}
        ),
        direct AS (
            SELECT run, sae, generator, judge, feature_index, sample_index, any_value(valid) AS valid
            FROM judgments WHERE task = 'direct' AND status = 'ok' GROUP BY ALL
        ),
        gen AS (
            SELECT run, sae, generator, feature_index, sample_index, any_value(active) AS active
            FROM scores WHERE source = 'generated' AND NOT empty GROUP BY ALL
        ),
        per_feature AS (
            SELECT t.run, t.sae, t.generator, t.judge, t.feature_index,
                avg(g.active::DOUBLE) AS sens_all,
                avg(g.active::DOUBLE) FILTER (WHERE d.valid) AS sens_valid,
                avg(d.valid::DOUBLE) AS valid_share
            FROM texts t
            LEFT JOIN gen g USING (run, sae, generator, feature_index, sample_index)
            LEFT JOIN direct d USING (run, sae, generator, judge, feature_index, sample_index)
            GROUP BY ALL
        ),
        pairs AS (
            SELECT run, sae, generator, judge, feature_index, avg((NOT correct)::DOUBLE) AS indistinguishable,
                count(*) AS n_pairs
            FROM judgments WHERE task = 'pair' AND status = 'ok' GROUP BY ALL
        )
        SELECT run, sae, generator, judge, count(*) AS features,
            avg(sens_all) AS sensitivity, list(sens_all) FILTER (WHERE sens_all IS NOT NULL) AS _v1,
            avg(sens_valid) AS sensitivity_valid, list(sens_valid) FILTER (WHERE sens_valid IS NOT NULL) AS _v2,
            avg(valid_share) AS valid_share, list(valid_share) FILTER (WHERE valid_share IS NOT NULL) AS _v3,
            avg(indistinguishable) AS indistinguishable,
            list(indistinguishable) FILTER (WHERE indistinguishable IS NOT NULL) AS _v4,
            coalesce(sum(n_pairs), 0)::BIGINT AS pairs
        FROM per_feature LEFT JOIN pairs USING (run, sae, generator, judge, feature_index)
        GROUP BY ALL ORDER BY run, sae, generator, judge
    """
    table = query(con, sql, params)
    for values, mean in (("_v1", "sensitivity"), ("_v2", "sensitivity_valid"), ("_v3", "valid_share"),
                         ("_v4", "indistinguishable")):
        table = with_intervals(table, values, mean, n_resamples=n_resamples, seed=seed)
    return _flag_small(table, "pairs")


def _flag_small(table: pa.Table, count: str) -> pa.Table:
    """``small_n``: the row's means are over fewer than ``SMALL_N`` features, or its ``count`` (pairs,
    labels) is under ``SMALL_N``: wide intervals that say little (``validity_warnings``)."""
    feats = np.asarray(table.column("features").to_pylist(), dtype=float)
    n = np.asarray([x or 0 for x in table.column(count).to_pylist()], dtype=float)
    return table.append_column("small_n", pa.array((feats < SMALL_N) | ((n > 0) & (n < SMALL_N)), pa.bool_()))


def validity_warnings(name: str, table: pa.Table) -> list[str]:
    """One line when rows of a validity table (``name``: judge, labels) are flagged ``small_n``."""
    if "small_n" not in table.column_names:
        return []
    k = sum(bool(x) for x in table.column("small_n").to_pylist())
    if not k:
        return []
    return [f"{k} row(s) of the {name} table over fewer than {SMALL_N} features or pairs (column small_n): "
            "their intervals are wide and say little; read those rows as descriptive"]


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (None without items, or when chance
    agreement is already 1: both always gave the one same label)."""
    if not a or len(a) != len(b):
        return None
    labels = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    expected = sum((a.count(k) / n) * (b.count(k) / n) for k in labels)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def label_summary(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                  n_resamples: int = N_RESAMPLES, seed: int = 0) -> pa.Table:
    """Per run × SAE × generator (× judge, where the judge answered the same pairs): raters, answered
    pairs (skips left out), human accuracy and human indistinguishable rate (per-feature shares over
    every rater's answers, then their mean over features, with 95% intervals), and the human vs judge
    agreement (pooled share of matched pairs) and Cohen's kappa on the pairs both answered: ``kappa``
    pools every rater's answers as one set of items, ``kappa_per_rater`` is the mean of each rater's
    own kappa. ``trial`` says whether the generator's texts were generated or the corpus control's
    real texts (calibration trials: both sides real, accuracy 0.5 expected)."""
    where, params = _generator_where(generators, "AND")
    sql = f"""
        WITH l AS (SELECT * FROM labels WHERE answer IN ('A', 'B') {where}),
        per_feature AS (
            SELECT run, sae, generator, feature_index, avg(correct::DOUBLE) AS accuracy,
                avg((NOT correct)::DOUBLE) AS indistinguishable
            FROM l GROUP BY ALL
        )
        SELECT run, sae, generator,
            CASE WHEN {CONTROL_SQL} THEN 'calibration (real vs real)' ELSE 'generated vs real' END AS trial,
            (SELECT count(DISTINCT rater) FROM l WHERE l.run = p.run AND l.sae = p.sae AND l.generator = p.generator)
                AS raters,
            (SELECT count(*) FROM l WHERE l.run = p.run AND l.sae = p.sae AND l.generator = p.generator) AS labels,
            count(*) AS features,
            avg(accuracy) AS accuracy, list(accuracy) AS _v1,
            avg(indistinguishable) AS indistinguishable, list(indistinguishable) AS _v2
        FROM per_feature p GROUP BY ALL ORDER BY run, sae, generator
    """
    table = query(con, sql, params)
    for values, mean in (("_v1", "accuracy"), ("_v2", "indistinguishable")):
        table = with_intervals(table, values, mean, n_resamples=n_resamples, seed=seed)
    matched = query(con, f"""
        SELECT l.run, l.sae, l.generator, j.judge, l.rater, l.answer AS human, j.answer AS judge_answer
        FROM labels l JOIN judgments j ON j.task = 'pair' AND j.status = 'ok' AND l.run = j.run AND l.sae = j.sae
            AND l.generator = j.generator AND l.feature_index = j.feature_index AND l.sample_index = j.sample_index
            AND l.real_example = j.real_example AND l.real_position = j.real_position
        WHERE l.answer IN ('A', 'B') {where.replace('generator', 'l.generator')}
    """, params).to_pylist() if _has_rows(con, "judgments") else []
    pairs: dict[tuple[str, str, str], dict[str | None, tuple[list[str], list[str], list[str]]]] = {}
    for m in matched:
        h, j, who = pairs.setdefault((m["run"], m["sae"], m["generator"]), {}).setdefault(m["judge"], ([], [], []))
        h.append(m["human"])
        j.append(m["judge_answer"])
        who.append(m["rater"])
    rows = []
    for r in table.to_pylist():
        judges = pairs.get((r["run"], r["sae"], r["generator"])) or {None: ([], [], [])}
        for judge, (h, j, who) in sorted(judges.items(), key=lambda kv: kv[0] or ""):
            # pooled: every rater's answers against the judge's as one set of items; per rater: each
            # rater's own kappa, then their mean (raters whose kappa is undefined left out)
            each = [cohen_kappa([x for x, w in zip(h, who, strict=True) if w == rater],
                                [y for y, w in zip(j, who, strict=True) if w == rater]) for rater in sorted(set(who))]
            defined = [k for k in each if k is not None]
            rows.append({**r, "judge": judge, "matched": len(h),
                         "agreement": sum(x == y for x, y in zip(h, j, strict=True)) / len(h) if h else None,
                         "kappa": cohen_kappa(h, j),
                         "kappa_per_rater": sum(defined) / len(defined) if defined else None})
    return _flag_small(pa.Table.from_pylist(rows) if rows else table, "labels")


def validity_tables(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                    n_resamples: int = N_RESAMPLES, seed: int = 0) -> list[tuple[str, pa.Table]]:
    """The validity tables that have data, titled: the judge's summary, then the human labels'."""
    out = []
    if _has_rows(con, "judgments"):
        out.append(("LLM judge: sensitivity over valid texts, valid share, indistinguishable rate (0.5 = cannot tell)",
                    judge_summary(con, generators, n_resamples=n_resamples, seed=seed)))
    if _has_rows(con, "labels"):
        out.append(("human labels: accuracy, indistinguishable rate, agreement with the judge (Cohen's kappa)",
                    label_summary(con, generators, n_resamples=n_resamples, seed=seed)))
    return out
