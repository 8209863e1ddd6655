"""``feature_stats`` from ``scores``: sensitivities, relative thresholds, the precision side
(base rate, lift, specificity, injection rate, AUROC), and the CLI's per-generator summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas import NEGATIVES_PREFIX, make_table, role_of
from .config import DEFAULT_RELATIVE_THRESHOLDS


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def relative_sensitivities(maxes: Sequence[float] | np.ndarray, top: float | None, levels: Sequence[float]) -> list[float | None]:
    """Share of ``maxes`` above ``level * top`` for each level; None without samples or a positive top."""
    if not len(maxes) or top is None or not top > 0:
        return [None] * len(levels)
    m = np.asarray(maxes, dtype=np.float64)
    return [float((m > r * top).mean()) for r in levels]


def feature_stats(scores: pa.Table, generators: Sequence[str], top: dict[int, Any], threshold: float,
                  relative: Sequence[float] = DEFAULT_RELATIVE_THRESHOLDS) -> pa.Table:
    """Per feature × generator: sensitivities (empty texts are left out of every denominator),
    sample counts, the generated samples' mean and median max activation, and sensitivities at
    thresholds relative to the feature's top activation."""
    cols = {c: _column(scores, c) for c in ("feature_index", "source", "variant", "generator", "active",
                                            "max_activation", "truncated")}
    originals: dict[tuple[int, str], list[bool]] = {}
    original_max: dict[int, list[float]] = {}  # text variant, as original_sensitivity
    generated: dict[tuple[int, str], list[tuple[bool, float]]] = {}
    empty: dict[tuple[int, str], int] = {}
    truncated: dict[tuple[int, str], int] = {}
    for f, src, var, g, act, m, tr in zip(*cols.values(), strict=True):
        if src == "original":
            if act is not None:
                originals.setdefault((f, var), []).append(act)
                if var == "text":
                    original_max.setdefault(f, []).append(m)
            continue
        truncated[(f, g)] = truncated.get((f, g), 0) + int(tr)
        if act is None:
            empty[(f, g)] = empty.get((f, g), 0) + 1
        else:
            generated.setdefault((f, g), []).append((act, m))

    def share(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    feats = sorted({f for f, _ in originals} | {f for f, _ in generated} | {f for f, _ in empty})
    out: list[dict[str, Any]] = []
    for g in generators:
        for f in feats:
            gen = generated.get((f, g), [])
            maxes = np.array([m for _, m in gen], dtype=np.float64)
            out.append({
                "feature_index": f,
                "generator": g,
                "generated_sensitivity": share([a for a, _ in gen]),
                "original_sensitivity": share(originals.get((f, "text"), [])),
                "original_sensitivity_window": share(originals.get((f, "window"), [])),
                "n_generated": len(gen),
                "n_original": len(originals.get((f, "text"), [])),
                "n_empty": empty.get((f, g), 0),
                "n_truncated": truncated.get((f, g), 0),
                "mean_max_activation": float(maxes.mean()) if len(maxes) else None,
                "median_max_activation": float(np.median(maxes)) if len(maxes) else None,
                "top_activation": top.get(f),
                "threshold": threshold,
                "mean_frac_of_top": float(maxes.mean() / t) if len(maxes) and (t := top.get(f)) else None,
                "relative_thresholds": list(relative),
                "sensitivity_relative": relative_sensitivities(maxes, top.get(f), relative),
                "original_sensitivity_relative": relative_sensitivities(original_max.get(f, []), top.get(f), relative),
            })
    add_reference_stats(out, generated)
    return make_table("feature_stats", out)


DENSE_BASE_RATE = 0.5  # fires on at least half of random passages: its sensitivity cannot tell it from noise


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a positive's max activation > a negative's), ties counted 1/2 (the Mann-Whitney U / (m n))."""
    p = np.sort(np.asarray(positives, dtype=np.float64))
    n = np.sort(np.asarray(negatives, dtype=np.float64))
    if not p.size or not n.size:
        return None
    below = np.searchsorted(n, p, side="left")  # negatives strictly below each positive
    ties = np.searchsorted(n, p, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (p.size * n.size))


def add_reference_stats(rows: list[dict[str, Any]], generated: dict[tuple[int, str], list[tuple[bool, float]]]) -> None:
    """Fill each feature_stats row's role and its specificity-side evidence from the same scored texts:
    base rate (``baseline:`` passages, pooled if several), injection rate (``inject:``), specificity
    against the generator's own near-miss negatives (``negatives:<generator>``) and AUROC (positives
    against those negatives, else against the base passages)."""
    def pooled(role: str) -> dict[int, list[tuple[bool, float]]]:
        out: dict[int, list[tuple[bool, float]]] = {}
        for (f, g), xs in generated.items():
            if role_of(g) == role:
                out.setdefault(f, []).extend(xs)
        return out

    def share(xs: list[tuple[bool, float]]) -> float | None:
        return sum(a for a, _ in xs) / len(xs) if xs else None

    base, injected = pooled("base"), pooled("injection")
    for row in rows:
        f, g = row["feature_index"], row["generator"]
        role = role_of(g)
        b, i = base.get(f, []), injected.get(f, [])
        base_rate = share(b)
        row.update(role=role, base_rate=base_rate, n_base=len(b), injection_rate=share(i), n_injected=len(i),
                   dense=None if base_rate is None else base_rate >= DENSE_BASE_RATE)
        if role not in ("positive", "control"):
            continue
        gs = row["generated_sensitivity"]
        row["lift"] = gs - base_rate if gs is not None and base_rate is not None else None
        neg = generated.get((f, NEGATIVES_PREFIX + g), [])
        fired = share(neg)
        row.update(n_negative=len(neg), specificity=None if fired is None else 1.0 - fired)
        pos = [m for _, m in generated.get((f, g), [])]
        row["auroc"] = auroc(pos, [m for _, m in (neg or b)])


def summarize(scores: pa.Table, stats: pa.Table) -> list[dict[str, Any]]:
    """Per generator: features, mean sensitivities over features, and truncated/empty sample counts."""
    out = []
    gens = _column(stats, "generator")
    for g in sorted(set(gens)):
        sub = stats.filter(pc.equal(stats["generator"], g))
        mine = scores.filter(pc.equal(scores["generator"], g))

        means = {c: pc.mean(sub[c]).as_py() for c in
                 ("generated_sensitivity", "original_sensitivity", "original_sensitivity_window")}
        out.append({
            "generator": g,
            "features": sub.num_rows,
            **means,
            "samples": mine.num_rows,
            "truncated": int(pc.sum(mine["truncated"]).as_py() or 0),
            "empty": int(pc.sum(mine["empty"]).as_py() or 0),
        })
    return out
