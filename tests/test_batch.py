"""``--batch``: generate (and judge) through the OpenAI Batch API, against a real local server of its
documented endpoints (tests/support/batch_server.py): statuses that advance over time, results out
of order, failing requests, an expiring batch, a rejected file, kills between any two steps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sae_sens import faults
from sae_sens.errors import ApiKeyError, BatchPendingError, BudgetExceededError, GenerationError
from sae_sens.generate import GenerateConfig, plan_generate, run_generate
from sae_sens.generate.batch import BatchJournal, split_files
from sae_sens.generate.pricing import Price, lookup_price
from sae_sens.store import Store
from tests.support.batch_server import BatchServer
from tests.support.cli import CliRunner
from tests.support.gen_support import plain, write_examples
from tests.support.openai_server import ChatServer

FEATURES = list(range(0, 40, 5))  # 8 features
STAGE = "generate:openai:test-model"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "store")
    write_examples(s, "r", "sae-a", FEATURES)
    return s


def bcfg(server: Any, **kw: Any) -> GenerateConfig:
    kw.setdefault("batch_poll_s", 0.001)
    kw.setdefault("batch_max_requests", 3)  # 8 requests: three files
    return GenerateConfig(generator="openai:test-model", base_url=server.base_url, batch=True, **kw)


def journal(store: Store) -> BatchJournal:
    return BatchJournal(store.checkpoint_dir("r", "sae-a", STAGE) / "batches.jsonl")


def successes(server: BatchServer) -> list[str]:
    out = []
    for b in server.batches.values():
        if b.get("output_file_id"):
            out += [json.loads(x)["custom_id"] for x in server.files[b["output_file_id"]]["data"].splitlines()]
    return out


def test_files_split_by_count_and_size() -> None:
    lines = [b"x" * 10] * 7
    assert split_files(lines, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert split_files(lines, 50, max_bytes=25) == [[0, 1], [2, 3], [4, 5], [6]]


def test_the_batch_price_is_half_the_list_price() -> None:
    assert lookup_price("openai", "gpt-4.1-mini") == Price(0.40, 1.60)
    assert lookup_price("openai", "gpt-4.1-mini", batch=True) == Price(0.20, 0.80)
    assert lookup_price("openai", "gpt-4.1-mini", price_in=1.0, price_out=2.0, batch=True) == Price(1.0, 2.0)


def test_every_feature_answered_through_failures_an_expiry_and_a_rejected_file(store: Store) -> None:
    flaky = {"on": True}

    def fail(cid: str, body: dict[str, Any]) -> tuple[int, str] | None:
        if flaky["on"] and "feature 10 " in body["messages"][1]["content"]:
            flaky["on"] = False  # a 500 once: its request goes into the next round
            return 500, "internal error"
        return None

    with BatchServer(polls_per_step=2, fail=fail, expire={1}, reject={2}) as srv:
        out = run_generate(store, "r", "sae-a", bcfg(srv))
    gens = store.read_table("r", "sae-a", "generations").to_pylist()
    assert sorted({g["feature_index"] for g in gens}) == FEATURES and len(gens) == 10 * len(FEATURES)
    ok = successes(srv)
    assert len(ok) == len(set(ok)) == len(FEATURES)  # every request answered once: nothing paid twice
    assert len(srv.executed) == len(FEATURES) + 1  # only the one 500 ran again (the expired half never ran)
    assert {b["status"] for b in srv.batches.values()} >= {"completed", "expired", "failed"}
    queries = store.read_table("r", "sae-a", "queries").to_pylist()
    assert all(q["batch_id"] in srv.batches for q in queries) and {q["status"] for q in queries} == {"ok"}
    assert out.extra["n_batches"] == len(srv.order) >= 4 and out.extra["n_resubmitted"] >= 2


def test_batch_answers_equal_synchronous_ones_and_serve_a_synchronous_rerun(store: Store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with BatchServer() as srv:
        run_generate(store, "r", "sae-a", bcfg(srv))
    other = Store(tmp_path / "sync")
    write_examples(other, "r", "sae-a", FEATURES)
    with ChatServer() as chat:
        cfg = GenerateConfig(generator="openai:test-model", base_url=srv.base_url)
        # same prompts, same cache key: a synchronous run in the same store sends nothing ...
        forced = run_generate(store, "r", "sae-a", cfg, force=True)
        assert forced.extra["n_cached"] == len(FEATURES)
        # ... and a synchronous run elsewhere (the same server answers) writes the same texts
        run_generate(other, "r", "sae-a", GenerateConfig(generator="openai:test-model", base_url=chat.base_url))
        assert chat.count() == len(FEATURES)
    def texts(s: Store) -> list[Any]:
        return [(g["feature_index"], g["sample_index"], g["text"])
                for g in plain(s.read_table("r", "sae-a", "generations"))]
    assert len(texts(store)) == 10 * len(FEATURES) and texts(store) == texts(other)


@pytest.mark.parametrize("point,hit", [("batch:file", 1), ("batch:uploaded", 2), ("batch:created", 1),
                                       ("batch:created", 3), ("batch:submitted", 2), ("batch:answer", 4),
                                       ("batch:collected", 1), ("journal:appended", 5)])
def test_a_kill_between_any_two_steps_loses_nothing_and_pays_nothing_twice(
        store: Store, monkeypatch: pytest.MonkeyPatch, point: str, hit: int) -> None:
    class Killed(BaseException):
        pass

    hits: dict[str, int] = {}
    real = faults.point

    def kill(name: str) -> None:
        hits[name] = hits.get(name, 0) + 1
        if name == point and hits[name] == hit:
            raise Killed(name)
        real(name)

    with BatchServer(polls_per_step=2) as srv:
        monkeypatch.setattr(faults, "point", kill)
        with pytest.raises(Killed):
            run_generate(store, "r", "sae-a", bcfg(srv))
        monkeypatch.setattr(faults, "point", real)
        run_generate(store, "r", "sae-a", bcfg(srv))
    gens = store.read_table("r", "sae-a", "generations").to_pylist()
    assert sorted({g["feature_index"] for g in gens}) == FEATURES
    assert len(srv.executed) == len(set(srv.executed)) == len(FEATURES)  # no request ran twice
    assert len(srv.order) == 3  # no batch submitted twice, also when killed before its id was journaled


def test_no_wait_submits_and_a_rerun_collects(store: Store, cli: CliRunner) -> None:
    with BatchServer(polls_per_step=3) as srv:
        common = ["generate", "--store", str(store.root), "--run", "r", "--sae", "sae-a", "--generator",
                  "openai:test-model", "--base-url", srv.base_url, "--batch", "--batch-poll", "0.001"]
        code, out, err = cli(*common, "--no-wait")
        assert code == 75 and "waiting:" in err and "batch_0" in err and "Traceback" not in err
        assert len(srv.order) == 1 and not store.has_table("r", "sae-a", "generations")
        runs = json.loads(cli.ok("runs", "--store", str(store.root), "--format", "json").out)
        # the stage has no record yet: its name comes from the journal, not the checkpoint folder's
        assert "openai:test-model" in json.dumps(runs) and "openai_test-model" not in json.dumps(runs)
        assert "waiting (batch)" in json.dumps(runs)
        code, _, err = cli(*common, "--no-wait")  # still at the server: polled once, nothing resubmitted
        assert code == 75 and len(srv.order) == 1
        cli.ok(*common)
        assert len(srv.order) == 1 and len(srv.executed) == len(FEATURES)
    assert {g["feature_index"] for g in store.read_table("r", "sae-a", "generations").to_pylist()} == set(FEATURES)
    assert "waiting (batch)" not in cli.ok("runs", "--store", str(store.root), "--format", "json").out


def test_cost_max_cost_and_dry_run_at_the_batch_price(store: Store) -> None:
    priced = {"max_tokens": 200, "price_in": 1000.0, "price_out": 1000.0}
    with BatchServer() as srv:
        sync_plan = plan_generate(store, "r", "sae-a", GenerateConfig(generator="openai:gpt-4.1-mini"))
        batch_plan = plan_generate(store, "r", "sae-a", GenerateConfig(generator="openai:gpt-4.1-mini", batch=True))
        assert batch_plan["est_cost_usd"] == pytest.approx(sync_plan["est_cost_usd"] / 2)
        with pytest.raises(BudgetExceededError, match="--max-cost"):
            run_generate(store, "r", "sae-a", bcfg(srv, max_cost=1.5, **priced))
        done = len(srv.executed)
        assert 1 <= done < len(FEATURES)  # what fitted ran; nothing beyond the budget was submitted
        out = run_generate(store, "r", "sae-a", bcfg(srv, max_cost=100.0, **priced))
        assert len(srv.executed) == len(FEATURES) and out.extra["n_resumed"] == done
    costs = [q["cost_usd"] for q in store.read_table("r", "sae-a", "queries").to_pylist()]
    assert all(c > 0 for c in costs)


def test_errors_are_one_line(store: Store, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-0123456789")
    with BatchServer(api_key="sk-right") as srv:
        with pytest.raises(ApiKeyError, match="rejected the API key"):
            run_generate(store, "r", "sae-a", bcfg(srv))
    with pytest.raises(GenerationError, match="cannot reach"):
        run_generate(store, "r", "sae-a", GenerateConfig(generator="openai:test-model", batch=True,
                                                         base_url="http://127.0.0.1:9/v1"))
    code, _, err = cli("generate", "--store", str(store.root), "--run", "r", "--sae", "sae-a",
                       "--generator", "hf:demo:smollm2", "--batch")
    assert code == 2 and "--batch needs an openai: generator" in err and "Traceback" not in err


@pytest.mark.slow  # collect and score on the tiny world around the batch generation
def test_run_passes_batch_to_its_generate_stage(tiny_world, tmp_path, cli: CliRunner) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    with BatchServer(polls_per_step=2) as srv:
        cli.ok("run", "--store", str(store), "--run", "b", "--sae", str(tiny_world.sae), "--model",
               str(tiny_world.model), "--device", "cpu", "--corpus", str(tiny_world.corpus), "--total-tokens", "3000",
               "--context-size", "48", "--feature-ids", "0,1,2", "--generator", "openai:test-model",
               "--base-url", srv.base_url, "--batch", "--batch-poll", "0.001")
    st = Store(store)
    queries = st.read_table("b", str(tiny_world.sae), "queries").to_pylist()
    assert len(queries) == 3 and all(q["batch_id"] == "batch_0" for q in queries)
    assert st.has_table("b", str(tiny_world.sae), "feature_stats")


def test_no_wait_leaves_the_batches_journaled(store: Store) -> None:
    with BatchServer(polls_per_step=5) as srv:
        with pytest.raises(BatchPendingError, match="3 batch\\(es\\) at the server"):
            run_generate(store, "r", "sae-a", bcfg(srv, batch_wait=False))
        assert [f["batch_id"] for f in journal(store).open_batches()] == ["batch_0", "batch_1", "batch_2"]
        run_generate(store, "r", "sae-a", bcfg(srv))
        assert journal(store).open_batches() == [] and len(srv.order) == 3


def test_a_torn_journal_line_does_not_swallow_the_next_event(tmp_path) -> None:  # type: ignore[no-untyped-def]
    j = BatchJournal(tmp_path / "batches.jsonl", STAGE)
    j.append({"event": "file", "key": "f0", "hashes": ["h"]})
    with j.path.open("ab") as f:  # a kill in the middle of the next line
        f.write(b'{"event": "submitted", "key": "f0", "bat')
    j.append({"event": "submitted", "key": "f0", "batch_id": "batch_7"})
    assert j.load()["f0"]["batch_id"] == "batch_7"
    assert json.loads(j.path.read_text().splitlines()[0])["stage"] == STAGE
