"""The report's human-label summary over a real store (Parquet + DuckDB): accuracy, indistinguishable
rate and Cohen's kappa against the judge on the same pairs, computed by hand here."""

from __future__ import annotations

from pathlib import Path

import pytest

from sae_sens.report import connect
from sae_sens.report.validity import cohen_kappa, label_summary, validity_tables
from sae_sens.schemas import make_table
from sae_sens.store import Store

PAIRS = [(0, 0, "A"), (0, 1, "B"), (0, 2, "A"), (0, 3, "B"), (1, 0, "A"), (1, 1, "B"), (1, 2, "A")]
HUMAN = ["A", "A", "A", "B", "A", "A", "skip"]
JUDGE = ["A", "B", "B", "B", "A", "A", "A"]


def test_label_summary_and_kappa(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.write_table("r", "s", "labels", make_table("labels", [
        {"feature_index": f, "generator": "g", "sample_index": s, "rater": "ana", "pair_id": f"{f}.{s}",
         "real_example": "top:10", "real_position": pos, "answer": a,
         "correct": None if a == "skip" else a == pos} for (f, s, pos), a in zip(PAIRS, HUMAN, strict=True)]))
    store.write_table("r", "s", "judgments", make_table("judgments", [
        {"feature_index": f, "generator": "g", "judge": "openai:j", "task": "pair", "sample_index": s,
         "real_example": "top:10", "real_position": pos, "answer": a, "correct": a == pos, "status": "ok"}
        for (f, s, pos), a in zip(PAIRS, JUDGE, strict=True)]))
    con = connect(store)
    (row,) = label_summary(con).to_pylist()
    # feature 0: 3 of 4 right; feature 1: 1 of 2 (the skip counts nowhere)
    assert row["accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert row["indistinguishable"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert (row["raters"], row["labels"], row["features"], row["judge"], row["matched"]) == (1, 6, 2, "openai:j", 6)
    assert row["agreement"] == pytest.approx(4 / 6)
    # chance agreement: human A 5/6, judge A 3/6 -> 5/12 + 1/12 = 1/2; kappa = (4/6 - 1/2) / (1/2)
    assert row["kappa"] == pytest.approx(1 / 3)
    assert [t for t, _ in validity_tables(con)][1].startswith("human labels")
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None and cohen_kappa([], []) is None
    assert cohen_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)
