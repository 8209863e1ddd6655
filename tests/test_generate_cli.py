"""`sae-sens generate` end to end: a real subprocess killed mid-stage, resumed, and the CLI's output."""

from __future__ import annotations

import _thread
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sae_sens.generate import GenerateConfig, make_requests, run_generate
from sae_sens.generate.runner import Checkpoint, QueryCache
from sae_sens.store import Store
from tests.support.gen_support import plain, write_examples
from tests.support.openai_server import ChatServer, prompt_hash

ROOT = Path(__file__).resolve().parents[1]
FEATURES = list(range(0, 120, 5))  # 24 features
STAGE = "generate:openai:test-model"
COMPARED = ["feature_index", "generator", "system_prompt", "user_prompt", "response", "status", "prompt_tokens",
            "completion_tokens", "n_parsed", "parse_method", "query_hash"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def start_cli(store: Path, base_url: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT)
    args = [sys.executable, "-m", "sae_sens", "generate", "--store", str(store), "--run", "r", "--sae", "sae-a",
            "--generator", "openai:test-model", "--base-url", base_url, "--max-workers", "2", *extra]
    return subprocess.Popen(args, cwd=store.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_answers(srv: ChatServer, proc: subprocess.Popen, n: int) -> None:
    while srv.count(200) < n:
        assert proc.poll() is None, f"the CLI ended early: {proc.communicate()}"
        time.sleep(0.01)


@pytest.mark.slow  # kills a real CLI process mid-stage and reruns it
def test_killed_mid_stage_then_rerun_equals_an_uninterrupted_run(tmp_path, cli):
    store_path = tmp_path / "store"
    store = Store(store_path)
    examples = write_examples(store, "r", "sae-a", FEATURES)
    with ChatServer(latency_s=0.05) as srv:
        cfg = GenerateConfig(generator="openai:test-model", base_url=srv.base_url, max_workers=2)
        requests = make_requests(examples, cfg)
        server_hash = {r.feature_index: prompt_hash([{"role": "system", "content": r.system},
                                                     {"role": "user", "content": r.user}]) for r in requests}
        journal = Checkpoint(store.checkpoint_dir("r", "sae-a", STAGE) / "answers.jsonl")

        # 1. Ctrl-C (KeyboardInterrupt in the main thread, as the signal handler raises it): exit 130 + hint
        def interrupt_after(n: int) -> None:
            while srv.count(200) < n:
                time.sleep(0.005)
            _thread.interrupt_main()

        threading.Thread(target=interrupt_after, args=(3,), daemon=True).start()
        code, _, err = cli("generate", "--store", str(store_path), "--run", "r", "--sae", "sae-a",
                           "--generator", "openai:test-model", "--base-url", srv.base_url, "--max-workers", "2")
        assert code == 130 and "rerun the same command to resume" in err
        assert 1 <= len(journal.load()) <= 3 + 2
        # 2. SIGKILL (no chance to clean up) after a few more answers
        proc = start_cli(store_path, srv.base_url)
        wait_for_answers(srv, proc, len(srv.answered()) + 6)
        proc.kill()
        proc.wait()
        time.sleep(0.2)  # requests the dead process left in flight still land at the server
        answered_before = srv.answered()
        # persisted = journaled for this stage, or in the store's query cache (written just before the journal)
        cache = QueryCache(store.cache_dir / "generate")
        done = {rec["feature_index"] for rec in journal.load().values()}
        done |= {r.feature_index for r in requests if cache.get(r.query_hash) is not None}
        # at most the requests in flight (--max-workers 2, per interrupted process) are lost
        assert len(answered_before) - 4 <= len(done) <= len(answered_before)
        assert 0 < len(done) < len(FEATURES) and not store.has_table("r", "sae-a", "generations")

        # 3. rerun to the end (in this process, same CLI): only missing features are sent
        srv.reset()
        code, _, err = cli("generate", "--store", str(store_path), "--run", "r", "--sae", "sae-a",
                           "--generator", "openai:test-model", "--base-url", srv.base_url)
        assert code == 0, err
        resent = srv.answered()
        assert sorted(resent) == sorted(server_hash[f] for f in FEATURES if f not in done)
        assert srv.count() == len(resent)  # no errors, no retries, no duplicates

        # an uninterrupted run in a fresh store gives the same tables
        clean = Store(tmp_path / "clean")
        write_examples(clean, "r", "sae-a", FEATURES)
        run_generate(clean, "r", "sae-a", cfg)
    for table in ("generations", "queries"):
        cols = COMPARED if table == "queries" else None
        assert plain(store.read_table("r", "sae-a", table), cols) == plain(clean.read_table("r", "sae-a", table), cols)
    assert store.read_table("r", "sae-a", "generations").num_rows == 10 * len(FEATURES)
    assert store.status("r", "sae-a")[STAGE] == "done" and not journal.path.exists()


def test_cli_generates_prints_a_summary_and_reuses_on_rerun(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    store = Store(tmp_path / "s")
    write_examples(store, "r", "sae-a", FEATURES[:4])
    write_examples(store, "r", "sae-b", FEATURES[4:6])
    with ChatServer(models=("m1",)) as srv:
        base = ["generate", "--store", str(store.root), "--run", "r", "--sae", "sae-a", "--sae", "sae-b",
                "--base-url", srv.base_url, "--llm-model", "m1", "--price-in", "1", "--price-out", "2"]
        code, out, err = cli(*base, "--dry-run")
        assert code == 0 and srv.count() == 0
        assert "6 requests, estimated cost $" in out and "sae-a" in out and "sae-b" in out
        code, out, err = cli(*base, "-n", "4")
        assert code == 0, err
        assert srv.count() == 6 and "spent this time: $" in out
        assert "openai:m1" in out and "done" in out
        gens = store.read_table("r", "sae-b", "generations")
        assert gens.num_rows == 8 and set(gens["generator"].to_pylist()) == {"openai:m1"}
        code, out, _ = cli(*base, "-n", "4")
        assert code == 0 and "skipped (fresh)" in out and srv.count() == 6


def test_cli_import_under_a_label(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    store = Store(tmp_path / "s")
    write_examples(store, "r", "sae-a", [1, 2])
    table = tmp_path / "texts.csv"
    table.write_text("feature_index,text\n1,hello world\n2,other text\n9,unknown feature\n")
    code, out, err = cli("generate", "--store", str(store.root), "--run", "r", "--sae", "sae-a",
                         "--from-table", str(table), "--generator", "claude-x")
    assert code == 0, err
    assert "claude-x" in out and "imported" in out
    assert "dropped 1 of 3 rows: feature not in this run's examples (rows 3)" in out + err
    assert plain(store.read_table("r", "sae-a", "generations"), ["feature_index", "generator", "text"]) == [
        {"feature_index": 1, "generator": "claude-x", "text": "hello world"},
        {"feature_index": 2, "generator": "claude-x", "text": "other text"}]


@pytest.mark.parametrize("argv, message", [
    (["--generator", "openai:a", "--llm-model", "b"], "--generator openai:a and --llm-model b disagree"),
    (["--generator", "hf:x", "--llm-model", "b"], "--llm-model only applies to openai generators"),
    (["--generator", "gpt-4o"], "unknown generator 'gpt-4o'"),
    (["--generator", "openai:gpt-4.1-mini"], "OPENAI_API_KEY is not set"),
    (["--price-in", "1"], "--price-in and --price-out go together"),
])
def test_cli_bad_input_is_one_line(tmp_path, cli, argv, message):
    store = Store(tmp_path / "s")
    write_examples(store, "r", "sae-a", [1])
    code, _, err = cli("generate", "--store", str(store.root), "--run", "r", "--sae", "sae-a", *argv)
    assert code != 0 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_examples_says_to_collect(tmp_path, cli):
    code, _, err = cli("generate", "--store", str(tmp_path), "--sae", "sae-z", "--from-table", "x.csv")
    assert code == 1 and "no examples table" in err and "sae-sens collect" in err


def test_run_dry_run_plans_without_running(tiny_world, tmp_path, cli) -> None:  # type: ignore[no-untyped-def]
    import csv
    import io

    from sae_sens.collect import CollectConfig, run_collect
    from sae_sens.stages import ModelOptions
    from sae_sens.store import Store

    store = tmp_path / "store"
    common = ["--store", str(store), "--run", "r", "--sae", str(tiny_world.sae), "--generator", "openai:gpt-4.1-mini"]
    def rows(out: str) -> list[dict[str, str]]:  # piped: TSV, then the total line
        return list(csv.DictReader(io.StringIO("\n".join(x for x in out.splitlines() if "\t" in x)), delimiter="\t"))

    res = cli.ok("run", *common, "--corpus", str(tiny_world.corpus), "--feature-ids", "0,1,2", "--dry-run")
    (row,) = rows(res.out)
    assert row["collect"].startswith("would run") and row["requests"] == "3" and float(row["est_prompt_tokens"]) > 0
    assert "3 requests to openai:gpt-4.1-mini" in res.out and "estimated from examples" in res.out
    assert not store.exists()  # nothing run, not even a store made

    run_collect(Store(store), "r", str(tiny_world.sae), CollectConfig(
        corpus=str(tiny_world.corpus), total_tokens=3000, context_size=48, features=None, feature_ids=(0, 1, 2)),
        ModelOptions(model=str(tiny_world.model), device="cpu"))
    res = cli.ok("run", *common, "--feature-ids", "0,1,2", "--dry-run", "--max-cost", "0.000001")
    (row,) = rows(res.out)
    assert row["collect"] == "collected (3 features)" and "would stop before sending" in res.out
    gen = cli.ok("generate", "--store", str(store), "--run", "r", "--sae", str(tiny_world.sae), "--generator",
                 "openai:gpt-4.1-mini", "--dry-run").out
    (g,) = rows(gen)
    # once collected, run's plan is generate's own
    assert [row[c] for c in ("requests", "est_prompt_tokens", "est_completion_tokens", "est_cost")] == [
        g[c] for c in ("requests", "est_prompt_tokens", "est_completion_tokens", "est_cost")]
