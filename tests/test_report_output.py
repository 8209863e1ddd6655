"""`report` and `runs` output for terminals and pipes: an 80-column terminal (a real pseudo-terminal)
and a pipe both show every value whole; off a terminal the default is TSV; `-o` infers the format."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sae_sens.cli.output import fit_table, resolve_format
from sae_sens.report import connect, summarize
from sae_sens.schemas import make_table
from sae_sens.store import Store

pytestmark = pytest.mark.slow  # the CLI in real processes, on pseudo-terminals and pipes

ROOT = Path(__file__).resolve().parent.parent
RUN = "demo"
SAES = ("smol_1152_relu", "smol_1152_topk", "smol_576_topk")
GEN = "hf:demo:smollm2"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    st = Store(tmp_path_factory.mktemp("out") / "evals")
    for k, sae in enumerate(SAES):
        rows = [{"feature_index": 100 * k + i, "generator": GEN, "generated_sensitivity": ((i + k) % 7) / 9,
                 "original_sensitivity": 1 - i / 30, "original_sensitivity_window": 1 - i / 31,
                 "n_generated": 9, "n_original": 15, "top_activation": 3.0} for i in range(6)]
        st.write_table(RUN, sae, "feature_stats", make_table("feature_stats", rows))
        st.manifest(RUN, sae).save()
    return st


def run_cli(args: list[str], *, tty: bool, columns: int = 80) -> str:
    """The CLI in a subprocess, its stdout a pseudo-terminal (``tty``) or a pipe."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(columns), "TERM": "xterm"}
    cmd = [sys.executable, "-m", "sae_sens", *args]
    if not tty:
        env.pop("COLUMNS")
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait() == 0, proc.stderr.read().decode() if proc.stderr else ""
    return ANSI.sub("", b"".join(chunks).decode().replace("\r\n", "\n"))


def shown(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


COMPACT = ("sae", "features", "sensitivity", "ci_low", "ci_high", "control_sensitivity", "original_sensitivity")


def test_report_at_80_columns_is_a_horizontal_table_of_whole_values(store: Store) -> None:
    out = run_cli(["report", "--store", str(store.root)], tty=True)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "…" not in out and "-[ 1 ]" not in out  # a table, not vertical records
    assert any(line.startswith("┃ sae") and "sens" in line and "lo" in line for line in lines), out
    expected = summarize(connect(store, status=False)).to_pylist()
    for e in expected:
        for k in COMPACT:
            if e.get(k) is not None:
                assert shown(e[k]) in out, (k, e[k], out)
        assert (f"{e['n_min']}-{e['n_max']}" if e["n_min"] != e["n_max"] else str(e["n_min"])) in out
    # run and generator are the same on every row: said once, above the table
    assert out.count(GEN) == 1 and re.search(rf"run: {RUN}\b", out)
    # every column is a --columns all away, still whole
    full = run_cli(["report", "--store", str(store.root), "--columns", "all"], tty=True)
    assert max(len(line) for line in full.splitlines()) <= 80 and "…" not in full
    for e in expected:
        for k, v in e.items():
            if v is not None:
                assert shown(v) in full, (k, v, full)
    assert f"original_sensitivity: {shown(expected[0]['original_sensitivity'])}" in full  # a caption part is whole


def test_runs_at_80_columns_tells_the_saes_apart(store: Store) -> None:
    out = run_cli(["runs", "--store", str(store.root)], tty=True)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for sae in SAES:
        assert re.search(rf"\b{sae}\b", out), out
    assert "…" not in out


def test_report_piped_is_tsv_at_full_precision(store: Store) -> None:
    out = run_cli(["report", "--store", str(store.root)], tty=False)
    rows = list(csv.DictReader(io.StringIO(out), delimiter="\t"))
    expected = summarize(connect(store, status=False)).to_pylist()
    assert [r["sae"] for r in rows] == list(SAES)
    for got, e in zip(rows, expected, strict=True):
        # every digit (repr), up to the last bit or two that DuckDB's parallel avg() may sum in another order
        assert math.isclose(float(got["sensitivity"]), e["sensitivity"], rel_tol=1e-12, abs_tol=1e-15)
        assert math.isclose(float(got["ci_high"]), e["ci_high"], rel_tol=1e-12) and got["generator"] == GEN
    runs = list(csv.DictReader(io.StringIO(run_cli(["runs", "--store", str(store.root)], tty=False)),
                               delimiter="\t"))
    assert [r["sae"] for r in runs] == list(SAES) and {r["run"] for r in runs} == {RUN}


def test_output_file_format_from_its_extension(store: Store, tmp_path: Path) -> None:
    base = ["report", "--store", str(store.root)]
    run_cli([*base, "-o", str(tmp_path / "s.csv")], tty=False)
    assert [r["sae"] for r in csv.DictReader((tmp_path / "s.csv").open())] == list(SAES)
    run_cli([*base, "-o", str(tmp_path / "s.json")], tty=False)
    assert [r["sae"] for r in json.loads((tmp_path / "s.json").read_text())] == list(SAES)
    run_cli([*base, "-o", str(tmp_path / "s.md")], tty=False)
    assert (tmp_path / "s.md").read_text().startswith("| run | sae |")
    run_cli([*base, "-o", str(tmp_path / "s.csv.txt"), "--format", "json"], tty=False)  # --format wins
    assert json.loads((tmp_path / "s.csv.txt").read_text())[0]["sae"] == SAES[0]


def test_fit_table_steps() -> None:
    cols = ["run", "sae", "sensitivity", "architecture"]
    rows = [["r", "a_long_sae_name", 0.25, "topk"], ["r", "b_long_sae_name", 0.5, "topk"]]
    assert fit_table(cols, rows, None) == ([], cols, [["r", "a_long_sae_name", "0.25", "topk"],
                                                      ["r", "b_long_sae_name", "0.5", "topk"]], False)
    caption, headers, cells, vertical = fit_table(cols, rows, 40)
    assert caption == ["run: r", "architecture: topk"] and headers == ["sae", "sensitivity"] and not vertical
    caption, headers, _, vertical = fit_table(cols, rows, 30)
    assert headers == ["sae", "sens"] and not vertical
    *_, vertical = fit_table(cols, rows, 20)
    assert vertical
    assert resolve_format(None, tty=True) == "table" and resolve_format(None, tty=False) == "tsv"
    assert resolve_format(None, Path("x.TSV")) == "tsv" and resolve_format("csv", Path("x.json")) == "csv"


def test_compare_at_80_columns_is_a_horizontal_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.test_report import build_store

    store = build_store(tmp_path / "cmp")
    out = run_cli(["report", "--store", str(store.root), "--compare", "g1", "g2"], tty=True)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "-[ 1 ]" not in out and "…" not in out
    assert any(line.startswith("┃") and " a " in line and " b " in line and "diff" in line for line in lines), out
    assert "a=g1, b=g2" in out  # the long names, once, in the title


def test_run_dry_run_at_80_columns_fits(tmp_path: Path) -> None:
    """`run --dry-run`'s plan (8 columns) and its total line fit an 80-column terminal, no value cut."""
    store = tmp_path / "store"
    out = run_cli(["run", "--store", str(store), "--run", "r", "--sae", "smol_576_topk", "--sae", "smol_4608_topk",
                   "--corpus", "demo:wiki-heldout", "--feature-ids", "0,1,2", "--generator", "openai:gpt-4.1-mini",
                   "--dry-run"], tty=True)
    lines = out.splitlines()
    assert lines and max(len(x) for x in lines) <= 80, out
    assert "smol_576_topk" in out and "smol_4608_topk" in out and "…" not in out
    assert "6 requests to openai:gpt-4.1-mini" in " ".join(lines)  # the total, wrapped between words
    assert not store.exists()  # nothing run
