"""`sae-sens sql`: the real duckdb CLI (PyPI's duckdb-cli) over every view, and the built-in prompt's
bounded output, continuation prompt, history and exit status."""

from __future__ import annotations

import builtins
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sae_sens.cli import main, sql_cmd
from sae_sens.cli import output as cli_output
from sae_sens.report.views import META_VIEWS, TABLE_VIEWS, connect
from sae_sens.schemas import make_table
from sae_sens.store import Store

ROOT = Path(__file__).resolve().parents[1]
RUN, SAE = "r1", "py_4k_topk_s0"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "evals")
    st.write_table(RUN, SAE, "latents", make_table("latents", [
        {"feature_index": i, "n_firings": 3 * i, "max_activation": float(i), "n_top": 2, "n_iw": 1,
         "counted_tokens": 1000} for i in range(50)]))
    st.write_table(RUN, SAE, "candidates", make_table("candidates", [
        {"feature_index": i, "pool": "top", "rank": 0, "window_index": i, "position": 20, "activation": 1.0,
         "key": float("nan"), "activations": [float(k) / 7 for k in range(21)]} for i in range(50)]))
    st.write_table(RUN, SAE, "feature_stats", make_table("feature_stats", [
        {"feature_index": i, "generator": "g", "generated_sensitivity": i / 10} for i in range(10)]))
    return st


def test_every_view_exists_including_latents(store: Store) -> None:
    con = connect(store)
    names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert set(TABLE_VIEWS) | set(META_VIEWS) <= names and "latents" in TABLE_VIEWS
    assert con.execute("SELECT count(*), sum(n_firings) FROM latents").fetchall() == [(50, 3 * 49 * 50 // 2)]


def run_sql(store: Store, sql: str, *extra: str, path: str = "/usr/bin:/bin") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path, "HOME": str(store.root.parent)}
    return subprocess.run([sys.executable, "-m", "sae_sens", "sql", "--store", str(store.root), *extra], input=sql,
                          capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.slow  # the real duckdb CLI process
def test_real_duckdb_cli_runs_piped_sql_over_the_views(store: Store) -> None:
    assert sql_cmd.duckdb_cli() is not None, "duckdb-cli (a dependency) is not installed"
    p = run_sql(store, "SELECT count(*) AS n_latents FROM latents;\nSELECT sae, width FROM saes;\n"
                       "SELECT max(generated_sensitivity) AS top FROM feature_stats;\n")
    assert p.returncode == 0, p.stderr
    # the duckdb CLI's own box tables
    assert "n_latents" in p.stdout and "│        50 │" in p.stdout
    assert SAE in p.stdout and "4096" in p.stdout and "0.9" in p.stdout


@pytest.mark.slow  # the real duckdb CLI process
def test_real_duckdb_cli_exits_non_zero_on_a_failing_statement(store: Store) -> None:
    p = run_sql(store, "SELECT * FROM no_such_view;\n")
    assert p.returncode != 0 and "no_such_view" in p.stderr


def test_duckdb_on_path_wins_else_the_bundled_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "duckdb"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sql_cmd.duckdb_cli() == str(fake)
    spec = importlib.util.find_spec("duckdb_cli")
    assert spec is not None and spec.origin
    bundled = str(Path(spec.origin).parent / "duckdb")
    # duckdb-cli's own console script adds a -cmd that safe mode refuses: its binary is used instead
    fake.write_text("#!/usr/bin/python3\nfrom duckdb_cli.__main__ import main\n")
    assert sql_cmd.duckdb_cli() == bundled
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert sql_cmd.duckdb_cli() == bundled and Path(bundled).is_file()


def test_builtin_output_is_bounded(store: Store, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli_output.console, "_width", 300)
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT * FROM candidates;\n"))
    main(["sql", "--store", str(store.root), "--builtin"])
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("│ r1 ")]
    assert len(rows) == sql_cmd.MAX_ROWS  # one line each
    assert "[0, 0.143, 0.286, 0.429, …] (21)" in out  # a list cell, cut
    assert f"({sql_cmd.MAX_ROWS} of 50 rows shown" in err


def test_builtin_piped_errors_exit_non_zero(store: Store, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 1 AS a;\n"))
    main(["sql", "--store", str(store.root), "--builtin"])  # no error: returns, exit 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT 1 AS a;\nSELECT nope FROM latents;\nSELECT 2 AS b;\n"))
    with pytest.raises(SystemExit) as e:
        main(["sql", "--store", str(store.root), "--builtin"])
    out, err = capsys.readouterr()
    assert e.value.code == 1 and "nope" in err and "│ 2 │" in out  # later statements still ran


def test_interactive_prompt_continues_statements_and_keeps_history(store: Store, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_sens.report.shell import SqlShell

    readline = pytest.importorskip("readline")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    typed = iter(["SELECT count(*) AS n", "FROM latents;", ".quit"])
    prompts: list[str] = []

    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        line = next(typed)
        readline.add_history(line)  # as the real input() does on a terminal
        return line

    monkeypatch.setattr(builtins, "input", fake_input)
    shown = []
    shell = SqlShell(connect(store), show=shown.append, note=print)
    sql_cmd.interactive(shell)
    assert prompts == [sql_cmd.PROMPT, sql_cmd.CONTINUE, sql_cmd.PROMPT]
    assert shown[0].to_pylist() == [{"n": 50}]
    history = (tmp_path / "state" / "sae-sens" / "sql_history").read_text().splitlines()
    assert history[-3:] == ["SELECT count(*) AS n", "FROM latents;", ".quit"]


@pytest.mark.slow  # the real duckdb CLI process
def test_ctrl_c_reaches_the_duckdb_cli_and_not_the_session(store: Store, tmp_path: Path) -> None:
    # a stand-in duckdb: builds nothing, and in the session reports each SIGINT and goes on, as the
    # real CLI does (it cancels the query); the test sends SIGINT to the whole process group, as a
    # terminal's Ctrl-C does
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "duckdb").write_text(
        f"#!{sys.executable}\n"
        "import signal, sys\n"
        "if sys.argv[1] == '-bail':\n"
        "    sys.stdin.read(); sys.exit(0)\n"
        "signal.signal(signal.SIGINT, lambda *_: print('interrupted', flush=True))\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "sys.exit(5)\n")
    (bindir / "duckdb").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bindir}:/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "sae_sens", "sql", "--store", str(store.root)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # the parent ignores SIGINT right after the spawn
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.stdout.readline().strip() == "interrupted"
    proc.stdin.close()
    assert proc.wait(timeout=60) == 5, proc.stderr.read() if proc.stderr else ""


def readme_queries() -> list[str]:
    """Every ``--sql "..."`` of the README and the docs, its line breaks joined (a query may wrap in the prose)."""
    import re

    text = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
                      if p.name != "cli.md")
    found = [" ".join(q.split()) for q in re.findall(r'--sql "([^"]+)"', text)]
    return [q for q in found if "…" not in q and "..." not in q]  # placeholders (`--sql "…"`) are no query


@pytest.fixture
def readme_store(store: Store) -> Store:
    """The fixture store plus what the README's queries read: features with alive/selected flags."""
    store.write_table(RUN, SAE, "features", make_table("features", [
        {"feature_index": i, "frequency": 0.01, "n_firings": 20 + i, "max_activation": 1.0, "top_activation": 1.0,
         "alive": i % 2 == 0, "selected": i < 4} for i in range(10)]))
    return store


@pytest.mark.slow  # the real duckdb CLI process for each query
def test_every_documented_query_runs_in_report_sql_and_in_the_duckdb_shell(readme_store: Store, cli) -> None:  # type: ignore[no-untyped-def]
    queries = readme_queries()
    assert len(queries) >= 2, queries
    # and the README's read_parquet example, as report --sql reads files inside the store
    queries.append(f"SELECT count(*) FROM read_parquet('{readme_store.root}/*/*/feature_stats.parquet')")
    for q in queries:
        res = cli("report", "--store", str(readme_store.root), "--sql", q, "--format", "csv")
        assert res.code == 0 and res.out.count("\n") >= 2, (q, res.err)
    for q in queries[:-1]:  # the shell sees the views, not the files
        p = run_sql(readme_store, q.rstrip(";") + ";\n")
        assert p.returncode == 0 and "Error" not in p.stderr, (q, p.stderr)


@pytest.mark.slow  # the real duckdb CLI process
def test_a_refused_write_in_the_duckdb_shell_names_the_way_to_save(store: Store) -> None:
    for sql in ("COPY (SELECT 1) TO 'x.csv';\n", ".once x.txt\nSELECT 1;\n", "CREATE TABLE t AS SELECT 1;\n"):
        p = run_sql(store, sql)
        assert p.returncode != 0, sql
        hints = [line for line in p.stderr.splitlines() if line.startswith("hint: ")]
        assert len(hints) == 1 and 'sae-sens report --sql "SELECT ..." -o FILE.csv' in hints[0], p.stderr
    ok = run_sql(store, "SELECT 1 AS one;\n")
    assert ok.returncode == 0 and "hint" not in ok.stderr
