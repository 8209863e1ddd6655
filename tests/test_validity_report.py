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
    assert row["kappa_per_rater"] == pytest.approx(1 / 3)  # one rater: the same
    assert [t for t, _ in validity_tables(con)][1].startswith("human labels")
    assert cohen_kappa(["A", "A"], ["A", "A"]) is None and cohen_kappa([], []) is None
    assert cohen_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)


def test_sensitivity_valid_stays_a_column_when_the_judge_rejects_every_text(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    import csv
    import io

    from sae_sens.report.validity import judge_summary, validity_warnings

    store = Store(tmp_path / "store")
    store.write_table("r", "s", "scores", make_table("scores", [
        {"feature_index": f, "source": "generated", "variant": "generated", "generator": "g", "sample_index": s,
         "empty": False, "active": s % 2 == 0, "max_activation": float(s)} for f in range(3) for s in range(4)]))
    store.write_table("r", "s", "judgments", make_table("judgments", [
        {"feature_index": f, "generator": "g", "judge": "openai:j", "task": "direct", "sample_index": s,
         "answer": "no", "valid": False, "status": "ok"} for f in range(3) for s in range(4)]))
    (row,) = judge_summary(connect(store)).to_pylist()
    assert row["sensitivity"] == pytest.approx(0.5) and row["valid_share"] == 0.0
    assert "sensitivity_valid" in row and row["sensitivity_valid"] is None  # NULL, not a missing column
    assert row["sensitivity_valid_low"] is None and row["sensitivity_valid_high"] is None
    assert row["small_n"] is True  # 3 features
    (w,) = validity_warnings("judge", judge_summary(connect(store)))
    assert "small_n" in w and "fewer than 5" in w
    store.write_table("r", "s", "feature_stats", make_table("feature_stats", [
        {"feature_index": f, "generator": "g", "generated_sensitivity": 0.5, "n_generated": 4} for f in range(3)]))
    out = cli.ok("report", "--store", str(store.root), "--validity", "--format", "csv").out
    block = out.split("# LLM judge")[1].split("\n", 1)[1]
    (csv_row,) = list(csv.DictReader(io.StringIO(block.split("\n\n")[0])))
    assert csv_row["sensitivity_valid"] == "" and "sensitivity_valid_low" in csv_row


def test_calibration_trials_are_their_own_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    rows = [{"feature_index": f, "generator": g, "sample_index": 0, "rater": "ana", "pair_id": f"{g}{f}",
             "real_example": "top:10", "real_position": "A", "answer": "A", "correct": True}
            for g in ("openai:m", "corpus:demo:wiki-heldout") for f in range(6)]
    store.write_table("r", "s", "labels", make_table("labels", rows))
    got = {r["generator"]: r for r in label_summary(connect(store)).to_pylist()}
    assert got["corpus:demo:wiki-heldout"]["trial"] == "calibration (real vs real)"
    assert got["openai:m"]["trial"] == "generated vs real" and got["openai:m"]["small_n"] is False


def test_kappa_pooled_and_per_rater_differ_as_defined(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    pairs = [(f, s, "A" if (f + s) % 2 else "B") for f in range(3) for s in range(4)]
    judge = [pos for _, _, pos in pairs]  # the judge is always right
    ana = judge  # agrees with the judge on every pair
    bo = ["A" if x == "B" else "B" for x in judge]  # disagrees on every pair
    labels = [{"feature_index": f, "generator": "g", "sample_index": s, "rater": who, "pair_id": f"{f}.{s}",
               "real_example": "top:10", "real_position": pos, "answer": a, "correct": a == pos}
              for who, answers in (("ana", ana), ("bo", bo)) for (f, s, pos), a in zip(pairs, answers, strict=True)]
    store.write_table("r", "s", "labels", make_table("labels", labels))
    store.write_table("r", "s", "judgments", make_table("judgments", [
        {"feature_index": f, "generator": "g", "judge": "openai:j", "task": "pair", "sample_index": s,
         "real_example": "top:10", "real_position": pos, "answer": a, "correct": a == pos, "status": "ok"}
        for (f, s, pos), a in zip(pairs, judge, strict=True)]))
    (row,) = label_summary(connect(store)).to_pylist()
    assert row["kappa_per_rater"] == pytest.approx(0.0)  # (1 + -1) / 2
    h = ana + bo
    assert row["kappa"] == pytest.approx(cohen_kappa(h, judge + judge)) and row["raters"] == 2
