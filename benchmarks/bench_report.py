"""Report speed on a large synthetic store: 250 SAEs × 1,000 features × 10 generated samples.

The store is written directly with pyarrow (feature_stats, scores, generations, queries and
manifests, as the stages would write them), then the report runs: the default summary (with 1,000-resample bootstrap
intervals), ``--by architecture``, and a SQL query over all 2.5M score rows. The baseline is
the straightforward approach measured in the same run: a Python loop over SAEs reading each
feature_stats file and bootstrapping by resampling feature indices 1,000 times.

Run: python benchmarks/bench_report.py [--saes 250] [--features 1000] [--samples 10]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout, uninstalled
from sae_sens.report import connect, query, summarize  # noqa: E402
from sae_sens.report.views import ARCHITECTURES, parse_sae_name  # noqa: E402
from sae_sens.schemas import make_table  # noqa: E402
from sae_sens.store import Store, with_run_sae  # noqa: E402

RUN = "bench"
GENERATOR = "openai:gpt-4o-mini"


def sae_names(n: int) -> list[str]:
    grid = itertools.product(("py", "gem"), ("4k", "16k", "65k"), ARCHITECTURES, range(6))
    return [f"{m}_{w}_{a}_s{s}" for m, w, a, s in itertools.islice(grid, n)]


def build_store(root: Path, n_saes: int, n_features: int, n_samples: int, n_tokens: int = 24) -> Store:
    store = Store(root)
    rng = np.random.default_rng(0)
    fi = np.repeat(np.arange(n_features), n_samples)
    si = np.tile(np.arange(n_samples), n_features).astype(np.int32)
    n_rows = fi.size
    offsets = pa.array(np.arange(n_rows + 1) * n_tokens, pa.int32())
    for k, sae in enumerate(sae_names(n_saes)):
        p_active = rng.beta(2, 2, n_features)  # each feature's true sensitivity
        max_act = np.where(rng.random(n_rows) < p_active[fi], rng.gamma(2.0, 1.0, n_rows), 0.0)
        acts = pa.ListArray.from_arrays(offsets, pa.array(rng.random(n_rows * n_tokens, np.float32)))
        scores = make_table("scores", {
            "feature_index": fi, "source": ["generated"] * n_rows, "variant": ["generated"] * n_rows,
            "generator": [GENERATOR] * n_rows, "sample_index": si, "text": ["a generated text"] * n_rows,
            "n_tokens": np.full(n_rows, n_tokens, np.int32), "truncated": np.zeros(n_rows, bool),
            "empty": np.zeros(n_rows, bool), "max_activation": max_act, "max_position": np.zeros(n_rows, np.int32),
            "active": max_act > 1e-6, "frac_of_top": max_act / 10, "activations": acts,
        })
        sens = (max_act > 1e-6).reshape(n_features, n_samples).mean(axis=1)
        stats = make_table("feature_stats", {
            "feature_index": np.arange(n_features), "generator": [GENERATOR] * n_features,
            "generated_sensitivity": sens, "original_sensitivity": rng.integers(8, 16, n_features).clip(0, 15) / 15,
            "original_sensitivity_window": np.ones(n_features), "n_generated": np.full(n_features, n_samples),
            "n_original": np.full(n_features, 15), "n_empty": np.zeros(n_features, np.int64),
        })
        # the texts and parse methods the summary's preamble and fallback-parse flags read
        texts = np.where(si == 0, "Here are 10 samples that match the pattern:", "the castle by the river in 1637")
        generations = make_table("generations", {"feature_index": fi, "generator": [GENERATOR] * n_rows,
                                                 "sample_index": si, "text": texts})
        queries = make_table("queries", {"feature_index": np.arange(n_features), "generator": [GENERATOR] * n_features,
                                         "status": ["ok"] * n_features, "n_parsed": np.full(n_features, n_samples),
                                         "parse_method": ["separator"] * n_features})
        folder = store.sae_dir(RUN, sae)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(with_run_sae(generations, RUN, sae), folder / "generations.parquet")
        pq.write_table(with_run_sae(queries, RUN, sae), folder / "queries.parquet")
        pq.write_table(with_run_sae(scores, RUN, sae), folder / "scores.parquet")
        pq.write_table(with_run_sae(stats, RUN, sae), folder / "feature_stats.parquet")
        info = {"name": sae, "format": "dictionary_learning", **parse_sae_name(sae), "d_sae": parse_sae_name(sae)["width"]}
        stage = {"config": {}, "config_hash": "x", "inputs": {}, "outputs": {}, "started_at": "2026-01-01T00:00:00",
                 "finished_at": f"2026-01-01T00:{k % 60:02d}:00"}
        manifest = {"run": RUN, "sae": sae, "sae_info": info, "tables": {}, "stages": {"score": stage}}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return store


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def baseline_summary(store: Store, n_resamples: int = 1000) -> list[tuple[str, float, float, float]]:
    """The loop a notebook would write: per SAE, read its table, bootstrap by index resampling."""
    rng = np.random.default_rng(0)
    out = []
    for path in sorted(store.root.glob("*/*/feature_stats.parquet")):
        v = pq.read_table(path, columns=["generated_sensitivity"]).column(0).to_numpy()
        means = v[rng.integers(0, v.size, (n_resamples, v.size))].mean(axis=1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        out.append((path.parent.name, float(v.mean()), float(lo), float(hi)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saes", type=int, default=250)
    ap.add_argument("--features", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=10)
    args = ap.parse_args(argv or [])  # bench.py calls main() with its own argv in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = build_store(Path(tmp), args.saes, args.features, args.samples)
        print(f"report: built synthetic store ({args.saes} SAEs × {args.features} features × {args.samples} samples) "
              f"in {time.perf_counter() - t:.1f}s")
        t_connect, con = timed(lambda: connect(store, status=False))
        t_status, _ = timed(lambda: connect(store))
        t_summary, summary = timed(lambda: summarize(con))
        t_by, by_arch = timed(lambda: summarize(con, by=["architecture"]))
        t_scores, _ = timed(lambda: query(con, "SELECT sae, avg((frac_of_top > 0.2)::DOUBLE) AS sens_at_20pct "
                                                "FROM scores WHERE source = 'generated' GROUP BY sae"))
        t_base, base = timed(lambda: baseline_summary(store), repeat=1)
        n_arch = len({parse_sae_name(name)["architecture"] for name in sae_names(args.saes)})
        assert summary.num_rows == args.saes and by_arch.num_rows == n_arch
        assert summary.column("preamble_samples").to_pylist() == [args.features] * args.saes  # sample 0 of each
        assert len(base) == args.saes
        total = t_connect + t_summary
        print(f"report: connect (views + {args.saes} manifests)      {t_connect * 1000:8.1f} ms")
        print(f"report: connect with runs/stages status          {t_status * 1000:8.1f} ms")
        print(f"report: default summary + bootstrap CIs          {t_summary * 1000:8.1f} ms")
        print(f"report: connect + summary                        {total * 1000:8.1f} ms")
        print(f"report: --by architecture                        {t_by * 1000:8.1f} ms")
        print(f"report: SQL over all {summary.column('features').to_numpy().sum() * args.samples:,} score rows "
              f"      {t_scores * 1000:8.1f} ms")
        print(f"report: baseline per-SAE loop, index bootstrap   {t_base * 1000:8.1f} ms  "
              f"-> connect + summary is {t_base / total:.1f}x faster")


if __name__ == "__main__":
    main(sys.argv[1:])
