"""The store under stress: concurrent writers (real processes), SAEs with the same folder name,
damaged tables, a server that rejects everything, a read-only store. Requests are counted at the
real OpenAI-compatible server in tests/support/openai_server.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sae_sens.errors import LockedError, StoreError
from sae_sens.locking import file_lock
from sae_sens.runs import list_runs
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.gen_support import write_examples
from tests.support.openai_server import ChatServer
from tests.support.testing import TinyWorld

pytestmark = pytest.mark.slow  # real CLI processes racing each other, the duckdb CLI, a real server

ROOT = Path(__file__).resolve().parents[1]
FEATURES = list(range(0, 60, 3))  # 20 features


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    out["PYTHONPATH"] = str(ROOT)
    out["HF_HUB_OFFLINE"] = "1"
    return out


def start(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, sys.executable, "-m", "sae_sens", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def generate_args(store: Path, base_url: str, generator: str = "openai:test-model", *extra: str) -> list[str]:
    return ["generate", "--store", str(store), "--run", "r", "--sae", "sae-a", "--generator", generator,
            "--base-url", base_url, "--max-workers", "2", *extra]


def queries_by_generator(store: Store) -> dict[str, int]:
    q = store.read_table("r", "sae-a", "queries")
    return {g: int(pc.sum(pc.equal(q["generator"], g)).as_py()) for g in set(q["generator"].to_pylist())}


# ----- two writers at once ---------------------------------------------------------------------------
def test_generate_twice_at_once_pays_each_request_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    with ChatServer(latency_s=0.03) as srv:
        procs = [start(*generate_args(store.root, srv.base_url)) for _ in range(2)]
        results = [finish(p) for p in procs]
        assert [r[0] for r in results] == [0, 0], results
        # each distinct prompt answered exactly once, across both processes
        assert srv.count(200) == len(FEATURES)
        assert len(set(srv.answered())) == len(FEATURES)
    assert queries_by_generator(store) == {"openai:test-model": len(FEATURES)}
    gens = store.read_table("r", "sae-a", "generations")
    assert gens.num_rows == len(FEATURES) * 10
    # the second one waited for the first (saying so) and then found the stage done
    err = "".join(r[2] for r in results)
    assert "up to date" in err


def test_two_generators_at_once_keep_both_generators_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    with ChatServer(models=("model-a", "model-b"), latency_s=0.03) as srv:
        procs = [start(*generate_args(store.root, srv.base_url, f"openai:{m}")) for m in ("model-a", "model-b")]
        results = [finish(p) for p in procs]
        assert [r[0] for r in results] == [0, 0], results
        assert srv.count(200) == 2 * len(FEATURES)
    assert queries_by_generator(store) == {"openai:model-a": len(FEATURES), "openai:model-b": len(FEATURES)}
    gens = store.read_table("r", "sae-a", "generations")
    for g in ("openai:model-a", "openai:model-b"):
        assert int(pc.sum(pc.equal(gens["generator"], g)).as_py()) == len(FEATURES) * 10
    (status,) = list_runs(store, "r")
    assert status.stages["generate:openai:model-a"] == "done"
    assert status.stages["generate:openai:model-b"] == "done"


def test_no_wait_refuses_with_one_line_and_sends_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    with ChatServer() as srv, store.lock("r", "sae-a", what="a test holding the lock"):
        code, out, err = finish(start(*generate_args(store.root, srv.base_url), "--no-wait"))
        assert code == 1
        assert srv.count() == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert f"pid {os.getpid()}" in err and "a test holding the lock" in err
    assert str(store.sae_dir("r", "sae-a")) in err


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "x" / ".lock"
    with file_lock(path, what="outer"), file_lock(path, what="inner"):
        probe = ("import sys; from sae_sens.locking import file_lock\n"
                 "from sae_sens.errors import LockedError\n"
                 "try:\n    with file_lock(sys.argv[1], wait=False): print('got it')\n"
                 "except LockedError as e: print('refused:', e.one_line())\n")
        held = subprocess.run([sys.executable, "-c", probe, str(path)], env=env(), capture_output=True, text=True)
        assert held.stdout.startswith("refused:"), held
        assert "outer" in held.stdout
    free = subprocess.run([sys.executable, "-c", probe, str(path)], env=env(), capture_output=True, text=True)
    assert free.stdout.strip() == "got it", free


def test_lock_waits_for_another_thread_of_the_process(tmp_path: Path) -> None:
    import threading

    path = tmp_path / ".lock"
    order: list[str] = []
    entered = threading.Event()

    def other() -> None:
        entered.wait()
        with pytest.raises(LockedError):
            with file_lock(path, wait=False):
                pass
        with file_lock(path, on_wait=lambda m: order.append("waited")):
            order.append("other")

    t = threading.Thread(target=other)
    t.start()
    with file_lock(path):
        entered.set()
        while "waited" not in order:
            t.join(0.01)
        order.append("main")
    t.join()
    assert order == ["waited", "main", "other"]


# ----- SAEs with the same folder name -----------------------------------------------------------------
def test_two_local_saes_with_the_same_folder_name_are_both_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a, b = tmp_path / "a" / "mysae", tmp_path / "b" / "mysae"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    write_examples(store, "r", str(a), [1, 2])
    write_examples(store, "r", str(b), [7, 8, 9])
    assert store.sae_dir("r", str(a)) != store.sae_dir("r", str(b))
    assert store.sae_dir("r", str(a)).name.startswith("mysae-")
    assert sorted(store.saes("r")) == sorted([str(a), str(b)])
    ea, eb = (Store(store.root).read_table("r", str(s), "examples") for s in (a, b))
    assert set(ea["feature_index"].to_pylist()) == {1, 2} and set(ea["sae"].to_pylist()) == {str(a)}
    assert set(eb["feature_index"].to_pylist()) == {7, 8, 9} and set(eb["sae"].to_pylist()) == {str(b)}
    # a registry name keeps its plain folder; the same SAE spelled as a relative path finds its folder
    assert store.sae_dir("r", "py_4k_topk_s0").name == "py_4k_topk_s0"
    rel = os.path.relpath(a, ROOT)
    assert Store(store.root).sae_dir("r", rel) == store.sae_dir("r", str(a))


def test_a_folder_that_holds_another_sae_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "mysae", [1])
    # a store written before folder names carried a hash: 'mysae/' holds the local SAE 'x/mysae'
    manifest = store.sae_dir("r", "mysae") / "manifest.json"
    data = json.loads(manifest.read_text())
    data["sae"], data["sae_id"] = "x/mysae", "path:/somewhere/x/mysae"
    manifest.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="holds SAE 'x/mysae', not 'mysae'"):
        Store(store.root).sae_dir("r", "mysae")
    # and that legacy folder is still found under its own name
    assert Store(store.root).sae_dir("r", "x/mysae") == manifest.parent


# ----- damaged tables ---------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_damaged_table_is_shown_damaged_and_rebuilt_by_a_rerun(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    with ChatServer() as srv:
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code == 0, err
        before = store.read_table("r", "sae-a", "generations")
        path = store.table_path("r", "sae-a", "generations")
        if damage == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:  # a valid Parquet file with no rows
            pq.write_table(before.slice(0, 0), path)
        (status,) = list_runs(store, "r")
        assert status.stages["generate:openai:test-model"] == "damaged"
        assert status.family("generate") == "damaged"
        code, out, err = finish(start("runs", "--store", str(store.root)))
        assert code == 0 and "damaged" in out + err
        assert "generations" in out + err and "sae-sens generate" in out + err
        # a later stage refuses to build on it, naming the file and what to run
        code, _, err = finish(start("score", "--store", str(store.root), "--run", "r", "--sae", "sae-a"))
        assert code != 0 and "damaged" in err and "generations.parquet" in err and "Traceback" not in err
        # the rerun rebuilds it (from the answer cache: nothing is paid twice), never "up to date"
        sent = srv.count()
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code == 0, err
        assert "up to date" not in err
        assert srv.count() == sent
    after = Store(store.root).read_table("r", "sae-a", "generations")
    assert after.equals(before)
    (status,) = list_runs(Store(store.root), "r")
    assert status.stages["generate:openai:test-model"] == "done"


def test_verify_catches_a_same_size_edit(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", [1, 2])
    path = store.table_path("r", "sae-a", "examples")
    table = pq.read_table(path)
    texts = [t.replace("cat", "dog") for t in table["text"].to_pylist()]
    import pyarrow as pa

    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts)), path,
                   compression="zstd")
    info = store.manifest("r", "sae-a").tables["examples"]
    info_size = path.stat().st_size
    manifest = json.loads((path.parent / "manifest.json").read_text())
    manifest["tables"]["examples"]["size"] = info_size  # as if the edit kept the size
    (path.parent / "manifest.json").write_text(json.dumps(manifest))
    assert info["rows"] == table.num_rows
    assert store.table_problem("r", "sae-a", "examples") is None
    assert store.table_problem("r", "sae-a", "examples", verify=True) == "content differs from the recorded hash"


def test_leftover_temp_files_are_reported_and_removed_by_the_next_writer(tmp_path: Path, cli: CliRunner) -> None:
    """A process killed between a temp write and its rename leaves the temp file (what SIGKILL
    leaves: the write's own cleanup never runs). `runs --verify` names it; the next write to the
    folder, under its lock, removes it; a checkpoint's is reported, not removed (a pass may own it)."""
    from sae_sens.store import _mkstemp

    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", [1, 2])
    folder = store.sae_dir("r", "sae-a")
    fd, table_tmp = _mkstemp(folder / "generations.parquet")
    os.close(fd)
    ck = store.checkpoint_dir("r", "sae-a", "collect:pass")
    ck.mkdir(parents=True)
    fd, ck_tmp = _mkstemp(ck / "state.pt")
    os.close(fd)
    code, _, err = cli("runs", "--store", str(store.root), "--verify")
    assert code == 0 and "leftover" in err and "2 temp file(s)" in err
    code, _, err = cli("runs", "--store", str(store.root))  # without --verify: no directory walk
    assert "leftover" not in err
    write_examples(store, "r", "sae-a", [1, 2, 3])  # any write to the folder
    assert not Path(table_tmp).exists() and Path(ck_tmp).exists()
    assert store.leftovers("r", "sae-a") == [Path(ck_tmp)]


# ----- failing servers and read-only stores ----------------------------------------------------------
def test_a_server_that_rejects_everything_fails_the_stage_and_a_rerun_retries(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)

    def reject(_n: int, _body: dict) -> tuple[int, dict, dict]:
        return 400, {}, {"error": {"message": "this prompt is not allowed", "type": "invalid_request_error"}}

    with ChatServer(fail=reject) as srv:
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code != 0
        assert "Traceback" not in err and "refused all" in err
        assert srv.count(400) == len(FEATURES)
        assert "generate:openai:test-model" not in store.manifest("r", "sae-a").stages
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))  # not skipped as fresh
        assert code != 0 and srv.count(400) == 2 * len(FEATURES)
        srv.fail = None  # the server is fixed: the rerun asks again, for every feature
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code == 0, err
        assert srv.count(200) == len(FEATURES)
    assert queries_by_generator(Store(store.root)) == {"openai:test-model": len(FEATURES)}
    q = Store(store.root).read_table("r", "sae-a", "queries")
    assert set(q["status"].to_pylist()) == {"ok"}


def test_partial_rejections_are_recorded_with_counts_and_a_rerun_retries_only_those(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    refusing = {"on": True}

    def reject_some(n: int, body: dict) -> tuple[int, dict, dict] | None:
        text = body["messages"][-1]["content"]
        if refusing["on"] and any(f"feature {f} " in text for f in FEATURES[:3]):
            return 400, {}, {"error": {"message": "not allowed", "type": "invalid_request_error"}}
        return None

    with ChatServer(fail=reject_some) as srv:  # one server: its URL is part of the cache key
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code == 0, err
        assert "3 prompts were refused" in err
        rec = store.manifest("r", "sae-a").stage("generate:openai:test-model")
        assert rec is not None and rec.extra["n_rejected"] == 3 and rec.extra["n_failed_features"] == 3
        refusing["on"] = False
        srv.reset()
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code == 0, err
        assert "up to date" not in err
        assert srv.count() == srv.count(200) == 3  # only the refused ones are asked again
    q = Store(store.root).read_table("r", "sae-a", "queries")
    assert q.num_rows == len(FEATURES) and set(q["status"].to_pylist()) == {"ok"}


def _read_only_prefix(folder: Path) -> tuple[str, ...]:
    """A command prefix under which ``folder`` is read-only: a private read-only bind mount for root
    (file modes do not stop root), plain permissions otherwise."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555)
        return ()
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount --bind -o ro '{folder}' '{folder}'"],
            capture_output=True).returncode != 0:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    # --propagation private: the mount never leaves the child's namespace
    return ("unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind -o ro '{folder}' '{folder}' && exec \"$@\"", "sh")


def test_read_only_store_refuses_before_any_request(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    before = {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()}
    prefix = _read_only_prefix(store.root)
    try:
        with ChatServer() as srv:
            code, _, err = finish(start(*generate_args(store.root, srv.base_url), prefix=prefix))
            assert srv.count() == 0
    finally:
        for p in [store.root, *store.root.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
    assert code == 1
    assert "read-only" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in store.root.rglob("*") if p.is_file()} == before


# ----- SQL over the store ---------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sql_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", [1, 2, 3])
    with ChatServer() as srv:
        code, _, err = finish(start(*generate_args(store.root, srv.base_url)))
        assert code == 0, err
    return store


def test_sql_writes_are_refused_and_the_store_is_untouched(sql_store: Store, tmp_path: Path, cli: CliRunner) -> None:
    root = sql_store.root
    target = sql_store.table_path("r", "sae-a", "generations")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    attacks = {
        "copy out": f"COPY (SELECT 1) TO '{elsewhere}/x.csv'",
        "copy over a table": f"COPY (SELECT * FROM generations LIMIT 0) TO '{target}' (FORMAT parquet)",
        "copy in place": f"copy (select 1 as a) to '{target}' (format parquet, use_tmp_file false)",
        "attach": f"ATTACH '{elsewhere}/db.duckdb' AS x",
        "install": "INSTALL httpfs",
        "load": "LOAD json",
        "create": "CREATE TABLE t AS SELECT 1",
        "drop": "DROP VIEW generations",
        "set": "SET enable_external_access = true",
        "hidden after a select": f"SELECT 1; /* sneaky */ COPY generations TO '{elsewhere}/y.parquet'",
        "read outside": f"SELECT * FROM read_csv('{tmp_path}/outside.csv')",
    }
    (tmp_path / "outside.csv").write_text("a\n1\n")
    before = _snapshot(root)
    sql_file = tmp_path / "q.sql"
    for name, sql in attacks.items():
        for args in (["--sql", sql], ["--sql-file", str(sql_file)]):
            sql_file.write_text(sql)
            assert cli("report", "--store", str(root), *args).code != 0, (name, args)
    assert list(elsewhere.iterdir()) == []
    assert _snapshot(root) == before
    # reading the store's tables still works, through every entry point
    code, out, err = finish(start("report", "--store", str(root), "--format", "csv", "--sql",
                                  "SELECT generator, count(*) AS n FROM generations GROUP BY ALL"))
    assert code == 0, err
    assert "openai:test-model,30" in out
    code, out, err = finish(start("report", "--store", str(root), "--sql", f"COPY generations TO '{elsewhere}/z.csv'"))
    assert code == 1 and "COPY is not allowed" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(root) == before and list(elsewhere.iterdir()) == []


def test_sql_shell_refuses_writes_statement_by_statement(sql_store: Store, tmp_path: Path) -> None:
    from sae_sens.report.shell import sql_shell
    from sae_sens.report.views import connect

    before = _snapshot(sql_store.root)
    shown, notes = [], []
    lines = [f"COPY generations TO '{tmp_path}/out.parquet';", "ATTACH 'x.db';", "INSTALL spatial;",
             "SELECT count(*) AS n FROM generations;"]
    ok = sql_shell(connect(sql_store), lines, show=shown.append, note=notes.append)
    assert ok == 1 and shown[0].to_pylist() == [{"n": 30}]
    assert [n.split(" is not allowed")[0] for n in notes] == ["COPY", "ATTACH", "INSTALL"]
    assert not (tmp_path / "out.parquet").exists()
    assert _snapshot(sql_store.root) == before


def test_duckdb_cli_of_sae_sens_sql_cannot_write_anything(sql_store: Store, tmp_path: Path) -> None:
    """The real duckdb CLI that `sae-sens sql` opens: every write is refused, even a COPY in place over a
    store table (which DuckDB's allowed_paths alone would let through), and reads still work."""
    from sae_sens.cli.sql_cmd import duckdb_cli

    assert duckdb_cli() is not None, "duckdb-cli (a dependency) is not installed"
    before = _snapshot(sql_store.root)
    target = sql_store.table_path("r", "sae-a", "generations")
    out = tmp_path / "out"
    out.mkdir()
    script = "\n".join([
        f"COPY (SELECT 1 AS a) TO '{target}' (FORMAT parquet, USE_TMP_FILE false);",
        f"COPY (SELECT 1 AS a) TO '{target}' (FORMAT parquet);",
        f"COPY (SELECT 1) TO '{out}/x.csv';",
        f"ATTACH '{out}/a.db';",
        "INSTALL spatial;",
        "LOAD json;",
        "SET enable_external_access = true;",
        "CREATE TABLE t AS SELECT 1;",
        "DROP TABLE generations;",
        f".shell touch {out}/shell",
        f".output {out}/output.txt",
        f"SELECT * FROM read_csv('{tmp_path}/outside.csv');",
        "CREATE TEMP TABLE mine AS SELECT count(*) AS n FROM generations;",  # scratch work is fine
        ".mode csv",
        "SELECT n FROM mine;",
    ]) + "\n"
    (tmp_path / "outside.csv").write_text("a\n1\n")
    proc = subprocess.run([sys.executable, "-m", "sae_sens", "sql", "--store", str(sql_store.root)], input=script,
                          capture_output=True, text=True, cwd=ROOT, env={**env(), "HOME": str(tmp_path)}, timeout=120)
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout.splitlines()[-2:] == ["n", "30"], (stdout, stderr)
    assert proc.returncode != 0  # the refused statements
    assert stderr.count("disabled by configuration") >= 4 and "read-only mode" in stderr, stderr
    assert "cannot be used in -safe mode" in stderr
    assert list(out.iterdir()) == []
    assert _snapshot(sql_store.root) == before


# ----- collect while scoring, on a tiny real model -----------------------------------------------------
def test_collect_while_scoring_loses_nothing(tmp_path: Path, tiny_world: TinyWorld) -> None:
    model, sae, corpus = tiny_world.model, str(tiny_world.sae), tiny_world.corpus
    root = tmp_path / "store"
    common = ["--store", str(root), "--run", "r", "--sae", sae, "--model", str(model), "--device", "cpu"]
    collect = ["collect", *common, "--corpus", str(corpus), "--total-tokens", "2000", "--context-size", "40"]
    code, _, err = finish(start(*collect, "--feature-ids", "0,1,2"))
    assert code == 0, err
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"feature_index": f, "text": f"the {tiny_world.targets[f]} and more {i}"}) + "\n"
                             for f in range(3) for i in range(4)))
    code, _, err = finish(start("generate", *common[:6], "--from-table", str(texts), "--generator", "mine"))
    assert code == 0, err

    # score and a new selection at once: both start while the test holds the lock, so they contend
    # for it when it is released; one waits for the other, neither loses the other's writes
    store = Store(root)
    logs = [tmp_path / "score.err", tmp_path / "collect.err"]
    with store.lock("r", sae, what="the test"):
        procs = []
        for args, log in zip([["score", *common], [*collect, "--feature-ids", "0,1", "--replace"]], logs, strict=True):
            with log.open("w") as f:
                procs.append(subprocess.Popen([sys.executable, "-m", "sae_sens", *args], cwd=ROOT, env=env(),
                                              stdout=subprocess.DEVNULL, stderr=f, text=True))
        while not all("waiting for pid" in log.read_text() for log in logs):
            assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
            time.sleep(0.05)
    codes = [p.wait(600) for p in procs]
    assert codes == [0, 0], [log.read_text() for log in logs]
    assert store.damaged("r", sae, verify=True) == {}
    status = store.status("r", sae)
    assert status["collect"] == "done" and status["collect:pass"] == "done"
    assert status["score"] in ("done", "stale")  # stale when the new selection landed after it
    manifest = store.manifest("r", sae)
    for table, info in manifest.tables.items():
        assert store.read_table("r", sae, table).num_rows == info["rows"], table
    assert set(store.read_table("r", sae, "examples")["feature_index"].to_pylist()) == {0, 1}
    # score refuses the generations the new selection made stale, naming the command that refreshes
    # them; that command, then score, brings everything up to date with the collect that won
    code, _, err = finish(start("score", *common))
    if code:
        assert "stale" in err and "--generator mine" in err, err
        code, _, err = finish(start("generate", *common[:6], "--from-table", str(texts), "--generator", "mine"))
        assert code == 0, err
        code, _, err = finish(start("score", *common))
    assert code == 0, err
    assert Store(root).status("r", sae)["score"] == "done"
    scored = Store(root).read_table("r", sae, "scores")
    assert set(scored["feature_index"].to_pylist()) <= {0, 1, 2}


# ----- one-line errors and the smaller fixes ---------------------------------------------------------
def test_store_problems_get_one_line_naming_the_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    code, _, err = finish(start("runs", "--store", str(afile)))
    assert code == 1 and "afile is a file, not a folder" in err and "--store" in err
    assert len(err.strip().splitlines()) == 1

    root = tmp_path / "store"
    store = Store(root)
    write_examples(store, "r", "sae-a", [1, 2])
    code, _, err = finish(start("generate", "--store", str(root), "--run", "x" * 200, "--sae", "sae-a",
                                "--generator", "openai:m"))
    assert code == 2 and "--run" in err and len(err.strip().splitlines()) == 1

    examples = store.table_path("r", "sae-a", "examples")
    examples.write_bytes(examples.read_bytes()[:40])
    code, _, err = finish(start("generate", "--store", str(root), "--run", "r", "--sae", "sae-a",
                                "--generator", "openai:m", "--dry-run"))
    assert code == 1 and str(examples) in err and "damaged" in err and "sae-sens collect" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    manifest = store.sae_dir("r", "sae-a") / "manifest.json"
    manifest.write_text("{ not json")
    code, _, err = finish(start("runs", "--store", str(root)))
    assert code == 1 and str(manifest) in err and "not a valid manifest" in err
    assert len(err.strip().splitlines()) == 1


def test_full_disk_is_one_line_and_keeps_the_old_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    store = Store(tmp_path)
    write_examples(store, "r", "s", [1])
    before = store.read_table("r", "s", "examples")

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(StoreError) as e:
        write_examples(store, "r", "s", [1, 2, 3])
    assert "no space left to write" in e.value.one_line() and "examples.parquet" in e.value.one_line()
    assert isinstance(e.value, OSError)  # callers that catch OSError still do
    monkeypatch.undo()
    assert store.read_table("r", "s", "examples").equals(before)


def test_tables_and_manifests_follow_the_umask(tmp_path: Path) -> None:
    script = ("import os, sys; os.umask(int(sys.argv[2], 8))\n"
              "from tests.support.gen_support import write_examples\n"
              "from sae_sens.store import Store\n"
              "s = Store(sys.argv[1]); write_examples(s, 'r', 'a', [1])\n"
              "print(oct(os.stat(s.table_path('r', 'a', 'examples')).st_mode & 0o777),"
              " oct(os.stat(s.sae_dir('r', 'a') / 'manifest.json').st_mode & 0o777))\n")
    for umask, mode in (("022", "0o644"), ("002", "0o664"), ("077", "0o600")):
        res = subprocess.run([sys.executable, "-c", script, str(tmp_path / umask), umask], cwd=ROOT, env=env(),
                             capture_output=True, text=True)
        assert res.stdout.split() == [mode, mode], res


def test_a_torn_journal_line_never_costs_a_later_record(tmp_path: Path) -> None:
    from sae_sens.generate.runner import Checkpoint

    journal = Checkpoint(tmp_path / "answers.jsonl")
    journal.append({"query_hash": "a", "response": "first"})
    with journal.path.open("a") as f:
        f.write('{"query_hash": "b", "resp')  # killed mid-write
    journal.append({"query_hash": "c", "response": "after the crash"})
    assert sorted(journal.load()) == ["a", "c"]


def test_jsonl_with_a_bom_is_imported(tmp_path: Path) -> None:
    from sae_sens.generate.imports import TableImport

    path = tmp_path / "texts.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"feature_index": 1, "text": "a text"}\n{"feature_index": 2, "text": "b"}\n')
    result = TableImport(str(path), "mine").read({1, 2})
    assert [g["text"] for g in result.generations] == ["a text", "b"]


def test_an_unreachable_server_is_retried_only_a_few_times(tmp_path: Path) -> None:
    import socket

    from sae_sens.generate.backends import Unreachable
    from sae_sens.generate.runner import UNREACHABLE_RETRIES, Runner

    calls = []

    class Down:
        label, batch_size = "down", 1

        def complete(self, request: object) -> object:
            calls.append(request)
            raise Unreachable("cannot reach http://127.0.0.1:9/v1: Connection error.")

    runner = Runner(Down(), max_workers=1, max_retries=6, retry_base_s=0.01, retry_max_s=60)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="gave up after 3 attempts: cannot reach"):
        runner._attempts(lambda: runner.backend.complete(None), 1)
    assert len(calls) == UNREACHABLE_RETRIES + 1 == 3
    # through the CLI, with the default --max-retries: the real client's connection error, one line
    store = Store(tmp_path / "store")
    write_examples(store, "r", "sae-a", FEATURES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = finish(start(*generate_args(store.root, f"http://127.0.0.1:{port}/v1")))
    assert code == 1 and "cannot reach" in err and "--base-url" in err and len(err.strip().splitlines()) == 1
