"""The paper's headline figure and the per-SAE sensitivity histograms, as PNG files (matplotlib, Agg).

``write_plots(con, "sens.png")`` writes two files:

* ``sens.png``: mean generated sensitivity vs SAE width (log scale), one line per architecture
  (split by model and by generator where several are shown), with 95% bootstrap intervals over
  the pooled features of the SAEs at each point;
* ``sens_hist.png``: the distribution of per-feature sensitivity for each SAE × generator, one row
  per SAE, one column per sensitivity bin (tenths), colour = share of the SAE's features. A heatmap
  keeps hundreds of SAEs readable where overlaid histograms would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np

from ..schemas import CONTROL_SQL, REFERENCE_SQL
from .summary import N_RESAMPLES, summarize
from .views import query

DPI = 150
FIGSIZE = (7.0, 4.5)  # inches: 1050 × 675 pixels
HIST_WIDTH = 7.0
HIST_BINS = 11  # sensitivities rounded to tenths: 0.0, 0.1, ..., 1.0


def hist_height(n_rows: int) -> float:
    """Height in inches of the histogram figure for ``n_rows`` SAE × generator rows."""
    return max(3.0, 1.5 + 0.2 * n_rows)


def hist_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_hist{path.suffix}")


def _width_label(w: float) -> str:
    w = int(w)
    if w >= 1 << 20 and w % (1 << 20) == 0:
        return f"{w >> 20}m"
    return f"{w >> 10}k" if w >= 1024 and w % 1024 == 0 else str(w)


def _generator_filter(generators: Sequence[str] | None, column: str = "generator") -> tuple[str, list[str]]:
    if not generators:  # base-rate, injection and negatives rows are no sensitivity (report --specificity)
        return f"AND NOT {REFERENCE_SQL.replace('generator', column)}", []
    return f"AND {column} IN ({', '.join('?' for _ in generators)})", list(generators)


def write_plots(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    generators: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[Path]:
    """Write the headline figure to ``path`` and the histograms next to it; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where, params = _generator_filter(generators)
    f_where, _ = _generator_filter(generators, "f.generator")
    # one line per architecture, split further by model and generator only where several are shown
    distinct = query(con, f"""
        SELECT count(DISTINCT s.model) AS model,
               count(DISTINCT f.generator) FILTER (WHERE NOT {CONTROL_SQL.replace("generator", "f.generator")}) AS generator
        FROM feature_stats f LEFT JOIN saes s USING (run, sae) WHERE true {f_where}
    """, params).to_pylist()[0]
    series = ["architecture"] + [k for k in ("model", "generator") if distinct[k] > 1]
    points = summarize(con, [*series, "width"], generators=generators, n_resamples=n_resamples, seed=seed)

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    labels = np.asarray([" · ".join(str(v).rsplit("/", 1)[-1] for v in key) for key in zip(  # org/ is noise
        *(points.column(k).to_pylist() for k in series), strict=True)], dtype=object)
    width = points.column("width").to_numpy(zero_copy_only=False).astype(float)  # NULL -> NaN
    mean, lo, hi = (points.column(k).to_numpy(zero_copy_only=False).astype(float)
                    for k in ("sensitivity", "ci_low", "ci_high"))
    keep = ~np.isnan(width) & ~np.isnan(mean)
    lines = sorted(set(labels[keep]))
    for i, label in enumerate(lines):
        sel = keep & (labels == label)
        order = np.argsort(width[sel])
        dodge = 2 ** (0.04 * (i - (len(lines) - 1) / 2))  # so interval bars at one width do not overlap
        x, y = width[sel][order] * dodge, mean[sel][order]
        yerr = np.vstack([y - lo[sel][order], hi[sel][order] - y])
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=label)
    if keep.any():
        ax.set_xscale("log", base=2)
        ticks = np.unique(width[keep])
        ax.set_xticks(ticks, [_width_label(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(title=" · ".join(series), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no SAE widths known", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("SAE width (latents)")
    ax.set_ylabel("mean generated sensitivity")
    ax.set_title("Sensitivity vs width (95% bootstrap interval over features)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)

    counts = query(con, f"""
        SELECT run, sae, generator, least(greatest(round(generated_sensitivity * 10), 0), 10)::INTEGER AS bin,
               count(*) AS n
        FROM feature_stats WHERE generated_sensitivity IS NOT NULL {where}
        GROUP BY ALL ORDER BY run, sae, generator, bin
    """, params).to_pydict()
    keys = list(zip(counts["run"], counts["sae"], counts["generator"], strict=True))
    rows = sorted(set(keys))
    row_of = {k: i for i, k in enumerate(rows)}
    grid = np.zeros((len(rows), HIST_BINS))
    np.add.at(grid, ([row_of[k] for k in keys], counts["bin"]), counts["n"])
    share = grid / np.maximum(grid.sum(axis=1, keepdims=True), 1)
    several_runs = len({r for r, _, _ in rows}) > 1
    several_gens = distinct["generator"] > 1
    row_labels = [(f"{r}/{s}" if several_runs else s) + (f" · {g}" if several_gens else "") for r, s, g in rows]

    hpath = hist_path(path)
    fig, ax = plt.subplots(figsize=(HIST_WIDTH, hist_height(len(rows))), dpi=DPI)
    if rows:
        im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=max(share.max(), 1e-9),
                       extent=(-0.05, 1.05, len(rows) - 0.5, -0.5))
        fig.colorbar(im, ax=ax, label="share of features")
        if len(rows) <= 60:
            ax.set_yticks(range(len(rows)), row_labels, fontsize=7 if len(rows) > 20 else 9)
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(rows)} SAEs")
        ax.set_xticks(np.linspace(0, 1, 6))
    else:
        ax.text(0.5, 0.5, "no scored features", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("per-feature generated sensitivity")
    ax.set_title("Distribution of feature sensitivity per SAE", fontsize=10)
    fig.tight_layout()
    fig.savefig(hpath, dpi=DPI)
    plt.close(fig)
    return [path, hpath]
