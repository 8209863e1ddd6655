"""`report -o FILE` writes every table the report makes, one file each, numbers as numbers; nothing
goes to stdout and stderr names every file. Real Parquet, real DuckDB, the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from sae_sens.schemas import make_table
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.test_thresholds import _build_store


def _with_labels(store: Store) -> Store:
    store.write_table("r", "py_4k_topk_s0", "labels", make_table("labels", [
        {"feature_index": f, "generator": "g", "sample_index": s, "rater": "ana", "pair_id": f"{f}.{s}",
         "real_example": "top:0", "real_position": "A", "answer": "A" if s else "B", "correct": bool(s)}
        for f in (4, 5) for s in range(3)]))
    return store


def test_every_table_gets_its_file_with_numeric_intervals(tmp_path: Path, cli: CliRunner) -> None:
    store = _with_labels(_build_store(tmp_path / "store"))
    out = tmp_path / "x.csv"
    res = cli.ok("report", "--store", str(store.root), "--min-original-sensitivity", "0.9", "--thresholds",
                 "--validity", "-o", str(out))
    assert res.out == ""  # every table went to a file
    files = {p.name for p in tmp_path.glob("x*.csv")}
    assert files == {"x.csv", "x.kept.csv", "x.thresholds.csv", "x.labels.csv"}
    for name in files:
        assert f"wrote {tmp_path / name}" in res.err.replace("\n", "")
    thresholds = list(csv.DictReader((tmp_path / "x.thresholds.csv").open()))
    assert thresholds and all("[" not in v for r in thresholds for v in r.values())
    for r in thresholds:  # the interval is two numeric columns per level
        lo, mid, hi = (float(r[f"sens 10%{s}"]) for s in (" lo", "", " hi"))
        assert lo <= mid <= hi
    kept = {r["sae"]: r for r in csv.DictReader((tmp_path / "x.kept.csv").open())}
    assert int(kept["py_4k_topk_s0"]["kept"]) == 2


def test_json_files_hold_numbers(tmp_path: Path, cli: CliRunner) -> None:
    store = _build_store(tmp_path / "store")
    cli.ok("report", "--store", str(store.root), "--thresholds", "-o", str(tmp_path / "x.json"))
    (row, *_) = json.loads((tmp_path / "x.thresholds.json").read_text())
    assert isinstance(row["sens 50% lo"], float) and isinstance(row["sens 50% hi"], float)
    assert isinstance(json.loads((tmp_path / "x.json").read_text())[0]["ci_low"], float)


def test_piped_tables_are_one_block_each_with_a_title_line(tmp_path: Path, cli: CliRunner) -> None:
    store = _build_store(tmp_path / "store")
    out = cli.ok("report", "--store", str(store.root), "--min-original-sensitivity", "0.9", "--thresholds",
                 "--format", "tsv").out
    blocks = [b for b in out.split("\n\n") if b.strip()]
    assert [b.splitlines()[0] for b in blocks] == [
        "# features kept at --min-original-sensitivity 0.9", "# sensitivity per run × SAE × generator",
        "# sensitivity at thresholds relative to the top activation"]
    for b in blocks:  # within a block, every row has its header's columns
        header, *rows = b.splitlines()[1:]
        assert rows and all(len(r.split("\t")) == len(header.split("\t")) for r in rows)
    # one table alone stays plain TSV, as scripts read it
    assert not cli.ok("report", "--store", str(store.root), "--format", "tsv").out.startswith("#")


def test_min_original_filters_the_label_and_judge_summaries_like_the_summary(tmp_path: Path) -> None:
    from sae_sens.report import connect, summarize
    from sae_sens.report.validity import apply_min_original, label_summary

    def labels(features: range) -> list[dict[str, object]]:
        # features 0..3 always right, 4 and 5 always wrong: the filter (keeps 4, 5) must flip accuracy to 0
        return [{"feature_index": f, "generator": "g", "sample_index": s, "rater": "ana", "pair_id": f"{f}.{s}",
                 "real_example": "top:0", "real_position": "A", "answer": "A" if f < 4 else "B", "correct": f < 4}
                for f in features for s in range(2)]

    def judgments(features: range) -> list[dict[str, object]]:
        return [{"feature_index": f, "generator": "g", "judge": "openai:j", "task": "pair", "sample_index": s,
                 "real_example": "top:0", "real_position": "A", "answer": "A", "correct": True, "status": "ok"}
                for f in features for s in range(2)]

    full, kept_only = _build_store(tmp_path / "full"), _build_store(tmp_path / "kept")
    for store, feats in ((full, range(6)), (kept_only, range(4, 6))):
        store.write_table("r", "py_4k_topk_s0", "labels", make_table("labels", labels(feats)))
        store.write_table("r", "py_4k_topk_s0", "judgments", make_table("judgments", judgments(feats)))
    con = connect(full)
    assert label_summary(con).to_pylist()[0]["accuracy"] == 4 / 6
    apply_min_original(con, 0.9)
    expected = connect(kept_only)
    apply_min_original(expected, 0.9)
    got, want = label_summary(con).to_pylist(), label_summary(expected).to_pylist()
    assert got == want and got[0]["accuracy"] == 0.0 and got[0]["features"] == 2
    assert con.execute("SELECT count(DISTINCT feature_index) FROM judgments").fetchall() == [(2,)]
    assert {r["sae"]: r["features"] for r in summarize(con).to_pylist()}["py_4k_topk_s0"] == 2
