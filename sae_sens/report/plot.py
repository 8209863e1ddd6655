"""The paper's headline figure and the per-SAE sensitivity histograms, as PNG files (matplotlib, Agg).

``write_plots(con, "sens.png")`` writes three files:

* ``sens.png``: mean generated sensitivity vs SAE width (log scale), one line per architecture
  (split by model and by generator where several are shown), with 95% intervals over
  the pooled features of the SAEs at each point;
* ``sens_l0.png``: mean generated sensitivity vs the SAE's L0 (log scale), one line per
  architecture, one point per SAE: the L0 the SAE's metadata gives, else the one its collect pass
  measured (active latents per counted token, ``latents.n_firings``); the paper's authors plot it so,
  since width and sparsity trade off;
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


def l0_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_l0{path.suffix}")


def sae_l0(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], tuple[float, str]]:
    """Per run × SAE its L0 and where it comes from: ``saes.l0`` (the SAE's own metadata), else the
    collect pass's measured mean of active latents per counted token."""
    rows = query(con, """
        SELECT s.run, s.sae, s.l0, m.l0 AS measured
        FROM saes s LEFT JOIN (
            SELECT run, sae, sum(n_firings) / nullif(any_value(counted_tokens), 0) AS l0 FROM latents GROUP BY ALL
        ) m USING (run, sae)
    """).to_pylist()
    out = {}
    for r in rows:
        if r["l0"] is not None:
            out[(r["run"], r["sae"])] = (float(r["l0"]), "metadata")
        elif r["measured"] is not None:
            out[(r["run"], r["sae"])] = (float(r["measured"]), "measured")
    return out


def write_l0_plot(con: duckdb.DuckDBPyConnection, path: Path, *, generators: Sequence[str] | None = None,
                  n_resamples: int = N_RESAMPLES, seed: int = 0) -> Path:
    """Sensitivity vs L0, one line per architecture (and generator where several), a point per SAE."""
    import matplotlib.pyplot as plt

    l0 = sae_l0(con)
    points = summarize(con, ["architecture", "generator", "run", "sae"], generators=generators,
                       n_resamples=n_resamples, seed=seed).to_pylist()
    several = len({p["generator"] for p in points}) > 1
    lines: dict[str, list[tuple[float, float, float, float]]] = {}
    sources = set()
    for p in points:
        key = (p["run"], p["sae"])
        if key not in l0 or p["sensitivity"] is None:
            continue
        sources.add(l0[key][1])
        label = str(p["architecture"] or "?") + (f" · {str(p['generator']).rsplit('/', 1)[-1]}" if several else "")
        lines.setdefault(label, []).append((l0[key][0], p["sensitivity"], p["ci_low"], p["ci_high"]))
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for label, pts in sorted(lines.items()):
        pts.sort()
        x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), marker="o", capsize=3, label=label)
    if lines:
        ax.set_xscale("log")
        ax.legend(title="architecture", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)  # outside the data
    else:
        ax.text(0.5, 0.5, "no SAE with a known or measured L0", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("L0 (active latents per token" + (", measured in collect" if sources == {"measured"} else "")
                  + (", partly measured in collect" if sources == {"measured", "metadata"} else "") + ")")
    ax.set_ylabel("mean generated sensitivity")
    ax.set_title("Sensitivity vs L0 (95% interval over features)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


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
    """Write the headline figure to ``path``, the histograms and the L0 figure next to it; returns the paths."""
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
        ax.legend(title=" · ".join(series), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)  # outside the data
    else:
        ax.text(0.5, 0.5, "no SAE widths known", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("SAE width (latents)")
    ax.set_ylabel("mean generated sensitivity")
    ax.set_title("Sensitivity vs width (95% interval over features)", fontsize=10)
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
    lpath = write_l0_plot(con, l0_path(path), generators=generators, n_resamples=n_resamples, seed=seed)
    return [path, hpath, lpath]
