"""A drop-in for the original tool: its command line read by ``sae-sens run``, its output folder written
by ``run --output-path`` and ``export --format original``.

The original's six CSVs and their columns are taken from its code (``src/run.py``, ``generate.py``,
``sae_gen_samples.py``, ``sae_inference.py``, ``collect_examples.py``); a notebook reads them with
pandas, so the tests do too. Its example commands (README, "Example Commands") run with the tiny
real model and token-detector SAEs substituted for the hub's, the openai client against a real
OpenAI-compatible server on 127.0.0.1.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sae_sens.cli.original_argv import translate
from tests.support.cli import CliRunner
from tests.support.openai_server import ChatServer
from tests.support.testing import TinyWorld

SECRET = "sk-test-dropin-secret-0123456789"
# the original's files and their headers, as its code writes them
HEADERS = {
    "feature_examples.csv": ["feature_index", "Top_act", "Sequence"],
    "generated_samples.csv": ["feature_index", "sample_index", "text"],
    "generation_queries_with_responses.csv": ["sae_name", "eval_name", "feature_index", "system_prompt",
                                              "user_prompt", "separator", "num_per_call", "llm_response", "status"],
    "generated_samples_with_activations.csv": ["feature_index", "sample_index", "text_annotated", "text_clean",
                                               "tokenized_text", "max_activation", "all_activations"],
    "original_examples_with_activations.csv": ["feature_index", "Top_act", "text_annotated", "text_clean",
                                               "tokenized_text", "max_activation", "all_activations"],
    "feature_stats.csv": ["feature_index", "generated_sensitivity", "original_sensitivity"],
}


# ----- the command line -------------------------------------------------------------------------
def test_sae_names_take_space_separated_values_up_to_the_next_option() -> None:
    argv, notes = translate(["run", "--model", "pythia-160m-deduped", "--sae-names", "py_4k_btopk_s0",
                             "py_4k_gated_s0", "py_4k_relu_s0", "--features", "50"])
    assert argv == ["run", "--model", "EleutherAI/pythia-160m-deduped", "--sae", "py_4k_btopk_s0",
                    "--sae", "py_4k_gated_s0", "--sae", "py_4k_relu_s0", "--features", "50"]
    assert len(notes) == 2
    assert any("--sae-names" in n and "--sae py_4k_btopk_s0 --sae py_4k_gated_s0" in n for n in notes)
    assert any("EleutherAI/pythia-160m-deduped" in n for n in notes)


def test_saebench_flag_model_names_and_aliases_are_rewritten_with_a_note_each() -> None:
    argv, notes = translate(["run", "--model=gemma-2-2b", "--sae-names=gscope_16k_l0_44", "--use-saebench-examples",
                             "--dataset-name", "Skylion007/openwebtext", "--llm-model", "gpt-4.1-mini"])
    assert argv == ["run", "--model", "google/gemma-2-2b", "--sae", "gscope_16k_l0_44", "--from-saebench",
                    "--dataset-name", "Skylion007/openwebtext", "--llm-model", "gpt-4.1-mini"]
    assert len(notes) == 5
    assert any("--from-saebench" in n for n in notes)
    assert any("--dataset-name" in n and "--corpus" in n for n in notes)
    assert any("--llm-model" in n and "--generator openai:" in n for n in notes)


def test_sae_sens_spellings_and_other_commands_pass_unchanged() -> None:
    line = ["run", "--model", "EleutherAI/pythia-160m-deduped", "--sae", "a", "--features", "5", "--verbose"]
    assert translate(line) == (line, [])
    line = ["report", "--sae-names", "x"]  # only the commands that take the original's options
    assert translate(line) == (line, [])


def test_the_notes_reach_stderr_and_an_unknown_sae_is_still_one_error_line(cli: CliRunner,
                                                                          tmp_path: Path) -> None:
    code, out, err = cli("run", "--store", str(tmp_path), "--sae-names", "py_4k_nope_s0", "--features", "2")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("note: --sae-names is the original tool's spelling")
    assert "error" in lines[-1] and "py_4k_nope_s0" in err and "Traceback" not in err


# ----- the whole drop-in: its example command, its folder ---------------------------------------
def _respond(world: TinyWorld) -> Any:
    """Answers that contain the prompt's marked word in 3 of 5 samples (the rest other words)."""
    def respond(messages: list[dict[str, Any]]) -> str:
        user = messages[-1]["content"]
        marked = re.findall(r"\{\{\s*([^{}]+?)\s*\}\}", user)
        word = next((m for m in marked if m in world.targets), world.others[0])
        samples = [f"they saw the {word} near {world.others[i]} today" for i in range(3)]
        samples += [f"the {world.others[i]} and {world.others[i + 1]}" for i in range(2)]
        return "\n<SEP>\n".join(samples)
    return respond


def _second_sae(world: TinyWorld, root: Path) -> Path:
    other = root / "sae_b"
    if not other.exists():
        shutil.copytree(world.sae, other)
    return other


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, float_precision="round_trip")  # pandas' default parser is not exact


@pytest.mark.slow  # two SAEs through collect, generate (real HTTP server) and score
def test_the_originals_example_command_writes_its_six_csvs(tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store, out_dir = tmp_path / "evals", tmp_path / "evals_original" / "my_eval"
    sae_a, sae_b = tiny_world.sae, _second_sae(tiny_world, tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with ChatServer(models=("tiny-chat",), api_key=SECRET, respond=_respond(tiny_world)) as server:
        # README "Basic Evaluation", hub model and SAEs replaced by the tiny ones, the pass made small
        code, out, err = cli("run", "--model", str(tiny_world.model), "--sae-names", str(sae_a), str(sae_b),
                             "--features", "3", "--dataset-name", str(tiny_world.corpus), "--total-tokens", "3000",
                             "--context-size", "48", "--llm-model", "tiny-chat", "--max-workers", "4",
                             "--n-top-ex-for-generation", "3", "--n-iw-ex-for-generation", "2",
                             "--output-path", str(out_dir), "--verbose",
                             "--store", str(store), "--run", "orig", "--base-url", server.base_url, "--device", "cpu")
        assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3 and {"--sae-names", "--dataset-name", "--llm-model"} == {n.split()[1] for n in notes}
    assert "started" in err and "done in" in err  # --verbose: a line per step
    assert SECRET not in err + out

    tok = tiny_world.tokenizer
    for sae in (sae_a, sae_b):
        folder = out_dir / sae.name
        assert sorted(p.name for p in folder.iterdir()) == sorted(HEADERS)
        for name, header in HEADERS.items():
            with (folder / name).open(newline="") as f:
                assert next(csv.reader(f)) == header, name

        # feature_stats.csv equals the store's numbers, as `report --sql` gives them
        sql = ("SELECT feature_index, generated_sensitivity, original_sensitivity FROM feature_stats "
               f"WHERE sae = '{sae}' AND generator = 'openai:tiny-chat' ORDER BY feature_index")
        report = cli.ok("report", "--store", str(store), "--run", "orig", "--sql", sql, "--format", "csv").out
        mine = _read(folder / "feature_stats.csv")
        theirs = pd.read_csv(io.StringIO(report), float_precision="round_trip")
        assert list(mine["feature_index"]) == list(theirs["feature_index"]) == [0, 1, 2]
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
        assert (mine["generated_sensitivity"] == 0.6).all()  # 3 of 5 answers hold the detected word
        assert (mine["original_sensitivity"] == 1.0).all()

        # generated samples: one row per sample, the store's texts
        gens = _read(folder / "generated_samples.csv")
        stored = pq.read_table(next(store.glob(f"orig/{sae.name}*/generations.parquet"))).to_pandas()
        assert sorted(gens["text"]) == sorted(stored["text"]) and len(gens) == 15

        queries = _read(folder / "generation_queries_with_responses.csv")
        assert list(queries["feature_index"]) == [0, 1, 2]
        assert set(queries["status"]) == {"Success with tiny-chat"}
        assert (queries["sae_name"] == str(sae)).all() and (queries["eval_name"] == str(out_dir)).all()
        for _, q in queries.iterrows():
            texts = list(gens[gens["feature_index"] == q["feature_index"]].sort_values("sample_index")["text"])
            assert q["llm_response"].split(q["separator"]) == texts  # the parsed samples, joined
            assert tiny_world.targets[q["feature_index"]] in q["user_prompt"]

        for name in ("generated_samples_with_activations.csv", "original_examples_with_activations.csv"):
            acts = _read(folder / name)
            assert len(acts) == 15  # 3 features x 5 samples; 3 features x (3 top + 2 iw) examples
            for _, r in acts.iterrows():
                ids, values = ast.literal_eval(r["tokenized_text"]), ast.literal_eval(r["all_activations"])
                assert ids[0] == tok.bos_token_id and len(ids) == len(values) and values[0] == 0.0
                assert tok.decode(ids[1:]) == r["text_clean"]
                assert max(values) == r["max_activation"]
                # the detected word's token fires, nothing else does
                word = " " + tiny_world.targets[r["feature_index"]]
                assert (r["max_activation"] > 1e-6) == (word in r["text_clean"])

        # the examples: per-token marks on the detected word, the same rows scored as originals
        examples = _read(folder / "feature_examples.csv")
        originals = _read(folder / "original_examples_with_activations.csv")
        assert list(examples["Sequence"]) == list(originals["text_annotated"])
        assert list(examples["Top_act"]) == list(originals["Top_act"])
        for _, e in examples.iterrows():
            assert "{{ " + tiny_world.targets[e["feature_index"]] + "}}" in e["Sequence"]
        for _, group in examples.groupby("feature_index"):
            assert list(group["Top_act"]) == sorted(group["Top_act"], reverse=True)  # strongest first
        assert [s.replace("{{", "").replace("}}", "") for s in examples["Sequence"]] == list(originals["text_clean"])

    # export writes the same files from the store, one folder per run × generator
    exported = tmp_path / "exported"
    cli.ok("export", "--store", str(store), "--run", "orig", "--format", "original", "-o", str(exported))
    for sae in (sae_a, sae_b):
        there = exported / "orig" / "openai-tiny-chat" / sae.name
        for name in HEADERS:
            if name == "generation_queries_with_responses.csv":  # eval_name names the folder
                assert _read(there / name).drop(columns="eval_name").equals(
                    _read(out_dir / sae.name / name).drop(columns="eval_name"))
            else:
                assert (there / name).read_bytes() == (out_dir / sae.name / name).read_bytes(), name


def _saebench_fixture(world: TinyWorld, path: Path) -> Path:
    """A SAEBench autointerp results file for latents 0 and 1 of the tiny SAE (its log table layout)."""
    def logs(word: str) -> str:
        rows = [f"│ {9.5 - i:.3f} │ we saw the<< {word}>> and {world.others[i]} │" for i in range(4)]
        return "Generation phase\n┌─────────┬──────────┐\n│ Top act │ Sequence │\n├─────────┼──────────┤\n" + \
            "\n".join(rows) + "\n└─────────┴──────────┘\nScoring phase\n"
    data = {"eval_result_unstructured": {str(i): {"logs": logs(world.targets[i])} for i in (0, 1)}}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow  # generate (real HTTP server) and score on the imported examples
def test_the_saebench_example_command_imports_its_examples(tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store, out_dir = tmp_path / "evals", tmp_path / "out"
    fixture = _saebench_fixture(tiny_world, tmp_path / "autointerp.json")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with ChatServer(models=("tiny-chat",), api_key=SECRET, respond=_respond(tiny_world)) as server:
        # README "Using Pre-computed SAEBench Examples"; the published file given locally (no hub here)
        code, out, err = cli("run", "--model", str(tiny_world.model), "--sae-names", str(tiny_world.sae),
                             "--use-saebench-examples", "--saebench-file", str(fixture), "--features", "100",
                             "--n-top-ex-for-generation", "3", "--llm-model", "tiny-chat",
                             "--output-path", str(out_dir), "--store", str(store), "--base-url", server.base_url,
                             "--device", "cpu")
        assert code == 0, err
    assert any(line.startswith("note: --use-saebench-examples") for line in err.splitlines())
    folder = out_dir / tiny_world.sae.name
    examples = _read(folder / "feature_examples.csv")
    assert list(examples["feature_index"]) == [0] * 4 + [1] * 4
    assert examples["Sequence"].iloc[0] == f"we saw the{{{{ {tiny_world.targets[0]}}}}} and {tiny_world.others[0]}"
    assert list(examples["Top_act"].iloc[:4]) == [9.5, 8.5, 7.5, 6.5]
    stats = _read(folder / "feature_stats.csv")
    assert list(stats["feature_index"]) == [0, 1] and (stats["original_sensitivity"] == 1.0).all()


def test_sequence_marks_each_active_token_on_its_own_as_the_originals_builder() -> None:
    from sae_sens.score import original_builder_text, original_marked_text

    toks, acts = [" on", " 29", " October", "\n", "1787", "\ufffd", "."], [0.0, 0.5, 2.0, 0.0, 3.0, 0.0, 0.001]
    assert original_marked_text(toks, acts, 0.01) == " on{{ 29}}{{ October}}↵{{1787}}."
    assert original_builder_text(toks, acts, 0.01) == " on 29 October↵1787."  # what score scores
    assert original_marked_text(toks, None, 0.01) == " on 29 October↵1787."  # no activations: no marks


# ----- round trip ---------------------------------------------------------------------------------
@pytest.mark.slow  # collect and score on the tiny world
def test_an_original_generated_samples_csv_round_trips(tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner) -> None:
    texts = ["plain text", 'with "quotes", commas, and\na newline', "  leading spaces", "42", "ünïcödé ✓ 日本",
             "marks {{kept}} as written", "tab\tinside", "trailing newline\n"]
    samples = pd.DataFrame([{"feature_index": f, "sample_index": i, "text": t}
                            for f in (0, 1, 2) for i, t in enumerate(texts)])
    theirs = tmp_path / "generated_samples.csv"
    samples.to_csv(theirs, index=False)  # exactly as the original writes it

    store = tmp_path / "evals"
    common = ["--store", str(store), "--run", "rt", "--sae", str(tiny_world.sae)]
    cli.ok("collect", *common, "--model", str(tiny_world.model), "--device", "cpu", "--corpus", str(tiny_world.corpus),
           "--total-tokens", "3000", "--context-size", "48", "--feature-ids", "0,1,2")
    cli.ok("generate", *common, "--from-table", str(theirs), "--generator", "theirs")
    cli.ok("score", *common, "--model", str(tiny_world.model), "--device", "cpu")
    out = tmp_path / "back"
    cli.ok("export", "--store", str(store), "--run", "rt", "--format", "original", "-o", str(out))
    ours = out / "rt" / "theirs" / tiny_world.sae.name / "generated_samples.csv"
    assert ours.read_bytes() == theirs.read_bytes()
    assert pd.read_csv(ours)["text"].tolist() == pd.read_csv(theirs)["text"].tolist()


@pytest.mark.slow  # a small run on the tiny world
def test_run_takes_collects_seed_and_alive_rule(tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner) -> None:
    store = tmp_path / "evals"
    texts = tmp_path / "t.csv"
    texts.write_text("feature_index,text\n0,the cat\n1,a dog\n2,the sun\n")
    cli.ok("run", "--store", str(store), "--run", "s", "--sae", str(tiny_world.sae), "--model", str(tiny_world.model),
           "--device", "cpu", "--corpus", str(tiny_world.corpus), "--total-tokens", "3000", "--context-size", "48",
           "--features", "2", "--seed", "7", "--alive-rule", "count", "--dead-min-firings", "3",
           "--from-table", str(texts), "--generator", "mine")
    manifest = json.loads(next(store.glob("s/*/manifest.json")).read_text())
    cfg = manifest["stages"]["collect"]["config"]
    assert (cfg["seed"], cfg["alive_rule"], cfg["dead_min_firings"]) == (7, "count", 3)
