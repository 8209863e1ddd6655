"""The whole pipeline through the CLI on a tiny real model and SAE:
collect -> generate (imported tables, and the openai client against a real local HTTP server)
-> score -> report, then `run` and `runs`. Assertions are on contents, not on exit codes alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.support.cli import CliRunner
from tests.support.openai_server import ChatServer
from tests.support.testing import TinyWorld

SECRET = "sk-test-e2e-secret-key-0123456789"


def _feature_stats(store: Path, run: str) -> dict[tuple[str, int], dict[str, Any]]:
    rows = pq.read_table(next(store.joinpath(run).glob("*/feature_stats.parquet"))).to_pylist()
    return {(r["generator"], r["feature_index"]): r for r in rows}


@pytest.mark.slow  # every stage through the CLI, a real server included
def test_pipeline_end_to_end(tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, sae, model = tmp_path / "store", str(tiny_world.sae), str(tiny_world.model)
    common = ["--store", str(store), "--run", "e2e", "--sae", sae]
    model_opts = ["--model", model, "--device", "cpu"]

    code, out, err = cli("collect", *common, *model_opts, "--corpus", str(tiny_world.corpus),
                         "--total-tokens", "3000", "--context-size", "48", "--feature-ids", "0,1,2")
    assert code == 0, err
    examples = pq.read_table(next(store.glob("e2e/*/examples.parquet"))).to_pylist()
    assert {e["feature_index"] for e in examples} == {0, 1, 2}
    for e in examples:
        # every original example activates its feature, and the peak token is marked
        assert e["max_activation"] > 0
        assert "{{" in e["text"] and "}}" in e["text"]
        assert e["activations"][e["peak_offset"]] == pytest.approx(e["max_activation"], rel=1e-4)
    for e in examples:
        assert tiny_world.targets[e["feature_index"]] in e["text"]

    # an imported table of the original texts (marks stripped) must give sensitivity 1.0
    originals = tmp_path / "originals.csv"
    with originals.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["feature_index", "text"])
        for e in examples:
            w.writerow([e["feature_index"], e["text"].replace("{{", "").replace("}}", "")])
    code, out, err = cli("generate", *common, "--from-table", str(originals), "--generator", "originals")
    assert code == 0, err

    # texts made only of other words cannot activate the token detectors: sensitivity 0.0
    negatives = tmp_path / "negatives.jsonl"
    negatives.write_text("".join(
        json.dumps({"feature_index": f, "text": " ".join(tiny_world.others[(f + i) % len(tiny_world.others)]
                                                          for i in range(8))}) + "\n"
        for f in range(3) for _ in range(2)))
    code, out, err = cli("generate", *common, "--from-table", str(negatives), "--generator", "negatives")
    assert code == 0, err

    # the openai client against a real OpenAI-compatible server on 127.0.0.1
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with ChatServer(models=("tiny-chat",), api_key=SECRET, n_samples=5) as server:
        code, out, err = cli("generate", *common, "--generator", "openai:tiny-chat",
                             "--base-url", server.base_url, "--samples-per-feature", "4")
        assert code == 0, err
        assert server.count(200) == 3  # one request per feature
        seen = json.dumps(server.bodies)
        assert tiny_world.targets[0] in seen  # the prompt carried the feature's examples

    code, out, err = cli("score", *common, *model_opts)
    assert code == 0, err
    stats = _feature_stats(store, "e2e")
    for f in range(3):
        assert stats[("originals", f)]["generated_sensitivity"] == 1.0
        assert stats[("negatives", f)]["generated_sensitivity"] == 0.0
        assert stats[("openai:tiny-chat", f)]["n_generated"] == 4
        assert stats[("originals", f)]["original_sensitivity_window"] == 1.0

    code, out, err = cli("report", "--store", str(store), "--format", "json", "--sql",
                         "SELECT generator, feature_index, generated_sensitivity FROM feature_stats "
                         "WHERE generator IN ('originals', 'negatives') ORDER BY generator, feature_index")
    assert code == 0, err
    rows = json.loads(out)
    assert rows == [{"generator": g, "feature_index": f, "generated_sensitivity": 1.0 if g == "originals" else 0.0}
                    for g in ("negatives", "originals") for f in range(3)]

    code, out, err = cli("report", "--store", str(store), "--format", "csv")
    assert code == 0, err
    summary = {r["generator"]: r for r in csv.DictReader(out.splitlines())}
    assert float(summary["originals"]["sensitivity"]) == 1.0
    assert float(summary["negatives"]["sensitivity"]) == 0.0

    code, out, err = cli("runs", "--store", str(store), "--format", "json")
    assert code == 0, err
    (status,) = json.loads(out)
    assert (status["collect"], status["generate"], status["score"]) == ("done", "done", "done")
    assert set(status["generators"].split(", ")) == {"originals", "negatives", "openai:tiny-chat"}

    # the API key never reaches an artifact, a manifest or a cache file
    for path in store.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_run_command_does_every_stage_and_is_fresh_on_rerun(tiny_world: TinyWorld, tmp_path: Path,
                                                             cli: CliRunner) -> None:
    store = tmp_path / "store"
    texts = tmp_path / "texts.csv"
    texts.write_text("feature_index,text\n" + "".join(f"{f},the {tiny_world.targets[f]} sat on a mat\n" for f in range(3)))
    args = ["run", "--store", str(store), "--run", "r", "--sae", str(tiny_world.sae), "--model", str(tiny_world.model),
            "--device", "cpu", "--corpus", str(tiny_world.corpus), "--total-tokens", "3000", "--context-size", "48",
            "--feature-ids", "0,1,2", "--from-table", str(texts), "--generator", "mine"]
    code, out, err = cli(*args)
    assert code == 0, err
    stats = _feature_stats(store, "r")
    assert [stats[("mine", f)]["generated_sensitivity"] for f in range(3)] == [1.0, 1.0, 1.0]
    assert "ran" in out and "sensitivity" in out
    code, out, err = cli(*args)
    assert code == 0, err
    assert out.count("up to date") >= 3  # every stage skipped: nothing changed


def test_bad_inputs_are_one_line_errors(tiny_world: TinyWorld, tmp_path: Path,
                                        cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    cases = [
        (["collect", "--store", store, "--sae", "py_3k_topk_s0"], "py_4k_topk_s0"),  # unknown SAE, suggestion
        (["score", "--store", store, "--sae", str(tiny_world.sae), "--model", str(tiny_world.model)], "sae-sens"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases.append((["collect", "--store", store, "--sae", str(tiny_world.sae), "--model", str(tiny_world.model),
                   "--corpus", str(empty), "--total-tokens", "1000", "--context-size", "48"], "token"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    bad_table = tmp_path / "bad.csv"
    bad_table.write_text("feature,words\n1,hello\n")
    # generate needs examples: write a tiny examples table the way collect would
    from sae_sens.schemas import make_table
    from sae_sens.store import Store

    Store(store).write_table("x", "s", "examples", make_table("examples", [
        {"feature_index": 0, "example_index": 0, "kind": "top", "max_activation": 1.0, "text": "a {{cat}}"}]))
    cases.append((["generate", "--store", store, "--run", "x", "--sae", "s", "--from-table", str(bad_table),
                   "--generator", "g"], "feature_index"))
    cases.append((["generate", "--store", store, "--run", "x", "--sae", "s", "--generator", "openai:gpt-4.1-mini"],
                  "OPENAI_API_KEY"))
    for args, needle in cases:
        code, out, err = cli(*args)
        assert code != 0, args
        # off a terminal, progress and "loading …" lines may come first (issue 16): one error line
        lines = [line for line in err.strip().splitlines() if line.startswith("error")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert needle in err, err
