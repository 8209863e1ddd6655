"""Importing SAEBench's published autointerp generation examples (``collect --from-saebench``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tabulate import tabulate

from sae_sens.cli import main
from sae_sens.collect.saebench import SAEBENCH_DATASET, SAEBENCH_RESULTS_REPO, saebench_results_path
from sae_sens.errors import ConfigError

# (latent, [(top act, sequence with SAEBench's per-token marks)]) -- strongest first, 3 top then 2 iw
LATENTS = {
    15: [(51.329, "avoid<< bank>> fees from credit<< card>><< machines>>. He says"),
         (47.245, "back to your credit<< card>>, but some banks"),
         (46.221, "use a<< debit>> or<< credit>><< card>>.↵↵\"The practice"),
         (19.952, "process a<< card>> chargeback, meaning"),
         (14.123, "new protection from<< card>> surcharges.")],
    9: [(12.5, "the<< new>> policy"), (11.0, "a<< new>> system"), (10.25, "<<New>> rules"),
        (3.5, "renewed<< new>>ness"), (0.75, "news<< new>>")],
}


def saebench_logs(rows: list[tuple[float, str]]) -> str:
    """Logs laid out as SAEBench's autointerp writes them (tabulate tables, generation then scoring)."""
    messages = tabulate([["system", "We're studying neurons..."],
                         ["user", "The activating documents are given below: 1. avoid<< bank>> fees"],
                         ["assistant", "This neuron activates on card words."]], tablefmt="simple_grid")
    gen = tabulate([[a, s] for a, s in rows], headers=["Top act", "Sequence"], tablefmt="simple_outline",
                   floatfmt=".3f")
    scoring = tabulate([[99.0, "Y", "Y", "a<< decoy>> row"]], headers=["Top act", "Active?", "Predicted?", "Sequence"],
                       tablefmt="simple_outline", floatfmt=".3f")
    return f"Generation phase\n{messages}\n{gen}\nScoring phase\n{messages}\n{scoring}"


def write_fixture(path: Path) -> Path:
    data: dict[str, Any] = {
        "eval_type_id": "autointerp",
        "eval_config": {"model_name": "pythia-160m-deduped", "dataset_name": SAEBENCH_DATASET},
        "eval_result_unstructured": {
            str(lat): {"latent": lat, "explanation": "card", "logs": saebench_logs(rows), "score": 0.9}
            for lat, rows in LATENTS.items()
        },
    }
    path.write_text(json.dumps(data))
    return path


def test_import_fixture_gives_features_activations_and_marks(tmp_path: Path) -> None:
    fixture = write_fixture(tmp_path / "results.json")
    store = tmp_path / "evals"
    main(["collect", "--sae", "py_4k_topk_s0", "--store", str(store), "--saebench-file", str(fixture),
          "--n-top-ex-for-generation", "3"])
    sae_dir = store / "default" / "py_4k_topk_s0"
    ex = pq.read_table(sae_dir / "examples.parquet").to_pylist()
    assert sorted({r["feature_index"] for r in ex}) == [9, 15]
    card = [r for r in ex if r["feature_index"] == 15]
    assert [r["max_activation"] for r in card] == [51.329, 47.245, 46.221, 19.952, 14.123]
    assert [r["kind"] for r in card] == ["top"] * 3 + ["iw"] * 2
    assert card[0]["text"] == "avoid{{ bank}} fees from credit{{ card machines}}. He says"
    assert card[2]["text"] == "use a{{ debit}} or{{ credit card}}.↵↵\"The practice"
    assert not any("decoy" in r["text"] for r in ex)
    feats = pq.read_table(sae_dir / "features.parquet").to_pylist()
    assert {f["feature_index"]: f["top_activation"] for f in feats} == {9: 12.5, 15: 51.329}
    manifest = json.loads((sae_dir / "manifest.json").read_text())
    assert manifest["stages"]["collect"]["config"]["dataset"] == SAEBENCH_DATASET


def test_import_selection_and_hub_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture = write_fixture(tmp_path / "results.json")
    asked: dict[str, Any] = {}

    def fake_download(repo_id: str, filename: str, **kw: Any) -> str:
        asked.update(repo_id=repo_id, filename=filename, **kw)
        return str(fixture)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    store = tmp_path / "evals"
    main(["collect", "--sae", "py_4k_topk_s0", "--store", str(store), "--from-saebench", "--feature-ids", "9"])
    assert asked["repo_id"] == SAEBENCH_RESULTS_REPO and asked["repo_type"] == "dataset"
    assert asked["filename"] == saebench_results_path("py_4k_topk_s0")
    ex = pq.read_table(store / "default" / "py_4k_topk_s0" / "examples.parquet")
    assert set(ex["feature_index"].to_pylist()) == {9}
    feats = pq.read_table(store / "default" / "py_4k_topk_s0" / "features.parquet").to_pylist()
    assert {f["feature_index"]: f["selected"] for f in feats} == {9: True, 15: False}


def test_results_path_naming() -> None:
    assert saebench_results_path("gem_16k_jumprelu_s2") == (
        "autointerp_with_generations/saebench_gemma-2-2b_width-2pow14_date-0108/"
        "saebench_gemma-2-2b_width-2pow14_date-0108_JumpRelu_gemma-2-2b__0108_resid_post_layer_12_trainer_2"
        "_eval_results.json")
    with pytest.raises(ConfigError, match="not a SAEBench SAE name"):
        saebench_results_path("./my_sae")


def test_bad_feature_ids_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["collect", "--sae", "py_4k_topk_s0", "--store", str(tmp_path), "--feature-ids", "3,x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "3,17,42" in err and len(err.splitlines()) == 1
