"""The numbers a researcher reads: sensitivity per SAE (or regrouped), intervals, comparisons.

Aggregation happens in DuckDB; intervals run in numpy over all groups at once. A row's mean over
features gets ``intervals.mean_ci`` (analytic, honest over few features); the difference of two
SAEs' means gets a bootstrap interval and a permutation test (``difference_test``).

Bootstrap intervals (``bootstrap_mean_ci``) are percentile intervals of the mean over features resampled with
replacement. A resampled sum of n values is a sum of n independent draws from the group's
distinct values, so where those values lie on a lattice (sensitivities are k / n_samples, so they
always do) its distribution is the n-fold convolution of one draw's, computed exactly with one
FFT: the interval is the limit of infinitely many resamples, with no Monte Carlo noise. Other
values fall back to ``n_resamples`` seeded resamples, drawn as multinomial counts per distinct
value (the same distribution as resampling indices, at a cost independent of n).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UsageError
from ..schemas import CONTROL_SQL, REFERENCE_SQL, is_control
from .intervals import mean_ci
from .keys import GROUP_KEYS, N_RESAMPLES
from .views import query

DEFAULT_KEYS = ("run", "sae", "generator")
DESCRIBE = ("model", "width", "architecture", "sparsity")  # shown next to the default per-SAE keys
MAX_DENOMINATOR = 64  # values k / d with d up to this use the exact path
SMALL_N = 5  # intervals over fewer features than this are flagged (column small_n and a warning)


def _distinct_counts(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present groups, counts [G, K], distinct values [G, K]), zero-padded to the largest K."""
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order]
    starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (v[1:] != v[:-1])])
    counts = np.diff(np.r_[starts, g.size])
    ug, uv = g[starts], v[starts]
    first = np.flatnonzero(np.r_[True, ug[1:] != ug[:-1]])  # first distinct value of each group
    sizes = np.diff(np.r_[first, ug.size])
    k_of: np.ndarray = np.arange(ug.size) - np.repeat(first, sizes)
    gi = np.repeat(np.arange(first.size), sizes)
    cnt = np.zeros((first.size, int(sizes.max())))
    val = np.zeros_like(cnt)
    cnt[gi, k_of] = counts
    val[gi, k_of] = uv
    return ug[first], cnt, val


def _lattice_step(cnt: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Per group, the smallest d <= MAX_DENOMINATOR with every value a multiple of 1/d (0: none)."""
    d = np.arange(1, MAX_DENOMINATOR + 1)
    scaled = val[:, :, None] * d
    fits = ((np.abs(scaled - np.round(scaled)) < 1e-9) | (cnt[:, :, None] == 0)).all(axis=1)
    return np.where(fits.any(axis=1), d[fits.argmax(axis=1)], 0)


def _exact(cnt: np.ndarray, val: np.ndarray, den: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles of the exact bootstrap distribution of the mean, for groups on a lattice 1/den."""
    n = cnt.sum(axis=1)
    base = np.where(cnt > 0, val, np.inf).min(axis=1)
    steps = np.where(cnt > 0, np.round((val - base[:, None]) * den[:, None]), 0)
    mean = (cnt * steps).sum(axis=1)  # of the resampled sum, in lattice steps
    # Bernstein: a sum of n draws in [0, A] with variance v each is further than t from its mean
    # with probability <= 2 exp(-t^2 / (2 (n v + A t / 3))); at t = reach that is < 1e-12, so a
    # circular FFT of twice that width loses nothing to wrap-around.
    span = steps.max(axis=1)
    var = (cnt * (steps - (mean / n)[:, None]) ** 2).sum(axis=1)  # n v
    log_p = np.log(2e12)
    t = (2 * log_p * span / 3 + np.sqrt((2 * log_p * span / 3) ** 2 + 8 * log_p * var)) / 2
    reach = np.minimum(np.ceil(t), n * span) + 1
    size = 1 << np.ceil(np.log2(2 * reach + 1)).astype(np.int64)
    low, high = np.empty(n.size), np.empty(n.size)
    for p in np.unique(size):  # groups of one FFT length at a time, to bound memory
        rows = np.flatnonzero(size == p)
        one = np.zeros((rows.size, p))
        np.add.at(one, (np.repeat(np.arange(rows.size), cnt.shape[1]), steps[rows].astype(np.int64).ravel() % p),
                  (cnt[rows] / n[rows, None]).ravel())
        pmf = np.fft.irfft(np.fft.rfft(one, axis=1) ** n[rows, None], n=p, axis=1)
        start = np.round(mean[rows]).astype(np.int64) - p // 2  # the window of sums, in order
        cdf = np.cumsum(np.take_along_axis(pmf, (start[:, None] + np.arange(p)) % p, axis=1), axis=1)
        scale = den[rows] * n[rows]
        low[rows] = base[rows] + (start + (cdf < alpha - 1e-9).sum(axis=1)) / scale
        high[rows] = base[rows] + (start + (cdf < 1 - alpha - 1e-9).sum(axis=1)) / scale
    return low, high


def _resampled(cnt: np.ndarray, val: np.ndarray, alpha: float, n_resamples: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles of ``n_resamples`` bootstrap means per group, drawn as multinomial counts."""
    n = cnt.sum(axis=1)
    # a multinomial draw as a chain of binomials, vectorised over resamples × groups
    # (numpy's multinomial loops per row and is several times slower)
    remaining = np.broadcast_to(n.astype(np.int64), (n_resamples, n.size)).copy()
    left = n.copy()  # features not yet assigned to a value, per group
    total = np.zeros((n_resamples, n.size))
    for k in range(cnt.shape[1] - 1):
        x = rng.binomial(remaining, np.divide(cnt[:, k], left, out=np.zeros(n.size), where=left > 0))
        total += x * val[:, k]
        remaining -= x
        left -= cnt[:, k]
    total += remaining * val[:, -1]
    low, high = np.quantile(total / n, [alpha, 1 - alpha], axis=0)
    return low, high


def bootstrap_mean_ci(
    groups: np.ndarray,
    values: np.ndarray,
    n_groups: int | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
    exact: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean of ``values`` within each group.

    ``groups[i]`` is the group code (0..n_groups-1) of ``values[i]``. Returns (low, high) arrays of
    length ``n_groups``; NaN for a group without values. Groups whose values lie on a lattice get
    the exact bootstrap distribution (unless ``exact=False``); the others ``n_resamples`` resamples
    seeded by ``seed`` and the group's own values, so a group's interval does not depend on which
    other groups share the call. Both are reproducible.
    """
    groups = np.asarray(groups, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    n_groups = int(groups.max(initial=-1)) + 1 if n_groups is None else n_groups
    low = np.full(n_groups, np.nan)
    high = np.full(n_groups, np.nan)
    if values.size == 0:
        return low, high
    present, cnt, val = _distinct_counts(groups, values)
    alpha = (1.0 - confidence) / 2
    den = _lattice_step(cnt, val) if exact else np.zeros(present.size, np.int64)
    fast = den > 0
    if fast.any():
        low[present[fast]], high[present[fast]] = _exact(cnt[fast], val[fast], den[fast], alpha)
    for g in np.flatnonzero(~fast):
        # seeded by the group's own values: its interval is the same alone or among any other groups
        k = int((cnt[g] > 0).sum())  # its own distinct values, without the padding other groups need
        digest = zlib.crc32(np.ascontiguousarray(np.r_[cnt[g, :k], val[g, :k]]).tobytes())
        rng = np.random.default_rng([seed, digest])
        lo, hi = _resampled(cnt[g:g + 1, :k], val[g:g + 1, :k], alpha, n_resamples, rng)
        low[present[g]], high[present[g]] = lo[0], hi[0]
    return low, high


def _keys(by: Sequence[str]) -> list[str]:
    keys = list(dict.fromkeys(by)) or list(DEFAULT_KEYS)
    bad = [k for k in keys if k not in GROUP_KEYS]
    if bad:
        import difflib

        close = difflib.get_close_matches(bad[0], GROUP_KEYS, n=1)
        hint = f"did you mean --by {close[0]}? " if close else ""
        raise UsageError(f"cannot group by {', '.join(bad)}", f"{hint}use --by with one of {', '.join(GROUP_KEYS)}")
    return keys


# A generated sample that looks like the generator's preamble rather than a text with the pattern:
# it opens with an assent ("Sure", "Certainly", "OK"), announces samples ("Here are 11 samples that
# match…", "Below are the texts"), or is one short line ending with a colon. A heuristic: it reads
# the text's opening only, and flags, never drops. The same RE2/Python pattern runs in DuckDB.
PREAMBLE_PATTERN = (
    r"(?i)^\W*(?:(?:sure|certainly|of course|okay|ok)\b"
    r"|[^\n]{0,80}\b(?:here (?:are|is)|below (?:are|is)|the following)\b[^\n]{0,80}"
    r"\b(?:samples?|examples?|texts?|sentences?|passages?|paragraphs?)\b"
    r"|[^\n]{0,100}:\s*$)"
)


def looks_like_preamble(text: str | None) -> bool:
    """Whether a generated sample looks like preamble rather than text (see ``PREAMBLE_PATTERN``)."""
    import re

    return bool(text) and re.search(PREAMBLE_PATTERN, text or "") is not None


def per_feature_sql(where: str = "", *, references: bool = False) -> str:
    """One row per run × SAE × generator × feature: feature_stats with the SAE's description, the
    generator's parse method for the feature (``parse_method``; ``fallback_parse`` when the answer
    ignored the separator) and the number of its samples that look like preamble. Takes the
    ``PREAMBLE_PATTERN`` as its first parameter. The base-rate, injection and negatives generators
    (``schemas.role_of``) are left out unless ``references``: they are evidence beside a
    sensitivity (``report --specificity``), never one."""
    if not references:
        keep = f"NOT {REFERENCE_SQL.replace('generator', 'f.generator')}"
        where = f"{where} AND {keep}" if where.strip() else f"WHERE {keep}"
    return f"""
        SELECT f.*, s.model, s.width, s.architecture, s.sparsity, s.layer,
               q.parse_method, coalesce(q.fallback_parse, false) AS fallback_parse,
               coalesce(p.preamble_samples, 0) AS preamble_samples
        FROM feature_stats f LEFT JOIN saes s USING (run, sae)
        LEFT JOIN (SELECT run, sae, generator, feature_index,
                          string_agg(DISTINCT parse_method, ',' ORDER BY parse_method) AS parse_method,
                          bool_or(parse_method NOT IN ('separator', 'table', 'corpus', 'baseline', 'inject')) AS fallback_parse
                   FROM queries WHERE status <> 'error' GROUP BY ALL) q
            USING (run, sae, generator, feature_index)
        LEFT JOIN (SELECT run, sae, generator, feature_index,
                          count(*) FILTER (WHERE regexp_matches(text, $1)) AS preamble_samples
                   FROM generations GROUP BY ALL) p
            USING (run, sae, generator, feature_index)
        {where}
    """


def summarize(
    con: duckdb.DuckDBPyConnection,
    by: Sequence[str] = (),
    *,
    generators: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pa.Table:
    """Per run × SAE × generator (or per ``by`` keys): features scored, mean generated sensitivity
    with a 95% interval over features (intervals.mean_ci), mean original sensitivity (re-tokenised text and
    exact window), share of features below 0.5, the fewest and most samples per feature (``n_min``,
    ``n_max``), features whose generator ignored the separator (``fallback_parse``), samples that
    look like preamble, the corpus control's mean over the same features (``control_sensitivity``,
    ``control_features``), and what the SAE is (model, width, ...).

    Grouped summaries (``by``) pool features, and count each feature of an SAE once: where a group
    holds several rows of one feature (several generators, or runs, not among the keys), the
    feature's sensitivities are averaged first (``generators`` says how many were in the group).

    The corpus control (``corpus:`` generators) is never one of those: it has no row of its own
    beside an LLM or imported generator, it enters no mean or interval of theirs, and its
    sensitivity on each row's features is the ``control_sensitivity`` column. A run × SAE scored
    only by the control keeps a row (the control's label, no ``sensitivity``). Every figure of a
    row (original sensitivities included) is over the features with a generated sensitivity.
    ``generators`` filters the generators; the control column is shown whatever it names (a control
    row only when it names the control).
    """
    keys = _keys(by)
    default = keys == list(DEFAULT_KEYS)
    shown = keys + [d for d in DESCRIBE if d not in keys] if default else keys
    # $1 is the preamble pattern; a generator filter applies to generators, never to the control beside them
    marks = ", ".join(f"${2 + i}" for i in range(len(generators or ())))
    chosen = f"AND p.generator IN ({marks})" if generators else ""
    params = list(generators or ())
    # the unit: one feature of one SAE (per the keys too); rows of it not told apart by the keys are averaged
    unit = list(dict.fromkeys([*keys, "sae", "feature_index"]))
    extra = [d for d in shown if d not in keys]  # constant within a default group: any_value picks it
    ctl = CONTROL_SQL.replace("generator", "p.generator")

    def over_scored(expr: str) -> str:
        # over the features with a generated sensitivity; a control-only group over its own features
        return f"CASE WHEN count(gs) > 0 THEN {expr} FILTER (WHERE gs IS NOT NULL) ELSE {expr} END"

    sql = f"""
        WITH per AS ({per_feature_sql()}),
        ctl AS (
            SELECT run, sae, feature_index, avg(generated_sensitivity) AS cs
            FROM per p WHERE {ctl} GROUP BY ALL
        ),
        scored AS (
            SELECT p.*, c.cs FROM per p LEFT JOIN ctl c USING (run, sae, feature_index)
            WHERE NOT {ctl} {chosen}
            UNION ALL BY NAME
            SELECT p.* REPLACE (NULL::DOUBLE AS generated_sensitivity), p.generated_sensitivity AS cs
            FROM per p WHERE {ctl} {chosen} AND NOT EXISTS (
                SELECT 1 FROM per q WHERE q.run = p.run AND q.sae = p.sae
                    AND NOT {CONTROL_SQL.replace("generator", "q.generator")} {chosen.replace("p.", "q.")})
        ),
        units AS (
            SELECT {', '.join(unit)}{''.join(f', any_value({d}) AS {d}' for d in extra)},
                avg(generated_sensitivity) AS gs, avg(original_sensitivity) AS os,
                avg(original_sensitivity_window) AS ow, avg(cs) AS cs,
                min(n_generated) FILTER (WHERE generated_sensitivity IS NOT NULL) AS n_min,
                max(n_generated) FILTER (WHERE generated_sensitivity IS NOT NULL) AS n_max,
                bool_or(fallback_parse) AS fallback_parse, sum(preamble_samples) AS preamble_samples,
                list(DISTINCT generator) FILTER (WHERE NOT {CONTROL_SQL}) AS gens
            FROM scored GROUP BY {', '.join(unit)}
        )
        SELECT {', '.join(keys)}{''.join(f', any_value({d}) AS {d}' for d in extra)},
            {'' if default else 'count(DISTINCT sae) AS saes, '}
            {'' if 'generator' in keys else 'len(list_distinct(flatten(list(gens)))) AS generators, '}
            count(gs) AS features,
            avg(gs) AS sensitivity,
            {over_scored('avg(cs)')} AS control_sensitivity,
            {over_scored('count(cs)')} AS control_features,
            {over_scored('avg(os)')} AS original_sensitivity,
            {over_scored('avg(ow)')} AS original_sensitivity_window,
            avg((gs < 0.5)::DOUBLE) AS share_below_half,
            min(n_min) AS n_min, max(n_max) AS n_max,
            count(*) FILTER (WHERE fallback_parse) AS fallback_parse,
            sum(preamble_samples)::BIGINT AS preamble_samples,
            list(gs) FILTER (WHERE gs IS NOT NULL) AS _values
        FROM units GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}
    """
    table = query(con, sql, [PREAMBLE_PATTERN, *params])
    values = table.column("_values").combine_chunks()
    lengths = values.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    flat = values.flatten().to_numpy(zero_copy_only=False)
    codes = np.repeat(np.arange(table.num_rows), lengths)
    low, high = mean_ci(codes, flat, table.num_rows)
    table = table.drop_columns(["_values"])
    at = table.column_names.index("sensitivity") + 1
    low_col, high_col = (pa.array(x, from_pandas=True) for x in (low, high))  # NaN (no features) -> NULL
    table = table.add_column(at, "ci_low", low_col).add_column(at + 1, "ci_high", high_col)
    n_feat = table.column("features").to_numpy(zero_copy_only=False)
    # an interval over few features is wide (intervals.mean_ci): said in a column and a warning
    table = table.add_column(at + 2, "small_n", pa.array((n_feat > 0) & (n_feat < SMALL_N)))
    return table.select([c for c in shown if c in table.column_names]
                        + [c for c in table.column_names if c not in shown])


def summary_warnings(table: pa.Table) -> list[str]:
    """What a reader must know before comparing the rows of a summary: rows over different numbers of
    features or of samples per feature, features averaged over several generators, preamble samples."""
    rows = table.to_pylist()
    out = []
    feats = sorted({r["features"] for r in rows if r.get("features")})
    if len(feats) > 1:
        out.append(f"rows compare different numbers of features ({feats[0]} to {feats[-1]})")
    small = [r for r in rows if r.get("small_n")]
    if small:
        out.append(f"{len(small)} row(s) over fewer than {SMALL_N} features (column small_n): their intervals "
                   "are wide (all of [0, 1] over one feature) and say little; read those rows as descriptive")
    n_lo = [r["n_min"] for r in rows if r.get("n_min") is not None]
    n_hi = [r["n_max"] for r in rows if r.get("n_max") is not None]
    if n_lo and min(n_lo) != max(n_hi):
        out.append(f"features have different numbers of generated samples (n = {min(n_lo)} to {max(n_hi)}; "
                   "columns n_min, n_max): sensitivities of small n are coarse")
    if any((r.get("generators") or 0) > 1 for r in rows):
        out.append("each feature is counted once per row: where several generators (or runs) scored it, "
                   "its sensitivity is their mean (--by generator shows them apart)")
    pre = sum(r.get("preamble_samples") or 0 for r in rows)
    if pre:
        out.append(f"{pre} generated samples look like preamble rather than text (column preamble_samples); "
                   "they were scored as samples")
    return out


@dataclass
class Comparison:
    dimension: str  # sae | generator | run
    a: str
    b: str
    rows: pa.Table  # SAEs: per side and their difference; else per shared feature: a, b, diff (b - a)
    summary: str
    warnings: list[str] = field(default_factory=list)


def _dimension(con: duckdb.DuckDBPyConnection, a: str, b: str) -> str:
    for dim in ("sae", "generator", "run"):
        found = {r[0] for r in con.execute(
            f"SELECT DISTINCT {dim} FROM feature_stats WHERE {dim} IN (?, ?)", [a, b]).fetchall()}
        if found == {a, b}:
            return dim
    known = {dim: [r[0] for r in con.execute(f"SELECT DISTINCT {dim} FROM feature_stats ORDER BY 1").fetchall()]
             for dim in ("sae", "generator")}
    raise UsageError(
        f"cannot compare {a!r} with {b!r}: they are not two SAEs, two generators or two runs with scores",
        f"SAEs: {', '.join(known['sae']) or 'none'}; generators: {', '.join(known['generator']) or 'none'}",
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def difference_test(a: np.ndarray, b: np.ndarray, *, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> tuple[float, float, float, float]:
    """(mean(b) - mean(a), its 95% bootstrap interval, two-sided permutation p-value).

    The interval resamples each side's features independently; the p-value is the share of
    ``n_resamples`` random relabellings of the pooled features whose |difference| is at least the
    observed one, counting the observed labelling (so it is never 0).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not a.size or not b.size:
        return (float("nan"),) * 4  # type: ignore[return-value]
    rng = np.random.default_rng(seed)
    observed = float(b.mean() - a.mean())
    boot = rng.choice(b, (n_resamples, b.size)).mean(axis=1) - rng.choice(a, (n_resamples, a.size)).mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    perm = rng.permuted(np.tile(np.concatenate([a, b]), (n_resamples, 1)), axis=1)
    diffs = perm[:, a.size:].mean(axis=1) - perm[:, :a.size].mean(axis=1)
    p = (1 + int((np.abs(diffs) >= abs(observed) - 1e-12).sum())) / (n_resamples + 1)
    return observed, float(low), float(high), p


def _least(ns: list[Any]) -> Any:
    """The smallest known denominator (a table imported without ``n_generated`` has none)."""
    known = [n for n in ns if n is not None]
    return min(known) if known else None


def _most(ns: list[Any]) -> Any:
    known = [n for n in ns if n is not None]
    return max(known) if known else None


def _compare_saes(con: duckdb.DuckDBPyConnection, a: str, b: str, n_resamples: int, seed: int) -> Comparison:
    """Two SAEs' latents are different features: compare their distributions, per generator both share
    (each feature once, averaged over runs), or over all generators (averaged per feature) if none."""
    units = query(con, f"""
        SELECT sae, generator, feature_index, avg(generated_sensitivity) AS v,
               min(n_generated) AS n_min, max(n_generated) AS n_max
        FROM feature_stats WHERE sae IN (?, ?) AND generated_sensitivity IS NOT NULL AND NOT {REFERENCE_SQL}
        GROUP BY ALL
    """, [a, b]).to_pylist()
    # the corpus control is compared on its own (it is a shared "generator"), never pooled with others
    controls = [u for u in units if is_control(u["generator"])]
    units = [u for u in units if not is_control(u["generator"])]
    gens = {side: {u["generator"] for u in units if u["sae"] == side} for side in (a, b)}
    shared = sorted(gens[a] & gens[b])
    warnings = []
    if not shared and units:
        warnings.append(f"{a} and {b} share no generator: each feature's sensitivity is averaged over its "
                        "generators, so the difference mixes SAE and generator")
        pooled: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for u in units:
            pooled.setdefault((u["sae"], u["feature_index"]), []).append(u)
        units = [{"sae": k[0], "generator": "(all)", "feature_index": k[1],
                  "v": float(np.mean([x["v"] for x in us])), "n_min": _least([x["n_min"] for x in us]),
                  "n_max": _most([x["n_max"] for x in us])} for k, us in pooled.items()]
        shared = ["(all)"]
    units += controls
    shared += sorted({u["generator"] for u in controls if u["sae"] == a}
                     & {u["generator"] for u in controls if u["sae"] == b})
    rows: list[dict[str, Any]] = []
    parts = []
    n_seen: set[int] = set()
    for g in shared:
        side_vals, side_units = {}, {}
        for side in (a, b):
            side_units[side] = [u for u in units if u["sae"] == side and u["generator"] == g]
            side_vals[side] = np.array([u["v"] for u in side_units[side]], dtype=float)
        low, high = mean_ci(np.r_[np.zeros(side_vals[a].size), np.ones(side_vals[b].size)].astype(np.int64),
                            np.r_[side_vals[a], side_vals[b]], 2)
        for i, side in enumerate((a, b)):
            us = side_units[side]
            n_seen |= {u["n_min"] for u in us if u["n_min"] is not None} | {u["n_max"] for u in us if u["n_max"] is not None}
            rows.append({"generator": g, "sae": side, "features": len(us), "sensitivity": float(side_vals[side].mean()),
                         "ci_low": float(low[i]), "ci_high": float(high[i]),
                         "n_min": _least([u["n_min"] for u in us]), "n_max": _most([u["n_max"] for u in us]),
                         "p_value": None})
        d, dlo, dhi, p = difference_test(side_vals[a], side_vals[b], n_resamples=n_resamples, seed=seed)
        rows.append({"generator": g, "sae": "b - a", "features": None, "sensitivity": d, "ci_low": dlo,
                     "ci_high": dhi, "n_min": None, "n_max": None, "p_value": p})
        parts.append(f"{g}: b - a = {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}], permutation p = {p:.3g} "
                     f"({side_vals[a].size} vs {side_vals[b].size} features)")
    if len(n_seen) > 1:
        warnings.append(f"features have different numbers of generated samples (n = {min(n_seen)} to "
                        f"{max(n_seen)}): sensitivities of small n are coarse")
    schema = pa.schema([("generator", pa.string()), ("sae", pa.string()), ("features", pa.int64()),
                        ("sensitivity", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
                        ("n_min", pa.int64()), ("n_max", pa.int64()), ("p_value", pa.float64())])
    return Comparison("sae", a, b, pa.Table.from_pylist(rows, schema=schema),
                      f"compare SAEs a={a} vs b={b} (distributions over their own features): " + "; ".join(parts),
                      warnings)


def compare(
    con: duckdb.DuckDBPyConnection,
    a: str,
    b: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Two generators or two runs side by side, per feature they share (joined on the other keys and
    feature_index), plus a one-line summary with each side's mean over all its features.

    Two SAEs have different latents (feature 3 of one is unrelated to feature 3 of the other), so
    they are compared as distributions: each side's mean and interval and the difference of means
    with a bootstrap interval and a permutation test (``difference_test``)."""
    if a == b:
        raise UsageError("--compare needs two different names", "e.g. --compare py_4k_topk_s0 py_4k_relu_s0")
    dim = _dimension(con, a, b)
    if dim == "sae":
        return _compare_saes(con, a, b, n_resamples, seed)
    others = [k for k in ("run", "sae", "generator") if k != dim]
    on = " AND ".join(f"x.{k} = y.{k}" for k in [*others, "feature_index"])
    label_a, label_b = (a, b) if a != "diff" and b != "diff" else (f"{a} (a)", f"{b} (b)")
    # runs compared over their sensitivities only: base-rate, injection and negatives rows are not ones
    refs = "" if dim == "generator" else f"AND NOT {REFERENCE_SQL}"
    rows = query(con, f"""
        SELECT {', '.join(f'x.{k}' for k in others)}, x.feature_index,
            x.generated_sensitivity AS {_ident(label_a)}, y.generated_sensitivity AS {_ident(label_b)},
            y.generated_sensitivity - x.generated_sensitivity AS diff,
            x.n_generated AS n_a, y.n_generated AS n_b
        FROM feature_stats x JOIN feature_stats y ON {on}
        WHERE x.{dim} = ? AND y.{dim} = ? {refs.replace("generator", "x.generator")}
        ORDER BY {', '.join(f'x.{k}' for k in others)}, x.feature_index
    """, [a, b])
    side = query(con, f"""
        SELECT {dim} AS side, generated_sensitivity AS v FROM feature_stats
        WHERE {dim} IN (?, ?) AND generated_sensitivity IS NOT NULL {refs}
    """, [a, b])
    side_code = pc.equal(side.column("side"), b).to_numpy(zero_copy_only=False)
    v = side.column("v").to_numpy()
    low, high = mean_ci(side_code.astype(np.int64), v, 2)
    means = [float(v[side_code == s].mean()) if (side_code == s).any() else float("nan") for s in (False, True)]
    counts = [int((side_code == s).sum()) for s in (False, True)]
    parts = [f"{name}: mean {m:.3f} [{lo:.3f}, {hi:.3f}] over {n} features"
             for name, m, lo, hi, n in zip((a, b), means, low, high, counts, strict=True)]
    diff = rows.column("diff").to_numpy(zero_copy_only=False).astype(float)
    diff = diff[~np.isnan(diff)]
    if diff.size:
        parts.append(
            f"{diff.size} shared: mean diff (b - a) {diff.mean():+.3f}, b higher on {(diff > 0).sum()}, "
            f"a higher on {(diff < 0).sum()}, equal on {(diff == 0).sum()}"
        )
    else:
        parts.append("no shared features")
    warnings = []
    paired = [(x, y) for x, y, d in zip(*(rows.column(c).to_pylist() for c in ("n_a", "n_b", "diff")), strict=True)
              if d is not None]
    if any(x != y for x, y in paired):
        unequal = sum(x != y for x, y in paired)
        warnings.append(f"{unequal} of {len(paired)} shared features have different numbers of generated "
                        "samples on the two sides (columns n_a, n_b)")
    return Comparison(dim, a, b, rows, f"compare {dim}s a={a} vs b={b}: " + "; ".join(parts), warnings)
