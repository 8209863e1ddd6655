"""`sae-sens show`: one feature from a real store (Parquet written by the store), rendered by rich,
with highlighted tokens, stats and flags."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sae_sens.cli.show_cmd import load_feature, render
from sae_sens.schemas import make_table
from sae_sens.store import Store
from tests.support.cli import CliRunner

RUN, SAE, FEATURE = "demo", "smol_576_topk", 25


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "evals")
    st.write_table(RUN, SAE, "features", make_table("features", [
        {"feature_index": i, "frequency": 0.002, "n_firings": 40 + i, "max_activation": 9.5, "top_activation": 8.0,
         "alive": True, "selected": i in (3, FEATURE)} for i in range(30)]))
    st.write_table(RUN, SAE, "examples", make_table("examples", [
        {"feature_index": FEATURE, "example_index": 0, "kind": "top", "max_activation": 8.0,
         "text": " in{{ 1637}}.", "tokens": [" in", " 1637", "."], "activations": [0.0, 8.0, 0.01]},
        {"feature_index": FEATURE, "example_index": 1, "kind": "iw", "max_activation": 2.0,
         "text": " High{{ Baroque}} era", "tokens": [" High", " Baroque", " era"], "activations": [0.0, 2.0, 0.0]},
        {"feature_index": 3, "example_index": 0, "kind": "top", "max_activation": 1.0,
         "text": "{{x}}", "tokens": ["x"], "activations": [1.0]},
    ]))
    st.write_table(RUN, SAE, "queries", make_table("queries", [
        {"feature_index": FEATURE, "generator": "hf:demo:smollm2", "status": "ok", "n_parsed": 3,
         "parse_method": "single"},
        {"feature_index": FEATURE, "generator": "openai:gpt", "status": "ok", "n_parsed": 10,
         "parse_method": "separator"},
    ]))
    gens = [{"feature_index": FEATURE, "generator": "hf:demo:smollm2", "sample_index": k, "text": t}
            for k, t in enumerate(["Built in 1492.", "Nothing here", "In 1066 and 1215.",
                                   "Here are 3 samples that match the pattern:"])]
    gens += [{"feature_index": FEATURE, "generator": "openai:gpt", "sample_index": k, "text": f"Year {1900 + k}."}
             for k in range(10)]
    st.write_table(RUN, SAE, "generations", make_table("generations", gens))
    scores = [
        {"feature_index": FEATURE, "source": "generated", "variant": "generated", "generator": "hf:demo:smollm2",
         "sample_index": 0, "text": "Built in 1492.", "max_activation": 4.0, "active": True, "frac_of_top": 0.5,
         "tokens": ["Built", " in", " 1492", "."], "activations": [0.0, 0.0, 4.0, 0.0], "empty": False},
        {"feature_index": FEATURE, "source": "generated", "variant": "generated", "generator": "hf:demo:smollm2",
         "sample_index": 1, "text": "Nothing here", "max_activation": 0.0, "active": False, "frac_of_top": 0.0,
         "tokens": ["Nothing", " here"], "activations": [0.0, 0.0], "empty": False},
        {"feature_index": FEATURE, "source": "generated", "variant": "generated", "generator": "hf:demo:smollm2",
         "sample_index": 2, "text": "In 1066 and 1215.", "max_activation": 6.0, "active": True, "frac_of_top": 0.75,
         "tokens": ["In", " 1066", " and", " 1215", "."], "activations": [0.0, 6.0, 0.0, 5.0, 0.0], "empty": False,
         "truncated": True},
        {"feature_index": FEATURE, "source": "original", "variant": "text", "generator": "", "sample_index": 0,
         "active": True, "max_activation": 7.0},
        {"feature_index": FEATURE, "source": "original", "variant": "window", "generator": "", "sample_index": 1,
         "active": False, "max_activation": 0.0},
    ]
    st.write_table(RUN, SAE, "scores", make_table("scores", scores))
    st.write_table(RUN, SAE, "feature_stats", make_table("feature_stats", [
        {"feature_index": FEATURE, "generator": "hf:demo:smollm2", "generated_sensitivity": 2 / 3,
         "original_sensitivity": 0.5, "original_sensitivity_window": 0.5, "n_generated": 3, "n_truncated": 1,
         "top_activation": 8.0},
        {"feature_index": FEATURE, "generator": "openai:gpt", "generated_sensitivity": 0.9,
         "original_sensitivity": 0.5, "n_generated": 10, "top_activation": 8.0},
    ]))
    return st


def test_show_marks_tokens_and_flags_off_a_terminal(store: Store, cli: CliRunner) -> None:
    code, out, err = cli("show", "--store", str(store.root), "--run", RUN, "--sae", SAE, str(FEATURE))
    assert code == 0, err
    lines = out.splitlines()
    assert f"{SAE} · feature {FEATURE} · run {RUN}" in lines[0]
    assert "65 firings" in out and "alive" in out
    # examples: strong tokens marked as in the examples' own text; scored variants shown
    assert any(line.split()[:3] == ["top", "8", "t✓"] and line.endswith(" in{{ 1637}}.") for line in lines)
    assert any(line.endswith(" High{{ Baroque}} era") and "w✗" in line for line in lines)
    # generated: active mark, max activation, share of the top, tokens marked (two separate runs)
    assert any(line.startswith("✓       4  50%") and line.endswith("Built in{{ 1492}}.") for line in lines)
    assert any("In{{ 1066}} and{{ 1215}}." in line and "[truncated]" in line for line in lines)
    assert any(line.startswith("✗       0   0%") and line.endswith("Nothing here") for line in lines)
    # the flags of the few-sample, separator-ignoring generator, not of the other
    hf = next(line for line in lines if "hf:demo:smollm2" in line and "0.667" in line)
    assert "n = 3" in hf and "parsed by single" in hf and "1 truncated" in hf and "1 look like preamble" in hf
    assert any(line.endswith("Here are 3 samples that match the pattern:  [preamble?]") for line in lines)
    gpt = next(line for line in lines if line.lstrip("│ ").startswith("openai:gpt"))
    assert "0.9" in gpt and "n =" not in gpt and "parsed" not in gpt
    assert "generated by openai:gpt (10 samples)" in out and "Year 1909." in out
    assert "t✓ / t✗: fires or not on the re-tokenised text" in out  # the marks explained
    assert "…" not in out  # a generator's name folds, never cut


def test_show_limits_samples_and_filters_generators(store: Store, cli: CliRunner) -> None:
    code, out, _ = cli("show", "--store", str(store.root), "-r", RUN, "-s", SAE, str(FEATURE),
                      "-g", "openai:gpt", "--samples", "2")
    assert code == 0
    assert "hf:demo:smollm2" not in out and "Year 1901." in out and "Year 1902." not in out


def test_show_highlights_with_colour_on_a_terminal(store: Store) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="truecolor", width=200)
    render(load_feature(store, RUN, SAE, FEATURE), console)
    text = buf.getvalue()
    assert "{{" not in text  # shading instead of marks
    # " 1637" at the top activation: the darkest shade; " 1492" at half of it: a lighter one
    assert "\x1b[30;48;2;255;140;0m 1637" in text
    assert "\x1b[30;48;2;255;187;100m 1492" in text
    assert "\x1b[30;48;2" not in text.split("Nothing")[1].split("\n")[0]  # an inactive sample: no shade


def test_show_unknown_feature_and_wrong_run_are_one_line(store: Store, cli: CliRunner) -> None:
    code, out, err = cli("show", "--store", str(store.root), "--run", RUN, "--sae", SAE, "7")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "feature 7 has no examples" in err and "3, 25" in err and "--feature-ids 7" in err
    code, _, err = cli("show", "--store", str(store.root), "--sae", SAE, str(FEATURE))
    assert code == 1 and "did you mean --run demo?" in err
    code, _, err = cli("show", "--store", str(store.root), "--sae", "other", "1")
    assert code == 2 and f"SAEs there: {SAE}" in err
    # the same unknown SAE exits as report's does
    assert cli("report", "--store", str(store.root), "--run", RUN, "--sae", "other").code == code
    code, _, err = cli("show", "--store", str(store.root), "--sae", SAE, "x")
    assert code == 2 and "'feature'" in err and "integer" in err and "Traceback" not in err


def test_show_format_json_holds_every_row_of_the_view(store: Store, cli: CliRunner) -> None:
    import json

    from sae_sens.cli.show_cmd import load_feature

    out = cli.ok("show", "--store", str(store.root), "--run", RUN, "--sae", SAE, str(FEATURE), "--format", "json").out
    data = json.loads(out)
    view = load_feature(store, RUN, SAE, FEATURE)
    assert (data["run"], data["sae"], data["feature"]) == (RUN, SAE, FEATURE)
    assert len(data["generations"]) == len(view.generations) == 14 and len(data["scores"]) == len(view.scores)
    assert {s["generator"]: s["generated_sensitivity"] for s in data["stats"]} == {
        "hf:demo:smollm2": pytest.approx(2 / 3), "openai:gpt": 0.9}
    assert data["examples"][0]["tokens"] == [" in", " 1637", "."] and data["top_activation"] == 8.0
    capped = json.loads(cli.ok("show", "--store", str(store.root), "--run", RUN, "--sae", SAE, str(FEATURE),
                               "--format", "json", "--samples", "2").out)
    assert {(g["generator"], g["sample_index"]) for g in capped["generations"]} == {
        ("hf:demo:smollm2", 0), ("hf:demo:smollm2", 1), ("openai:gpt", 0), ("openai:gpt", 1)}
    assert [r["sample_index"] for r in capped["scores"] if r["source"] == "generated"] == [0, 1]
    code, _, err = cli("show", "--store", str(store.root), "--run", RUN, "--sae", SAE, str(FEATURE), "--format", "xml")
    assert code == 2 and "--format json" in err


def test_every_data_command_speaks_json_and_pipes_tsv(store: Store, cli: CliRunner) -> None:
    import json

    s = ["--store", str(store.root)]
    for args in (["report", *s, "--run", RUN], ["runs", *s], ["saes"], ["show", *s, "--run", RUN, "--sae", SAE,
                                                                       str(FEATURE)]):
        data = json.loads(cli.ok(*args, "--format", "json").out)
        assert data, args
        if args[0] != "show":  # a table: piped, it is TSV with a header line
            lines = cli.ok(*args).out.splitlines()
            assert lines and "\t" in lines[0] and "│" not in "".join(lines), args
