"""Report: DuckDB views over a real store, summaries, bootstrap intervals, comparisons, plots,
HTML, the SQL shell, and the `report` / `sql` commands end to end (real Parquet, real DuckDB)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import struct
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from sae_sens.cli import output as cli_output
from sae_sens.errors import MissingTableError, SqlError, UsageError
from sae_sens.report import (
    bootstrap_mean_ci,
    compare,
    connect,
    parse_sae_name,
    query,
    require_results,
    summarize,
    write_snapshot_sql,
)
from sae_sens.report.html import render_html
from sae_sens.report.plot import DPI, FIGSIZE, HIST_WIDTH, hist_height, hist_path
from sae_sens.report.shell import sql_shell
from sae_sens.report.summary import looks_like_preamble, summary_warnings
from sae_sens.report.views import META_VIEWS, TABLE_VIEWS, parse_width
from sae_sens.schemas import SCHEMAS, make_table
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.intervals import reference_interval

RUN = "r1"
SAES = ("py_4k_topk_s0", "py_16k_topk_s0", "py_4k_relu_s0")
GENERATORS = ("g1", "g2")
N_FEATURES = 10


def sensitivity(k: int, j: int, i: int) -> float:
    """Known generated sensitivity of feature i of SAE k under generator j (tenths, as with 10 samples)."""
    return ((i * (k + 1) + 3 * j) % 11) / 10


def original(k: int, i: int) -> float:
    return 1.0 if (i + k) % 4 else 0.8


def build_store(root: Path) -> Store:
    store = Store(root)
    for k, sae in enumerate(SAES):
        stats = [
            {"feature_index": i, "generator": g, "generated_sensitivity": sensitivity(k, j, i),
             "original_sensitivity": original(k, i), "original_sensitivity_window": 1.0,
             "n_generated": 10, "n_original": 15, "top_activation": 4.0}
            for i in range(N_FEATURES) for j, g in enumerate(GENERATORS)
        ]
        store.write_table(RUN, sae, "feature_stats", make_table("feature_stats", stats))
        examples = [
            {"feature_index": i, "example_index": e, "kind": "top", "max_activation": 4.0,
             "text": "x {{<evil>}} y", "tokens": ["x", " <evil>", f" y{e}"], "activations": [0.0, 4.0, 1.0]}
            for i in range(N_FEATURES) for e in range(2)
        ]
        store.write_table(RUN, sae, "examples", make_table("examples", examples))
        scores = [
            {"feature_index": i, "source": "generated", "variant": "generated", "generator": g, "sample_index": s,
             "text": f"{sae} f{i} {g} s{s} <&>", "max_activation": float(s), "active": s > 0,
             "activations": [0.0, float(s), 0.5]}
            for i in range(N_FEATURES) for g in GENERATORS for s in range(3)
        ] + [
            {"feature_index": i, "source": "original", "variant": "text", "generator": "", "sample_index": e,
             "text": "x <evil> y", "max_activation": 2.0, "active": True, "activations": [0.0, 2.0]}
            for i in range(N_FEATURES) for e in range(2)
        ]
        store.write_table(RUN, sae, "scores", make_table("scores", scores))
    return store


def expected_mean(k: int, j: int) -> float:
    return float(np.mean([sensitivity(k, j, i) for i in range(N_FEATURES)]))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return build_store(tmp_path / "evals")


@pytest.fixture
def con(store: Store) -> duckdb.DuckDBPyConnection:
    return connect(store)


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables are squeezed to 80 columns off a terminal; give them room so numbers stay whole."""
    monkeypatch.setattr(cli_output.console, "_width", 400)


# ----- names and views -------------------------------------------------------------------------


def test_parse_sae_name_grammars() -> None:
    assert parse_sae_name("py_65k_matbtopk_s5") == {
        "model": "EleutherAI/pythia-160m-deduped", "width": 65536, "architecture": "matbtopk",
        "sparsity": "s5", "source": "saebench"}
    assert parse_sae_name("gem_16k_jumprelu_s1")["model"] == "google/gemma-2-2b"
    g = parse_sae_name("gscope_layer5_131k_l0_82")
    assert (g["width"], g["architecture"], g["sparsity"], g["l0"], g["layer"]) == (131072, "jumprelu", "l0_82", 82, 5)
    assert parse_sae_name("gscope_16k_l0_44")["width"] == 16384
    assert parse_sae_name("smol_1k_topk") == {"width": 1024, "architecture": "topk"}
    assert parse_sae_name("/some/folder/smol_4k_relu/")["architecture"] == "relu"
    assert parse_sae_name("my-sae") == {}
    assert [parse_width(w) for w in ("4k", "65k", "1m", "3k", "4096")] == [4096, 65536, 1 << 20, 3000, 4096]


def test_empty_store_has_every_view_with_schema_columns(tmp_path: Path) -> None:
    con = connect(Store(tmp_path / "nothing-here"))
    for table in TABLE_VIEWS:
        described = {r[0]: r[1] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        assert list(described) == ["run", "sae", *SCHEMAS[table].names]
        assert query(con, f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py() == 0
    assert con.execute("DESCRIBE scores").fetchall()[-1][1] == "FLOAT[]"
    for meta in ("saes", "runs", "stages"):
        assert query(con, f"SELECT * FROM {meta}").num_rows == 0


def test_views_read_every_sae_and_keep_missing_columns(store: Store) -> None:
    con = connect(store)
    n = {t: query(con, f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py() for t in TABLE_VIEWS}
    assert n["feature_stats"] == len(SAES) * N_FEATURES * len(GENERATORS)
    assert n["examples"] == len(SAES) * N_FEATURES * 2
    assert n["generations"] == n["queries"] == n["features"] == 0  # not run: empty, not an error
    rows = query(con, "SELECT sae, count(DISTINCT feature_index) AS f FROM feature_stats GROUP BY sae ORDER BY sae")
    assert rows.to_pydict() == {"sae": sorted(SAES), "f": [N_FEATURES] * 3}
    # --run / --sae restrict every view
    only = connect(store, runs=[RUN], saes=["py_4k_relu_s0"])
    assert query(only, "SELECT DISTINCT sae FROM feature_stats").column(0).to_pylist() == ["py_4k_relu_s0"]
    assert query(only, "SELECT sae FROM saes").column(0).to_pylist() == ["py_4k_relu_s0"]
    with pytest.raises(UsageError) as e:
        connect(store, runs=["other"])
    assert "no run 'other'" in e.value.one_line() and "runs there: r1" in e.value.one_line()
    with pytest.raises(UsageError) as e:
        connect(store, saes=["py_4k_typo"])
    assert "no SAE 'py_4k_typo'" in e.value.one_line() and "SAEs there: py_16k_topk_s0" in e.value.one_line()


def test_saes_view_parses_names_and_prefers_manifest_info(store: Store) -> None:
    manifest = store.manifest(RUN, "smol_1k_topk")
    manifest.data["sae_info"] = {"name": "smol_1k_topk", "source": "demo", "format": "dictionary_learning",
                                 "architecture": "topk", "model_id": "demo:smollm2", "layer": 3,
                                 "hook": "blocks.3.hook_resid_post", "width": 1000, "d_in": 64, "d_sae": 1000,
                                 "eval_results": {"core": {"sparsity": {"l0": 31.5}}}}
    manifest.save()
    manifest = store.manifest(RUN, "mysae")
    manifest.data["sae_info"] = {"name": "mysae", "architecture": "relu", "d_sae": 2048, "sparsity": 3,
                                 "layer": "not a number"}
    manifest.save()
    con = connect(store)
    saes = {r["sae"]: r for r in query(con, "SELECT * FROM saes").to_pylist()}
    assert saes["py_16k_topk_s0"]["width"] == 16384 and saes["py_16k_topk_s0"]["sparsity"] == "s0"
    assert saes["py_4k_relu_s0"]["architecture"] == "relu"
    smol = saes["smol_1k_topk"]
    assert (smol["model"], smol["width"], smol["layer"], smol["l0"], smol["d_in"]) == ("demo:smollm2", 1000, 3, 31.5, 64)
    mine = saes["mysae"]
    assert (mine["width"], mine["architecture"], mine["sparsity"], mine["layer"]) == (2048, "relu", "3", None)
    grouped = query(con, "SELECT width, architecture, count(*) AS n FROM saes WHERE sae LIKE 'py%' "
                         "GROUP BY width, architecture ORDER BY ALL").to_pylist()
    assert grouped == [{"width": 4096, "architecture": "relu", "n": 1}, {"width": 4096, "architecture": "topk", "n": 1},
                       {"width": 16384, "architecture": "topk", "n": 1}]


def test_runs_view_shows_stage_status(store: Store) -> None:
    store.record_stage(RUN, SAES[0], "score", config={"threshold": 1e-6}, inputs={},
                       outputs={"feature_stats": None}, started_at="2026-01-01T00:00:00+00:00")
    runs = {r["sae"]: r for r in query(connect(store), "SELECT * FROM runs").to_pylist()}
    assert (runs[SAES[0]]["score"], runs[SAES[0]]["collect"]) == ("done", "missing")
    assert runs[SAES[0]]["score_finished_at"] is not None
    assert runs[SAES[1]]["score"] == "missing"
    # the stage's output changes behind its back: stale
    store.write_table(RUN, SAES[0], "feature_stats", make_table("feature_stats", [{"feature_index": 0}]))
    con = connect(store)
    assert query(con, "SELECT score FROM runs WHERE sae = ?", [SAES[0]]).column(0)[0].as_py() == "stale"
    assert query(con, "SELECT stage, status, rows FROM stages").to_pylist() == [
        {"stage": "score", "status": "stale", "rows": len(GENERATORS) * N_FEATURES}]


def test_snapshot_sql_copies_the_same_views_for_the_duckdb_cli(store: Store, tmp_path: Path) -> None:
    build = write_snapshot_sql(store, tmp_path / "snap")
    fresh = duckdb.connect()
    fresh.execute(build.read_text())
    assert {r[0] for r in fresh.execute("SELECT table_name FROM duckdb_tables()").fetchall()} == {
        *TABLE_VIEWS, *META_VIEWS}
    sql = "SELECT s.width, count(*) FROM feature_stats f JOIN saes s USING (run, sae) GROUP BY ALL ORDER BY ALL"
    assert fresh.execute(sql).fetchall() == connect(store).execute(sql).fetchall() == [(4096, 40), (16384, 20)]


# ----- bootstrap and summaries -----------------------------------------------------------------


def test_bootstrap_interval_contains_mean_and_narrows_with_more_features() -> None:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 11, 20) / 10
    large = rng.integers(0, 11, 2000) / 10
    groups = np.r_[np.zeros(small.size, int), np.ones(large.size, int)]
    low, high = bootstrap_mean_ci(groups, np.r_[small, large], 3)
    for g, v in enumerate((small, large)):
        assert low[g] < v.mean() < high[g]
    assert (high[1] - low[1]) < (high[0] - low[0]) / 4  # ~ 1/sqrt(100) as wide
    assert np.isnan(low[2]) and np.isnan(high[2])  # a group without values
    again = bootstrap_mean_ci(groups, np.r_[small, large], 3)
    assert np.array_equal(low, again[0], equal_nan=True)  # seeded


def naive_interval(v: np.ndarray, n_resamples: int = 40_000) -> np.ndarray:
    means = v[np.random.default_rng(2).integers(0, v.size, (n_resamples, v.size))].mean(axis=1)
    return np.quantile(means, [0.025, 0.975])


def test_bootstrap_exact_and_resampled_paths_match_index_resampling() -> None:
    tenths = np.array([0.0, 0.1, 0.1, 0.5, 0.9, 1.0, 1.0, 0.3, 0.3, 0.3])  # on a lattice: exact path
    thirds = np.array([-1 / 3, 0.0, 1 / 3, 2 / 3, 2 / 3, 1.0])
    irrational = np.sqrt(np.arange(2, 14)) / 4  # on no lattice: resampled path
    for v in (tenths, thirds, irrational):
        ref = naive_interval(v)
        for exact in (True, False):
            low, high = bootstrap_mean_ci(np.zeros(v.size, int), v, n_resamples=40_000, seed=1, exact=exact)
            assert (low[0], high[0]) == (pytest.approx(ref[0], abs=0.012), pytest.approx(ref[1], abs=0.012))
    constant = bootstrap_mean_ci(np.zeros(5, int), np.full(5, 0.4))
    assert constant[0][0] == pytest.approx(0.4) and constant[1][0] == pytest.approx(0.4)


def test_bootstrap_paths_agree_on_many_large_groups() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 3000, 40)
    groups = np.repeat(np.arange(sizes.size), sizes)
    values = rng.binomial(10, rng.random(sizes.size)[groups]) / 10
    exact = bootstrap_mean_ci(groups, values)
    resampled = bootstrap_mean_ci(groups, values, n_resamples=4000, exact=False)
    assert np.abs(exact[0] - resampled[0]).max() < 0.02 and np.abs(exact[1] - resampled[1]).max() < 0.02
    means = np.bincount(groups, values) / sizes
    assert np.all(exact[0] <= means + 1e-12) and np.all(means <= exact[1] + 1e-12)
    rare = np.r_[np.zeros(1995), np.full(5, 0.7)]  # skewed: the FFT window must still hold the tail
    one = np.zeros(rare.size, int)
    assert np.concatenate(bootstrap_mean_ci(one, rare)) == pytest.approx(
        np.concatenate(bootstrap_mean_ci(one, rare, n_resamples=40_000, exact=False)), abs=2e-4)


def test_summary_per_sae_and_generator(con: duckdb.DuckDBPyConnection) -> None:
    rows = summarize(con).to_pylist()
    assert len(rows) == len(SAES) * len(GENERATORS)
    for r in rows:
        k, j = SAES.index(r["sae"]), GENERATORS.index(r["generator"])
        vals = [sensitivity(k, j, i) for i in range(N_FEATURES)]
        assert r["features"] == N_FEATURES
        assert r["sensitivity"] == pytest.approx(np.mean(vals))
        assert r["ci_low"] <= r["sensitivity"] <= r["ci_high"]
        assert r["share_below_half"] == pytest.approx(np.mean(np.array(vals) < 0.5))
        assert r["original_sensitivity"] == pytest.approx(np.mean([original(k, i) for i in range(N_FEATURES)]))
        assert r["original_sensitivity_window"] == 1.0
        assert r["model"] == "EleutherAI/pythia-160m-deduped"
        assert (r["width"], r["architecture"], r["sparsity"]) == (parse_sae_name(r["sae"])["width"],
                                                                   r["sae"].split("_")[2], "s0")
    only_g2 = summarize(con, generators=["g2"])
    assert set(only_g2.column("generator").to_pylist()) == {"g2"}


def test_summary_by_architecture_pools_features(con: duckdb.DuckDBPyConnection) -> None:
    by = {r["architecture"]: r for r in summarize(con, ["architecture"]).to_pylist()}
    # issue 16: a feature of one SAE is one unit; its two generators' sensitivities are averaged first
    topk = [np.mean([sensitivity(k, j, i) for j in (0, 1)]) for k in (0, 1) for i in range(N_FEATURES)]
    assert by["topk"]["saes"] == 2 and by["topk"]["features"] == len(topk) == 2 * N_FEATURES
    assert by["topk"]["generators"] == 2
    assert by["topk"]["sensitivity"] == pytest.approx(np.mean(topk))
    assert by["topk"]["share_below_half"] == pytest.approx(np.mean(np.array(topk) < 0.5))
    assert (by["topk"]["ci_low"], by["topk"]["ci_high"]) == pytest.approx(reference_interval(topk), rel=1e-9)
    assert by["relu"]["saes"] == 1
    two = summarize(con, ["width", "generator"]).to_pylist()
    assert [(r["width"], r["generator"]) for r in two] == [(4096, "g1"), (4096, "g2"), (16384, "g1"), (16384, "g2")]
    with pytest.raises(UsageError, match="cannot group by"):
        summarize(con, ["colour"])


def test_compare_generators_and_saes(con: duckdb.DuckDBPyConnection) -> None:
    c = compare(con, "g1", "g2")
    assert c.dimension == "generator" and c.rows.num_rows == len(SAES) * N_FEATURES
    r = c.rows.to_pylist()[0]
    k = SAES.index(r["sae"])
    assert (r["g1"], r["g2"]) == (sensitivity(k, 0, r["feature_index"]), sensitivity(k, 1, r["feature_index"]))
    assert r["diff"] == pytest.approx(r["g2"] - r["g1"])
    assert f"{len(SAES) * N_FEATURES} shared" in c.summary and "\n" not in c.summary
    # issue 16: two SAEs are compared as distributions, per shared generator (see the tests below)
    s = compare(con, SAES[0], SAES[2])
    assert s.dimension == "sae" and s.rows.column_names[:4] == ["generator", "sae", "features", "sensitivity"]
    g1 = [r for r in s.rows.to_pylist() if r["generator"] == "g1"]
    assert [r["sae"] for r in g1] == [SAES[0], SAES[2], "b - a"]
    assert g1[0]["sensitivity"] == pytest.approx(expected_mean(0, 0))
    assert g1[2]["sensitivity"] == pytest.approx(expected_mean(2, 0) - expected_mean(0, 0))
    with pytest.raises(UsageError, match="cannot compare"):
        compare(con, "g1", SAES[0])


def test_sql_errors_are_one_clear_line(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(SqlError) as e:
        query(con, "SELECT no_such_column FROM scores")
    line = e.value.one_line()
    assert "no_such_column" in line and "\n" not in line and "LINE 1" not in line
    with pytest.raises(SqlError, match="syntax error"):
        query(con, "SELEC 1")


def test_html_shows_each_features_samples_highlighted(con: duckdb.DuckDBPyConnection) -> None:
    page = render_html(con)
    for sae in SAES:
        for i in range(N_FEATURES):
            assert f"{sae} f{i} g1 s2 &lt;&amp;&gt;" in page  # every generated sample, escaped
    assert "<evil>" not in page and "&lt;evil&gt;" in page  # tokens escaped too
    assert 'style="background:rgba(255,140,0,1.00)" title="4">' in page  # the peak token at full strength
    assert 'style="background:rgba(255,140,0,0.25)" title="1">' in page  # a weaker one, lighter
    assert page.count('class="feature"') == len(SAES) * N_FEATURES
    assert page.count('title="re-tokenised text, as the original code">t<span class="on">✓') == len(SAES) * N_FEATURES * 2
    assert 'title="exact window"' not in page  # that variant was not scored in this store
    # least sensitive feature first, within each SAE (sections follow the SAE names' order)
    k = SAES.index(sorted(SAES)[0])
    order = [int(m) for m in re.findall(rf'id="[^"/]+/{re.escape(sorted(SAES)[0])}/(\d+)"', page)]
    means = {i: np.mean([sensitivity(k, j, i) for j in (0, 1)]) for i in range(N_FEATURES)}
    assert order == sorted(range(N_FEATURES), key=lambda i: (means[i], i))


# ----- the SQL shell ---------------------------------------------------------------------------


def test_sql_shell_runs_statements_and_reports_errors(con: duckdb.DuckDBPyConnection) -> None:
    shown, notes = [], []
    lines = ["SELECT sae, count(*) AS n", "FROM feature_stats GROUP BY sae ORDER BY sae;", "SELECT nope;",
             ".tables", ".quit", "SELECT 1;"]
    ok = sql_shell(con, iter(lines), show=shown.append, note=notes.append)
    assert ok == 1
    assert shown[0].to_pydict() == {"sae": sorted(SAES), "n": [N_FEATURES * 2] * 3}
    assert "feature_stats" in shown[1].column("view").to_pylist()
    assert len(notes) == 1 and "nope" in notes[0]  # after .quit nothing runs


# ----- the CLI ---------------------------------------------------------------------------------


def assert_rows_close(got: list[dict], expected: list[dict]) -> None:
    """Rows equal, floats to the last bits: DuckDB's parallel avg() adds in no fixed order."""
    assert [sorted(g) for g in got] == [sorted(e) for e in expected]
    for g, e in zip(got, expected, strict=True):
        for k, v in e.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-12, nan_ok=True), k
            else:
                assert g[k] == v, k


def summary_rows(store: Store) -> list[dict]:
    return summarize(connect(store)).to_pylist()


def test_cli_formats_parse_back_to_the_same_numbers(
    store: Store, cli: CliRunner, wide_console: None, tmp_path: Path
) -> None:
    expected = summary_rows(store)
    numeric = ("features", "sensitivity", "ci_low", "ci_high", "original_sensitivity", "share_below_half")

    got = list(csv.DictReader(io.StringIO(cli.ok("report", "--store", str(store.root), "--format", "csv").out)))
    assert [r["sae"] for r in got] == [r["sae"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert all(float(g[c]) == pytest.approx(e[c], rel=1e-12) for c in numeric)

    assert_rows_close(json.loads(cli.ok("report", "--store", str(store.root), "--format", "json").out), expected)

    lines = cli.ok("report", "--store", str(store.root), "--format", "markdown").out.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    assert len(body) == len(expected)
    for g, e in zip(body, expected, strict=True):
        bad = [(c, g[c], e[c]) for c in numeric if float(g[c]) != pytest.approx(e[c], abs=5e-4)]
        assert not bad, bad

    out = cli.ok("report", "--store", str(store.root), "--format", "table", "--columns", "all").out
    for e in expected:
        line = next(x for x in out.splitlines() if f" {e['sae']} " in x and f" {e['generator']} " in x)
        cells = [c.strip() for c in line.replace("│", "|").strip("|").split("|")]
        # 11: small_n; 12, 13: the corpus control's columns, empty here; a terminal shows 3 significant digits
        assert [float(cells[i]) for i in (7, 8, 9, 10, 14, 16)] == pytest.approx([e[c] for c in numeric], rel=5e-3)

    out_file = tmp_path / "summary.txt"
    cli.ok("report", "--store", str(store.root), "--output", str(out_file))
    text = out_file.read_text()
    assert all(e["sae"] in text for e in expected) and "\x1b[" not in text
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o644


def test_cli_by_compare_and_filters(store: Store, cli: CliRunner) -> None:
    out = cli.ok("report", "--store", str(store.root), "--by", "architecture", "--format", "json").out
    by = {r["architecture"]: r for r in json.loads(out)}
    assert set(by) == {"topk", "relu"} and by["topk"]["features"] == 2 * N_FEATURES  # each feature once

    captured = cli.ok("report", "--store", str(store.root), "--compare", "g1", "g2", "--sae", SAES[1], "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == N_FEATURES and {r["sae"] for r in rows} == {SAES[1]}
    assert float(rows[3]["g2"]) == sensitivity(1, 1, 3)
    assert "compare generators a=g1 vs b=g2" in captured.err and f"{N_FEATURES} shared" in captured.err

    out = cli.ok("report", "--store", str(store.root), "--generator", "g1", "--run", RUN, "--format", "json").out
    assert {r["generator"] for r in json.loads(out)} == {"g1"}


def test_cli_sql_and_sql_file(store: Store, cli: CliRunner, tmp_path: Path) -> None:
    sql = ("SELECT s.architecture, f.feature_index, f.generated_sensitivity FROM feature_stats f "
           "JOIN saes s USING (run, sae) WHERE f.sae = 'py_4k_relu_s0' AND f.generator = 'g2' ORDER BY 2")
    rows = json.loads(cli.ok("report", "--store", str(store.root), "--sql", sql, "--format", "json").out)
    assert rows == [{"architecture": "relu", "feature_index": i, "generated_sensitivity": sensitivity(2, 1, i)}
                    for i in range(N_FEATURES)]
    f = tmp_path / "q.sql"
    f.write_text("SELECT count(*) AS n FROM scores WHERE source = 'generated'")
    out = cli.ok("report", "--store", str(store.root), "--sql-file", str(f), "--format", "csv").out
    assert out == f"n\n{len(SAES) * N_FEATURES * len(GENERATORS) * 3}\n"


@pytest.mark.parametrize("sql", ["SELECT colour FROM saes", "SELEC * FROM saes"])
def test_cli_sql_error_is_one_line_and_nonzero(store: Store, cli: CliRunner, sql: str) -> None:
    code, _, err = cli("report", "--store", str(store.root), "--sql", sql)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("error: SQL error") and "Traceback" not in err


def test_cli_empty_store_says_what_to_run(tmp_path: Path, cli: CliRunner) -> None:
    code, _, err = cli("report", "--store", str(tmp_path / "empty"))
    assert code != 0 and "sae-sens run" in err and err.count("\n") == 1
    Store(tmp_path / "half").manifest(RUN, "py_4k_topk_s0").save()  # collected, never scored
    code, _, err = cli("report", "--store", str(tmp_path / "half"))
    assert code != 0 and "sae-sens score" in err
    with pytest.raises(MissingTableError, match="no runs found"):
        require_results(connect(Store(tmp_path / "empty")), Store(tmp_path / "empty"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cli_plot_writes_both_pngs(store: Store, tmp_path: Path, cli: CliRunner) -> None:
    store.write_table(RUN, "gem_16k_gated_s2", "feature_stats", make_table("feature_stats", [
        {"feature_index": i, "generator": "g1", "generated_sensitivity": i / 10} for i in range(5)]))
    path = tmp_path / "fig" / "sens.png"
    err = cli.ok("report", "--store", str(store.root), "--plot", str(path), "--format", "csv").err
    assert png_size(path) == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    rows = len(SAES) * len(GENERATORS) + 1
    assert png_size(hist_path(path)) == (round(HIST_WIDTH * DPI), round(hist_height(rows) * DPI))
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    assert pixels[..., :3].std() > 0.05  # something was drawn
    assert "sens_hist.png" in err


def test_min_original_counts_what_it_removes_per_row_of_the_grouping(store: Store, tmp_path: Path,
                                                                      cli: CliRunner) -> None:
    import csv as csv_

    out = tmp_path / "r.csv"
    cli.ok("report", "--store", str(store.root), "--min-original-sensitivity", "0.9", "--by", "width",
           "-o", str(out))
    kept = list(csv_.DictReader((tmp_path / "r.kept.csv").open()))
    # originals below 0.9 where (i + k) % 4 == 0: 3 of topk 4k's 10 features, 2 of relu 4k's, 2 of topk 16k's
    assert [(r["width"], r["features"], r["kept"], r["lost"]) for r in kept] == [("4096", "20", "15", "5"),
                                                                                 ("16384", "10", "8", "2")]
    cli.ok("report", "--store", str(store.root), "--min-original-sensitivity", "0.9", "--by", "architecture",
           "--by", "generator", "-o", str(out))
    kept = list(csv_.DictReader((tmp_path / "r.kept.csv").open()))
    assert [(r["architecture"], r["lost"]) for r in kept] == [("relu", "2"), ("topk", "5")]  # once per feature


def test_l0_plot_uses_the_saes_l0_else_the_one_collect_measured(store: Store, tmp_path: Path,
                                                                    cli: CliRunner) -> None:
    from sae_sens.report import connect
    from sae_sens.report.plot import l0_path, sae_l0

    # the passes: 4k topk fires 2 latents per token, relu 5; the 16k SAE says its L0 in its metadata
    for sae, firings in (("py_4k_topk_s0", [100, 100]), ("py_4k_relu_s0", [300, 200]), ("py_16k_topk_s0", [50, 50])):
        store.write_table(RUN, sae, "latents", make_table("latents", [
            {"feature_index": i, "n_firings": n, "counted_tokens": 100} for i, n in enumerate(firings)]))
    m = store.manifest(RUN, "py_16k_topk_s0")
    m.data["sae_info"] = {**m.sae_info, "l0": 40.0}
    m.save()
    l0 = sae_l0(connect(store))
    assert l0 == {(RUN, "py_4k_topk_s0"): (2.0, "measured"), (RUN, "py_4k_relu_s0"): (5.0, "measured"),
                  (RUN, "py_16k_topk_s0"): (40.0, "metadata")}
    path = tmp_path / "sens.png"
    err = cli.ok("report", "--store", str(store.root), "--plot", str(path), "--format", "csv").err
    assert "sens_l0.png" in err
    import matplotlib.image

    pixels = matplotlib.image.imread(l0_path(path))
    assert pixels.shape[:2] == (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))
    assert pixels[..., :3].std() > 0.05


def test_cli_html(store: Store, tmp_path: Path, cli: CliRunner) -> None:
    path = tmp_path / "report.html"
    cli.ok("report", "--store", str(store.root), "--sae", SAES[0], "--html", str(path), "--format", "csv")
    page = path.read_text()
    # self-contained: no outside resource (issue 16 adds an inline script for the filter and inline PNGs)
    assert page.startswith("<!doctype html>") and not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<script src" not in page and 'src="data:image/png;base64,' in page
    assert all(f"{SAES[0]} f{i} g2 s1 &lt;&amp;&gt;" in page for i in range(N_FEATURES))
    assert SAES[1] not in page
    assert page.count("rgba(255,140,0,") > N_FEATURES * 4


def test_cli_sql_shell_builtin_reads_stdin(store: Store, monkeypatch: pytest.MonkeyPatch,
                                           cli: CliRunner, wide_console: None) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(
        "SELECT sae, width FROM saes ORDER BY width, sae;\nSELECT oops FROM saes;\n.quit\n"))
    captured = cli("sql", "--store", str(store.root), "--builtin")
    assert captured.code == 1  # piped SQL with a failing statement exits non-zero (issue 16)
    assert "py_16k_topk_s0" in captured.out and "16384" in captured.out
    assert captured.err.count("\n") == 1 and "oops" in captured.err


def test_cli_sql_shell_uses_duckdb_cli_when_installed(store: Store, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, cli: CliRunner) -> None:
    # A stand-in `duckdb` on PATH, run twice: first it builds the snapshot from the script on stdin
    # (with the duckdb Python package), then it is opened on it -safe -readonly and records what a
    # query over the copied tables returns.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    result = tmp_path / "result.json"
    script = bindir / "duckdb"
    script.write_text(
        f"#!{sys.executable}\n"
        "import duckdb, json, sys\n"
        "if sys.argv[1] == '-bail':\n"
        "    duckdb.connect(sys.argv[-1]).execute(sys.stdin.read()).close()\n"
        "    sys.exit(0)\n"
        "assert sys.argv[1:3] == ['-safe', '-readonly'], sys.argv\n"
        "con = duckdb.connect(sys.argv[-1], read_only=True)\n"
        "rows = con.execute('SELECT architecture, count(*) FROM saes GROUP BY ALL ORDER BY ALL').fetchall()\n"
        f"json.dump(rows, open({str(result)!r}, 'w'))\n"
        "sys.exit(3)\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert cli("sql", "--store", str(store.root)).code == 3  # its exit status is passed on
    assert json.loads(result.read_text()) == [["relu", 1], ["topk", 2]]


def test_cli_sql_snapshot_failure_is_one_line(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               cli: CliRunner) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "duckdb"
    script.write_text("#!/bin/sh\necho 'IO Error: No space left on device' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    code, _, err = cli("sql", "--store", str(store.root))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "No space left on device" in err and "TMPDIR" in err and "--builtin" in err


def test_compare_runs_and_groups_without_generated_samples(store: Store) -> None:
    rows = [{"feature_index": i, "generator": "g1", "generated_sensitivity": 1.0 if i < 5 else None,
             "original_sensitivity": 1.0} for i in range(N_FEATURES)]
    store.write_table("r2", SAES[0], "feature_stats", make_table("feature_stats", rows))
    store.write_table("r3", SAES[0], "feature_stats", make_table("feature_stats", [
        {"feature_index": 0, "generator": "g1", "generated_sensitivity": None, "original_sensitivity": 0.5}]))
    con = connect(store)
    c = compare(con, RUN, "r2")
    assert c.dimension == "run"
    shared = [r for r in c.rows.to_pylist() if r["diff"] is not None]
    assert [r["feature_index"] for r in shared] == list(range(5))  # g1 of SAES[0], where r2 has samples
    assert all(r["r2"] == 1.0 and r[RUN] == sensitivity(0, 0, r["feature_index"]) for r in shared)
    summary = {r["run"]: r for r in summarize(con).to_pylist() if r["run"] != RUN}
    assert (summary["r2"]["features"], summary["r2"]["sensitivity"]) == (5, 1.0)
    assert summary["r2"]["original_sensitivity"] == 1.0
    r3 = summary["r3"]  # scored originals only: no generated sensitivity, no interval, but no error
    assert (r3["features"], r3["sensitivity"], r3["ci_low"], r3["ci_high"]) == (0, None, None, None)


def test_cli_by_comma_list_and_sql_shell_on_empty_store(
    store: Store, tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = cli.ok("report", "--store", str(store.root), "--by", "width,architecture", "--format", "json").out
    got = [(r["width"], r["architecture"], r["saes"]) for r in json.loads(out)]
    assert got == [(4096, "relu", 1), (4096, "topk", 1), (16384, "topk", 1)]
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT count(*) AS n FROM scores;\n"))
    captured = cli.ok("sql", "--store", str(tmp_path / "nothing"), "--builtin")
    assert "sae-sens run" in captured.err and "│ 0 │" in captured.out


# ----- issue 16: pooling, distribution comparisons, warnings and flags on crafted tables ------------


def crafted(root: Path, per_sae: dict[str, dict[str, list[float]]], n: int = 10) -> duckdb.DuckDBPyConnection:
    """feature_stats with the given sensitivities per SAE and generator (feature i = the i-th value)."""
    store = Store(root)
    for sae, gens in per_sae.items():
        rows = [{"feature_index": i, "generator": g, "generated_sensitivity": v, "n_generated": n}
                for g, vals in gens.items() for i, v in enumerate(vals)]
        store.write_table(RUN, sae, "feature_stats", make_table("feature_stats", rows))
    return connect(store)


def test_two_generators_never_double_the_feature_count(tmp_path: Path) -> None:
    con = crafted(tmp_path, {"py_4k_topk_s0": {"g1": [0.0, 0.5, 1.0], "g2": [0.5, 0.5, 0.0]}})
    (row,) = summarize(con, ["architecture"]).to_pylist()
    assert (row["features"], row["generators"], row["saes"]) == (3, 2, 1)
    assert row["sensitivity"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert row["share_below_half"] == pytest.approx(1 / 3)
    per_gen = summarize(con, ["architecture", "generator"]).to_pylist()
    assert [(r["generator"], r["features"]) for r in per_gen] == [("g1", 3), ("g2", 3)]
    assert any("averaged" in w or "their mean" in w for w in summary_warnings(summarize(con, ["architecture"])))


def test_compare_two_saes_compares_distributions(tmp_path: Path) -> None:
    a, b = [0.0] * 6, [1.0] * 4  # different sizes, fully separated
    con = crafted(tmp_path, {"py_4k_topk_s0": {"g": a}, "py_4k_relu_s0": {"g": b}})
    c = compare(con, "py_4k_topk_s0", "py_4k_relu_s0", n_resamples=999)
    ra, rb, rd = c.rows.to_pylist()
    # each side's interval is the summary's: never zero width over a handful of features
    assert (ra["features"], ra["sensitivity"]) == (6, 0.0)
    assert (ra["ci_low"], ra["ci_high"]) == pytest.approx(reference_interval(a), rel=1e-9) and ra["ci_high"] > 0.3
    assert (rb["features"], rb["sensitivity"]) == (4, 1.0)
    assert (rb["ci_low"], rb["ci_high"]) == pytest.approx(reference_interval(b), rel=1e-9) and rb["ci_low"] < 0.6
    assert rd["sae"] == "b - a" and (rd["sensitivity"], rd["ci_low"], rd["ci_high"]) == (1.0, 1.0, 1.0)
    # a relabelling reproduces |diff| = 1 only if it keeps the split: 2 / C(10, 4) = 1/105 of them
    assert rd["p_value"] < 0.05 and "permutation p" in c.summary
    same = crafted(tmp_path / "same", {"py_4k_topk_s0": {"g": [0.2, 0.8]}, "py_4k_relu_s0": {"g": [0.8, 0.2]}})
    assert compare(same, "py_4k_topk_s0", "py_4k_relu_s0").rows.to_pylist()[2]["p_value"] == 1.0
    # the interval of each side is the summary's
    mixed = crafted(tmp_path / "mixed", {"py_4k_topk_s0": {"g": [0.1, 0.4, 0.9, 0.3]},
                                         "py_4k_relu_s0": {"g": [0.5, 0.6]}})
    m = compare(mixed, "py_4k_topk_s0", "py_4k_relu_s0").rows.to_pylist()
    assert (m[0]["ci_low"], m[0]["ci_high"]) == pytest.approx(reference_interval([0.1, 0.4, 0.9, 0.3]), rel=1e-9)
    assert m[2]["sensitivity"] == pytest.approx(0.55 - 0.425)


def test_different_n_is_warned(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for sae, n in (("py_4k_topk_s0", 10), ("py_4k_relu_s0", 3)):
        rows = [{"feature_index": i, "generator": g, "generated_sensitivity": 1.0, "n_generated": n if g == "g1" else 10}
                for g in ("g1", "g2") for i in range(2)]
        store.write_table(RUN, sae, "feature_stats", make_table("feature_stats", rows))
    con = connect(store)
    table = summarize(con)
    assert {(r["sae"], r["generator"], r["n_min"], r["n_max"]) for r in table.to_pylist()} >= {
        ("py_4k_relu_s0", "g1", 3, 3), ("py_4k_topk_s0", "g1", 10, 10)}
    assert any("n = 3 to 10" in w for w in summary_warnings(table))
    c = compare(con, "g1", "g2")
    assert c.warnings and "2 of 4 shared features have different numbers" in c.warnings[0]
    assert compare(con, "py_4k_topk_s0", "py_4k_relu_s0").warnings  # 10 vs 3 samples per feature


def test_preamble_and_parse_flags(tmp_path: Path) -> None:
    assert looks_like_preamble("Here are 11 samples that match the pattern:")
    assert looks_like_preamble("Sure! Here you go")
    assert not looks_like_preamble("The treaty was signed in 1637 by the king.")
    assert not looks_like_preamble("Okinawa is an island") and not looks_like_preamble("")
    con = crafted(tmp_path, {"py_4k_topk_s0": {"g": [0.5, 1.0]}})
    store = Store(tmp_path)
    store.write_table(RUN, "py_4k_topk_s0", "generations", make_table("generations", [
        {"feature_index": 0, "generator": "g", "sample_index": 0, "text": "Here are 11 samples that match:"},
        {"feature_index": 0, "generator": "g", "sample_index": 1, "text": "a real text about cats"},
        {"feature_index": 1, "generator": "g", "sample_index": 0, "text": "Certainly, below are the texts"}]))
    store.write_table(RUN, "py_4k_topk_s0", "queries", make_table("queries", [
        {"feature_index": 0, "generator": "g", "status": "ok", "parse_method": "separator"},
        {"feature_index": 1, "generator": "g", "status": "ok", "parse_method": "numbered"}]))
    con = connect(store)
    (row,) = summarize(con).to_pylist()
    assert (row["preamble_samples"], row["fallback_parse"]) == (2, 1)
    assert any("2 generated samples look like preamble" in w for w in summary_warnings(summarize(con)))
    # retrieved passages (the corpus control) were never parsed from an answer: not a fallback
    store.write_table(RUN, "py_4k_topk_s0", "queries", make_table("queries", [
        {"feature_index": f, "generator": "g", "status": "ok", "parse_method": "corpus"} for f in (0, 1)]))
    (row,) = summarize(connect(store)).to_pylist()
    assert row["fallback_parse"] == 0
