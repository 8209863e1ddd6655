"""The corpus control is a control: no summary, --by, --compare, plot, HTML order or export averages
it with a generator; its figure is its own column (``control_sensitivity``) beside each generator's.
Real Parquet in a real store, real DuckDB views."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sae_sens.errors import UsageError
from sae_sens.generate.config import parse_generator
from sae_sens.report import compare, connect, summarize
from sae_sens.report.html import render_html
from sae_sens.report.saebench_export import build_outputs
from sae_sens.schemas import make_table
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.intervals import reference_interval

LLM, CONTROL = "hf:m", "corpus:demo:wiki-heldout"
SAES = {"py_4k_topk_s0": 0, "py_16k_topk_s0": 1}
N = 6


def llm_value(k: int, i: int) -> float:
    return ((3 * i + k) % 6) / 10  # tenths, 0.0 .. 0.5


def control_value(k: int, i: int) -> float:
    return 0.9 if (i + k) % 2 else 0.7


def build(root: Path, *, control_only: str | None = None) -> Store:
    store = Store(root)
    saes = dict(SAES, **({control_only: 2} if control_only else {}))
    for sae, k in saes.items():
        rows = [{"feature_index": i, "generator": CONTROL, "generated_sensitivity": control_value(k, i),
                 "original_sensitivity": 1.0, "original_sensitivity_window": 1.0, "n_generated": 10}
                for i in range(N)]
        if sae != control_only:
            # the LLM scored features 0..N-2 only: the control's column must be over those same features
            rows += [{"feature_index": i, "generator": LLM, "generated_sensitivity": llm_value(k, i),
                      "original_sensitivity": 0.5 if i == N - 1 else 1.0, "original_sensitivity_window": 1.0,
                      "n_generated": 10} for i in range(N - 1)]
        store.write_table("r", sae, "feature_stats", make_table("feature_stats", rows))
    return store


def test_by_width_is_the_generator_alone_and_the_control_its_own_column(tmp_path: Path) -> None:
    con = connect(build(tmp_path / "s"))
    rows = {r["width"]: r for r in summarize(con, ["width"]).to_pylist()}
    for sae, k in SAES.items():
        width = 4096 if sae.startswith("py_4k") else 16384
        r = rows[width]
        assert r["features"] == N - 1
        assert r["sensitivity"] == pytest.approx(np.mean([llm_value(k, i) for i in range(N - 1)]))
        assert r["control_sensitivity"] == pytest.approx(np.mean([control_value(k, i) for i in range(N - 1)]))
        assert r["control_features"] == N - 1
        assert r["generators"] == 1  # the control is not counted as one
        assert r["original_sensitivity"] == pytest.approx(1.0)  # over the same features (not feature N-1)
        # the interval is over the generator's values alone (no 0.7-0.9 control value inside)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(
            reference_interval([llm_value(k, i) for i in range(N - 1)]), rel=1e-9)


def test_the_default_summary_has_no_control_row_and_a_filter_keeps_its_column(tmp_path: Path) -> None:
    con = connect(build(tmp_path / "s", control_only="py_4k_relu_s0"))
    rows = summarize(con).to_pylist()
    gens = {(r["sae"], r["generator"]) for r in rows}
    assert gens == {("py_4k_topk_s0", LLM), ("py_16k_topk_s0", LLM), ("py_4k_relu_s0", CONTROL)}
    lonely = next(r for r in rows if r["generator"] == CONTROL)
    assert lonely["sensitivity"] is None and lonely["features"] == 0
    assert lonely["control_sensitivity"] == pytest.approx(np.mean([control_value(2, i) for i in range(N)]))
    filtered = summarize(con, generators=[LLM]).to_pylist()
    assert {r["generator"] for r in filtered} == {LLM}
    assert all(r["control_sensitivity"] is not None for r in filtered)


def test_compare_html_and_export_keep_the_control_apart(tmp_path: Path) -> None:
    store = build(tmp_path / "s")
    con = connect(store)
    c = compare(con, "py_4k_topk_s0", "py_16k_topk_s0")
    by_gen = {r["generator"] for r in c.rows.to_pylist()}
    assert by_gen == {LLM, CONTROL}  # one comparison each, never "(all)"
    llm_rows = [r for r in c.rows.to_pylist() if r["generator"] == LLM and r["sae"] == "py_4k_topk_s0"]
    assert llm_rows[0]["sensitivity"] == pytest.approx(np.mean([llm_value(0, i) for i in range(N - 1)]))

    page = render_html(con, store=store, plots=False)
    # features ordered by the generator's sensitivity, lowest first: the control's 0.7 / 0.9 do not move them
    found = re.findall(r'class="feature" id="([^"/]+/[^"/]+)/(\d+)" data-sens="([^"]+)"', page)
    shown = [(f, v) for sae, f, v in found if sae == found[0][0]]  # the page's first SAE
    values = [float(v) for _, v in shown]
    assert values == sorted(values) and len(values) == N
    assert max(values[:-1]) <= 0.5 and shown[-1][0] == str(N - 1)  # only the control scored the last one
    outputs = build_outputs(store)
    assert {g for _, _, g, _ in outputs} == {LLM}
    metrics = outputs[0][3].eval_result_metrics.sensitivity
    assert metrics.mean_control_sensitivity is not None and metrics.mean_sensitivity < 0.5
    assert "control_sensitivity" in page


def test_report_cli_json_carries_both_figures(tmp_path: Path, cli: CliRunner) -> None:
    store = build(tmp_path / "s")
    got = json.loads(cli.ok("report", "--store", str(store.root), "--by", "width", "--format", "json").out)
    assert all(set(r) >= {"sensitivity", "control_sensitivity", "control_features"} for r in got)
    assert all(r["sensitivity"] < 0.5 < r["control_sensitivity"] for r in got)


def test_an_import_cannot_take_the_controls_label() -> None:
    with pytest.raises(UsageError, match="corpus control"):
        parse_generator("corpus:mine", from_table="x.csv")
