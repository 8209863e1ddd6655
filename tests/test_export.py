"""`sae-sens export --format saebench`: files validated by sae_bench's own pydantic output classes
(our eval's classes subclass them, as every SAEBench eval's do), numbers equal to `report`'s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError
from sae_bench.evals.base_eval_output import (
    BaseEvalOutput,
    BaseMetricCategories,
    BaseMetrics,
    BaseResultDetail,
)

from sae_sens.cli import main
from sae_sens.report import connect, summarize
from sae_sens.report.saebench_export import (
    SensitivityEvalOutput,
    SensitivityMetricCategories,
    SensitivityMetrics,
    sae_lens_ids,
)
from sae_sens.schemas import make_table
from sae_sens.store import Store

RUN = "r1"
SAES = ("py_4k_topk_s0", "smol_576_topk")
GENERATORS = ("openai:gpt-4.1-mini", "hf:demo:smollm2")


def sens(k: int, j: int, i: int) -> float:
    return ((i * (k + 2) + 3 * j) % 11) / 10


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "evals")
    for k, sae in enumerate(SAES):
        st.write_table(RUN, sae, "features", make_table("features", [
            {"feature_index": i, "frequency": 0.001 * (i + 1), "n_firings": 10 * i, "alive": True, "selected": i < 6}
            for i in range(8)]))
        st.write_table(RUN, sae, "feature_stats", make_table("feature_stats", [
            {"feature_index": i, "generator": g, "generated_sensitivity": sens(k, j, i), "original_sensitivity": 0.9,
             "original_sensitivity_window": 1.0, "n_generated": 10, "n_original": 15, "mean_max_activation": 1.5 + i,
             "top_activation": 4.0, "threshold": 1e-6}
            for i in range(6) for j, g in enumerate(GENERATORS)]))
        manifest = st.manifest(RUN, sae)
        manifest.sae_info.update({"model_id": "EleutherAI/pythia-160m-deduped", "hook": "blocks.8.hook_resid_post",
                                  "architecture": "topk", "width": 4096, "d_in": 768, "d_sae": 4096})
        manifest.save()
        st.record_stage(RUN, sae, "collect", config={"corpus": "demo:wiki", "total_tokens": 20000, "context_size": 128,
                                                     "n_top_ex_for_generation": 10, "n_iw_ex_for_generation": 5,
                                                     "dead_min_firings": 15, "seed": 42},
                        inputs={}, outputs={"features": None}, started_at="2026-01-01T00:00:00Z")
        for g in GENERATORS:
            st.record_stage(RUN, sae, f"generate:{g}", config={"generator": g, "samples_per_feature": 10},
                            inputs={}, outputs={}, started_at="2026-01-01T00:00:00Z")
        st.record_stage(RUN, sae, "score", config={"threshold": 1e-6, "max_length": 128, "generator": None},
                        inputs={}, outputs={"feature_stats": None}, started_at="2026-01-01T00:00:00Z")
    return st


def test_export_writes_files_sae_bench_validates(store: Store, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "saebench"
    main(["export", "--store", str(store.root), "--format", "saebench", "-o", str(out)])
    files = sorted(out.glob("*/*.json"))
    assert len(files) == len(SAES) * len(GENERATORS)
    assert capsys.readouterr().err.count("wrote ") == len(files)
    expected = {(r["sae"], r["generator"]): r for r in summarize(connect(store)).to_pylist()}
    adapter = TypeAdapter(SensitivityEvalOutput)
    for path in files:
        raw = json.loads(path.read_text())
        # sae_bench's base-class validators run on load: flat metric categories, epoch range, field types
        parsed = adapter.validate_python(raw)
        assert isinstance(parsed, BaseEvalOutput)
        assert isinstance(parsed.eval_result_metrics, BaseMetricCategories)
        assert isinstance(parsed.eval_result_metrics.sensitivity, BaseMetrics)
        assert all(isinstance(d, BaseResultDetail) for d in parsed.eval_result_details)
        assert raw["eval_type_id"] == "sae_sens_sensitivity" and len(raw["eval_id"]) == 36
        assert 1_700_000_000_000 < raw["datetime_epoch_millis"] < 9_999_999_999_999
        sae, gen = raw["eval_result_unstructured"]["sae"], raw["eval_config"]["generator"]
        assert path.name == f"{sae}__{gen.replace(':', '-')}_eval_results.json"
        k, j = SAES.index(sae), GENERATORS.index(gen)
        m, e = raw["eval_result_metrics"]["sensitivity"], expected[(sae, gen)]
        assert m["mean_sensitivity"] == pytest.approx(sum(sens(k, j, i) for i in range(6)) / 6)
        # to the last bits: DuckDB's parallel avg() adds in no fixed order
        assert [m["mean_sensitivity"], m["ci_low"], m["ci_high"]] == pytest.approx(
            [e["sensitivity"], e["ci_low"], e["ci_high"]], rel=1e-12)
        assert m["n_features"] == e["features"]
        assert m["mean_original_sensitivity"] == pytest.approx(0.9)
        assert [d["latent"] for d in raw["eval_result_details"]] == list(range(6))
        assert [d["sensitivity"] for d in raw["eval_result_details"]] == [sens(k, j, i) for i in range(6)]
        assert raw["eval_result_details"][2]["frequency"] == pytest.approx(0.003)
        cfg = raw["eval_config"]
        assert (cfg["dataset_name"], cfg["total_tokens"], cfg["samples_per_feature"], cfg["activation_threshold"]) == (
            "demo:wiki", 20000, 10, 1e-6)
        assert raw["sae_cfg_dict"]["hook_name"] == "blocks.8.hook_resid_post" and raw["sae_cfg_dict"]["d_sae"] == 4096
        assert raw["sae_lens_version"]


def test_sae_bench_validators_reject_a_broken_file(store: Store, tmp_path: Path) -> None:
    main(["export", "--store", str(store.root), "--sae", SAES[0], "-g", GENERATORS[0], "-o", str(tmp_path / "o")])
    [path] = list((tmp_path / "o").glob("*/*.json"))
    raw = json.loads(path.read_text())
    adapter = TypeAdapter(SensitivityEvalOutput)
    adapter.validate_python(raw)
    for broken in ({**raw, "datetime_epoch_millis": -1},  # BaseEvalOutput.validate_unix_time
                   {**raw, "eval_result_details": [{"latent": "not a number"}]}):
        with pytest.raises(ValidationError):
            adapter.validate_python(broken)
    with pytest.raises(ValidationError):  # BaseMetrics.validate_dict: metrics must be flat
        SensitivityMetricCategories(sensitivity=SensitivityMetrics(
            mean_sensitivity={"a": 1}, ci_low=None, ci_high=None, share_below_half=None,  # type: ignore[arg-type]
            mean_original_sensitivity=None, mean_original_sensitivity_window=None, n_features=1))


def test_sae_lens_ids_follow_saebench_naming() -> None:
    assert sae_lens_ids("py_4k_topk_s0") == (
        "saebench_pythia-160m-deduped_width-2pow12_date-0108", "TopK_pythia-160m-deduped__0108_resid_post_layer_8_trainer_0")
    # the file name SAEBench gave this SAE's autointerp results is {release}_{id}_eval_results.json
    from sae_sens.collect.saebench import saebench_results_path

    for name in ("py_4k_topk_s0", "gem_16k_jumprelu_s2", "gem_65k_matbtopk_s5"):
        release, sae_id = sae_lens_ids(name)
        assert saebench_results_path(name).endswith(f"/{release}_{sae_id}_eval_results.json")
    assert sae_lens_ids("gscope_16k_l0_82") == ("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")
    assert sae_lens_ids("saelens:rel/some/id") == ("rel", "some/id")
    assert sae_lens_ids("smol_576_topk") == (None, None)


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["export", "--store", str(tmp_path / "none"), "-o", str(tmp_path / "o")])
    assert e.value.code == 1 and "no runs found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", "--store", str(tmp_path), "--format", "csv", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown export format 'csv'" in err and err.count("\n") == 1
