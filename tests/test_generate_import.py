"""``table:`` imports: every format, every malformed case, and coexistence with other generators."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_sens.errors import ImportTableError, MissingTableError
from sae_sens.generate import GenerateConfig, plan_generate, run_generate
from sae_sens.store import Store
from tests.support.gen_support import plain, write_examples

FEATURES = [3, 8, 12]


def write(path, rows, columns=None):
    """Write ``rows`` as CSV, Parquet or JSONL depending on the suffix."""
    columns = columns or list(rows[0])
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    return path


GOOD = [{"feature_index": f, "text": f"text {i} for {f}"} for f in FEATURES for i in range(2)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    write_examples(s, "r", "sae-a", FEATURES)
    return s


def test_one_file_given_two_ways_is_one_import(store, tmp_path, monkeypatch):
    """Relative or absolute, the same file is the same generator and, unchanged, a fresh stage; a
    changed file is imported again."""
    path = write(tmp_path / "gen.csv", GOOD)
    monkeypatch.chdir(tmp_path)
    first = run_generate(store, "r", "sae-a", GenerateConfig(from_table=path.name))
    again = run_generate(store, "r", "sae-a", GenerateConfig(from_table=path))
    assert not first.skipped and again.skipped
    assert {r["generator"] for r in store.read_table("r", "sae-a", "generations").to_pylist()} == {f"table:{path}"}
    write(path, [{**r, "text": r["text"] + "!"} for r in GOOD])
    assert not run_generate(store, "r", "sae-a", GenerateConfig(from_table="gen.csv")).skipped


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_import_each_format(store, tmp_path, suffix):
    path = write(tmp_path / f"gen{suffix}", GOOD)
    out = run_generate(store, "r", "sae-a", GenerateConfig(generator="gpt-x", from_table=path))
    assert out.rows == {"queries": 3, "generations": 6} and out.extra["warnings"] == []
    gens = plain(store.read_table("r", "sae-a", "generations"))
    assert gens == [{"feature_index": f, "generator": "gpt-x", "sample_index": i, "text": f"text {i} for {f}",
                     "role": "positive"} for f in FEATURES for i in range(2)]
    q = store.read_table("r", "sae-a", "queries").to_pylist()
    assert {(r["status"], r["parse_method"], r["n_parsed"]) for r in q} == {("imported", "table", 2)}
    rec = store.manifest("r", "sae-a").stage("generate:gpt-x")
    assert rec is not None and "import_file" in rec.inputs and "table:examples" in rec.inputs


def test_table_prefix_spelling_and_sample_index(store, tmp_path):
    rows = [{"feature_index": 3, "text": "b", "sample_index": 5}, {"feature_index": 3, "text": "a", "sample_index": 2}]
    path = write(tmp_path / "x.jsonl", rows)
    run_generate(store, "r", "sae-a", GenerateConfig(generator=f"table:{path}"))
    gens = plain(store.read_table("r", "sae-a", "generations"))
    assert [(g["generator"], g["sample_index"], g["text"]) for g in gens] == [
        (f"table:{path}", 2, "a"), (f"table:{path}", 5, "b")]


def test_import_without_a_label_is_named_after_its_file(store, tmp_path):
    path = write(tmp_path / "gen.csv", GOOD)
    out = run_generate(store, "r", "sae-a", GenerateConfig(from_table=path))
    assert out.stage == f"generate:table:{path}"
    assert set(store.read_table("r", "sae-a", "generations")["generator"].to_pylist()) == {f"table:{path}"}


def test_bad_rows_are_dropped_and_each_reason_reported(store, tmp_path):
    rows = GOOD + [
        {"feature_index": 999, "text": "not in run"},        # row 7
        {"feature_index": 3, "text": "   "},                 # row 8
        {"feature_index": 3, "text": "text 0 for 3"},        # row 9: duplicate of row 1
        {"feature_index": "x", "text": "bad id"},            # row 10
        {"feature_index": 1000, "text": "also not in run"},  # row 11
    ]
    path = write(tmp_path / "bad.jsonl", rows)
    logs = []

    class Sink:
        def start(self, *a): pass
        def advance(self, *a, **k): pass
        def finish(self, *a): pass
        def log(self, m): logs.append(m)

    out = run_generate(store, "r", "sae-a", GenerateConfig(generator="g", from_table=path), progress=Sink())
    warnings = out.extra["warnings"]
    assert "dropped 2 of 11 rows: feature not in this run's examples (rows 7, 11)" in warnings
    assert "dropped 1 of 11 rows: empty text (rows 8)" in warnings
    assert "dropped 1 of 11 rows: duplicate of an earlier row (same feature_index and text) (rows 9)" in warnings
    assert "dropped 1 of 11 rows: feature_index is missing or not an integer (rows 10)" in warnings
    assert out.extra["n_rows"] == 11 and out.extra["n_imported"] == 6 and out.extra["n_dropped"] == 5
    assert all(any(w in m for m in logs) for w in warnings)  # surfaced to the user, not only recorded
    assert store.read_table("r", "sae-a", "generations").num_rows == 6


def test_duplicate_sample_index_and_features_without_rows(store, tmp_path):
    rows = [{"feature_index": 3, "text": "a", "sample_index": 0}, {"feature_index": 3, "text": "b", "sample_index": 0},
            {"feature_index": 8, "text": "c", "sample_index": None}]
    out = run_generate(store, "r", "sae-a", GenerateConfig(generator="g", from_table=write(tmp_path / "d.parquet", rows)))
    w = out.extra["warnings"]
    assert "dropped 1 of 3 rows: duplicate of an earlier row (same feature_index and sample_index) (rows 2)" in w
    assert "dropped 1 of 3 rows: sample_index is missing or not a non-negative integer (rows 3)" in w
    assert "2 features of the run have no imported text: 8, 12" in w


def test_malformed_files_raise_one_clear_error(store, tmp_path):
    no_text = write(tmp_path / "no_text.csv", [{"feature_index": 3, "body": "x"}])
    no_rows = write(tmp_path / "none.csv", [{"feature_index": 999, "text": "x"}])
    broken_json = tmp_path / "broken.jsonl"
    broken_json.write_text('{"feature_index": 3, "text": "ok"}\n{"feature_index": 3, "te\n')
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    xlsx = tmp_path / "gen.xlsx"
    xlsx.write_text("x")
    cases = {
        no_text: "has no 'text' column (it has: feature_index, body)",
        no_rows: "no usable rows",
        broken_json: "line 2 is not valid JSON",
        corrupt: "cannot read import table",
        xlsx: "unknown import table type",
        tmp_path / "absent.csv": "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(ImportTableError, match=re.escape(message)) as e:
            run_generate(store, "r", "sae-a", GenerateConfig(generator="g", from_table=path))
        assert e.value.hint and "\n" not in e.value.one_line()
    assert not store.has_table("r", "sae-a", "generations")


def test_generators_coexist_and_reimport_replaces_only_its_rows(store, tmp_path):
    a = write(tmp_path / "a.csv", GOOD)
    b = write(tmp_path / "b.csv", [{"feature_index": 8, "text": "from b"}])
    run_generate(store, "r", "sae-a", GenerateConfig(generator="A", from_table=a))
    run_generate(store, "r", "sae-a", GenerateConfig(generator="B", from_table=b))
    gens = store.read_table("r", "sae-a", "generations")
    assert sorted(set(gens["generator"].to_pylist())) == ["A", "B"] and gens.num_rows == 7
    # same file again: fresh, skipped
    assert run_generate(store, "r", "sae-a", GenerateConfig(generator="A", from_table=a)).skipped
    # A's file changes: only A's rows are replaced, B's stay and B is still fresh
    write(a, [{"feature_index": 12, "text": "new a"}])
    out = run_generate(store, "r", "sae-a", GenerateConfig(generator="A", from_table=a))
    assert not out.skipped
    rows = plain(store.read_table("r", "sae-a", "generations"))
    assert [(r["generator"], r["feature_index"], r["text"]) for r in rows] == [("A", 12, "new a"), ("B", 8, "from b")]
    assert run_generate(store, "r", "sae-a", GenerateConfig(generator="B", from_table=b)).skipped
    status = store.status("r", "sae-a")
    assert status["generate:A"] == status["generate:B"] == "done"


def test_dry_run_of_an_import_writes_nothing(store, tmp_path):
    path = write(tmp_path / "a.csv", GOOD + [{"feature_index": 77, "text": "x"}])
    plan = plan_generate(store, "r", "sae-a", GenerateConfig(generator="A", from_table=path))
    assert (plan["rows"], plan["imported"], plan["dropped"]) == (7, 6, 1)
    assert not store.has_table("r", "sae-a", "generations")


def test_missing_examples_is_the_stores_clear_error(tmp_path):
    with pytest.raises(MissingTableError, match="no examples table") as e:
        run_generate(Store(tmp_path), "r", "nope", GenerateConfig(generator="A", from_table=tmp_path / "x.csv"))
    assert "sae-sens collect" in e.value.one_line()
