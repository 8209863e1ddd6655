"""``report --specificity``: the precision-side evidence beside each sensitivity, per run × SAE × generator.

A sensitivity alone rewards dense features and token detectors. For every generator whose texts are
meant to show the pattern (role positive, and the ``corpus:`` control) this gives, as means over
features with a 95% interval each (as in the main summary): the sensitivity, the base rate
(``baseline:`` passages), the lift (sensitivity - base rate), the specificity (share of that
generator's near-miss negatives that stay silent), the injection rate (``inject:``) and the AUROC,
plus how many features are dense. A column is empty where its control was not generated.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from ..schemas import ROLE_SQL
from .intervals import mean_ci
from .summary import N_RESAMPLES, SMALL_N
from .views import query

METRICS = ("sensitivity", "base_rate", "lift", "specificity", "injection_rate", "auroc")
_SOURCE = {"sensitivity": "generated_sensitivity"}  # metric -> feature_stats column, where they differ


def specificity_summary(con: duckdb.DuckDBPyConnection, generators: Sequence[str] | None = None, *,
                        n_resamples: int = N_RESAMPLES, seed: int = 0) -> pa.Table:
    """One row per run × SAE × positive or control generator: features, then per metric its mean over
    features and ``<metric>_low`` / ``<metric>_high``, then the dense features and the sample counts."""
    where = f"AND generator IN ({', '.join('?' for _ in generators)})" if generators else ""
    lists = ", ".join(f"list({_SOURCE.get(m, m)}) FILTER (WHERE {_SOURCE.get(m, m)} IS NOT NULL "
                      f"AND generated_sensitivity IS NOT NULL) AS {m}" for m in METRICS)
    table = query(con, f"""
        SELECT run, sae, generator, {ROLE_SQL} AS role, count(generated_sensitivity) AS features, {lists},
            count(*) FILTER (WHERE dense AND generated_sensitivity IS NOT NULL) AS dense,
            max(n_base) AS n_base, max(n_negative) AS n_negative, max(n_injected) AS n_injected
        FROM feature_stats WHERE ({ROLE_SQL}) IN ('positive', 'control') {where}
        GROUP BY ALL ORDER BY run, sae, role DESC, generator
    """, list(generators or ()))
    columns: dict[str, pa.Array | pa.ChunkedArray] = {c: table.column(c) for c in ("run", "sae", "generator", "role",
                                                                                    "features")}
    for m in METRICS:
        col = table.column(m).combine_chunks()
        lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        codes = np.repeat(np.arange(table.num_rows), lengths)
        sums = np.bincount(codes, weights=flat, minlength=table.num_rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(lengths > 0, sums / np.maximum(lengths, 1), np.nan)
        low, high = mean_ci(codes, flat, table.num_rows)
        for name, values in ((m, mean), (f"{m}_low", low), (f"{m}_high", high)):
            columns[name] = pa.array(values, pa.float64(), from_pandas=True)  # NaN (none) -> NULL
    for c in ("dense", "n_base", "n_negative", "n_injected"):
        columns[c] = table.column(c)
    feats = np.asarray(table.column("features").to_pylist(), dtype=float)
    columns["small_n"] = pa.array(feats < SMALL_N, pa.bool_())  # wide intervals: see summary_warnings
    return pa.table(columns)
