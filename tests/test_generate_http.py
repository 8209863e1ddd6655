"""The openai backend against real HTTP servers on 127.0.0.1 (our own ChatServer, and llm-katan)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from sae_sens.errors import (
    ApiKeyError,
    BudgetExceededError,
    ConfigError,
    GenerationError,
    PermanentGenerationError,
)
from sae_sens.generate import GenerateConfig, make_requests, plan_generate, run_generate
from sae_sens.generate.runner import Checkpoint
from sae_sens.store import Store
from tests.support.gen_support import plain, write_examples
from tests.support.openai_server import ChatServer, echo_samples, random_failures

FEATURES = list(range(0, 60, 5))  # 12 features


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    write_examples(s, "r", "sae-a", FEATURES)
    return s


def cfg_for(server: ChatServer, **kw) -> GenerateConfig:
    kw.setdefault("retry_base_s", 0.01)
    return GenerateConfig(generator="openai:test-model", base_url=server.base_url, **kw)


def expected_generations(store: Store, cfg: GenerateConfig) -> list[dict]:
    """What a perfect run must produce: the server's deterministic samples, first N kept."""
    examples = store.read_table("r", "sae-a", "examples")
    rows = []
    for r in make_requests(examples, cfg):
        messages = [{"role": "system", "content": r.system}, {"role": "user", "content": r.user}]
        samples = echo_samples(messages, cfg.n_request, cfg.separator).split(f"\n{cfg.separator}\n")
        rows += [{"feature_index": r.feature_index, "generator": "openai:test-model", "sample_index": i, "text": t,
                  "role": "positive"}
                 for i, t in enumerate(samples[: cfg.samples_per_feature])]
    return rows


def test_every_feature_completes_through_30_percent_5xx_and_429(store):
    with ChatServer(fail=random_failures(0.3, seed=3)) as srv:
        cfg = cfg_for(srv, max_workers=4, max_retries=8)
        out = run_generate(store, "r", "sae-a", cfg)
        failures = srv.count() - srv.count(200)
        statuses = {h.status for h in srv.hits}
    assert failures >= 3 and {429, 200} <= statuses and statuses & {500, 503}
    assert srv.count(200) == len(FEATURES)  # each feature answered once: no duplicate requests
    assert out.extra["n_retries"] == failures and out.extra["n_sent"] == srv.count()
    gens = plain(store.read_table("r", "sae-a", "generations"))
    assert gens == expected_generations(store, cfg)  # nothing duplicated, nothing missing
    q = store.read_table("r", "sae-a", "queries").to_pylist()
    assert sorted(r["feature_index"] for r in q) == FEATURES
    assert sum(r["attempts"] for r in q) == srv.count()
    assert {(r["status"], r["n_parsed"], r["parse_method"]) for r in q} == {("ok", 11, "separator")}
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["latency_s"] > 0 for r in q)


def test_retry_after_is_honoured(store):
    def fail(n, body):
        return (429, {"retry-after-ms": "300"}, {"error": {"message": "slow down"}}) if n == 0 else None

    with ChatServer(fail=fail) as srv:
        run_generate(store, "r", "sae-a", cfg_for(srv, max_workers=1))
        first, second = srv.hits[0], srv.hits[1]
    assert first.status == 429 and second.prompt_hash == first.prompt_hash
    assert second.at - first.at >= 0.3


def test_a_request_past_its_timeout_is_retried(store):
    def slow_first(n, body):
        if n == 0:
            time.sleep(1.0)  # the client gave up after 0.3 s; this late answer is never read
        return None

    with ChatServer(fail=slow_first) as srv:
        run_generate(store, "r", "sae-a", cfg_for(srv, max_workers=1, timeout=0.3))
    q = store.read_table("r", "sae-a", "queries").to_pylist()
    assert [r["attempts"] for r in q] == [2] + [1] * (len(FEATURES) - 1) and {r["status"] for r in q} == {"ok"}
    assert store.read_table("r", "sae-a", "generations").num_rows == 10 * len(FEATURES)


def test_concurrency_is_bounded_by_max_workers(store):
    with ChatServer(latency_s=0.1) as srv:
        run_generate(store, "r", "sae-a", cfg_for(srv, max_workers=3))
    assert 2 <= srv.max_in_flight <= 3


@pytest.mark.parametrize("case", ["bad_key", "unknown_model", "no_quota"])
def test_permanent_errors_stop_at_once(store, monkeypatch, case):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-123")
    kw = {"api_key": "sk-right"} if case == "bad_key" else {"quota_exhausted": case == "no_quota"}
    with ChatServer(**kw, latency_s=0.02) as srv:
        model = "no-such-model" if case == "unknown_model" else "test-model"
        cfg = GenerateConfig(generator=f"openai:{model}", base_url=srv.base_url, max_workers=2, max_retries=6)
        expected = {"bad_key": ApiKeyError, "unknown_model": PermanentGenerationError,
                    "no_quota": PermanentGenerationError}[case]
        with pytest.raises(expected) as e:
            run_generate(store, "r", "sae-a", cfg)
        time.sleep(0.1)  # let any straggler land before counting
        sent = srv.count()
    assert sent <= 2  # at most what was in flight: no retries, no further features
    line = e.value.one_line()
    assert "\n" not in line and "sk-wrong-key-123" not in line
    assert {"bad_key": "rejected the API key (401)", "unknown_model": "'no-such-model' not found",
            "no_quota": "quota"}[case] in line
    assert not store.has_table("r", "sae-a", "generations")


def test_missing_key_for_a_remote_server_fails_before_sending(store):
    with pytest.raises(ApiKeyError, match="OPENAI_API_KEY is not set") as e:
        run_generate(store, "r", "sae-a", GenerateConfig(generator="openai:gpt-4.1-mini"))
    assert ".env" in e.value.one_line()


def test_unreachable_server_gives_up_quickly(store):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = GenerateConfig(generator="openai:m", base_url=f"http://127.0.0.1:{port}/v1", max_workers=2,
                         max_retries=1, retry_base_s=0.01)
    with pytest.raises(GenerationError, match="first 2 requests all failed"):
        run_generate(store, "r", "sae-a", cfg)


def test_a_feature_that_keeps_failing_is_retried_on_the_next_run(store):
    bad = make_requests(store.read_table("r", "sae-a", "examples"), GenerateConfig())[-1].feature_index
    broken = {"on": True}

    def fail(n, body):
        if broken["on"] and f"feature {bad} " in body["messages"][1]["content"]:
            return 502, {}, {"error": {"message": "bad gateway"}}
        return None

    with ChatServer(fail=fail) as srv:
        cfg = cfg_for(srv, max_workers=1, max_retries=2)
        with pytest.raises(GenerationError, match="1 of 12 features got no answer after 3 attempts"):
            run_generate(store, "r", "sae-a", cfg)
        assert srv.count(502) == 3 and srv.count(200) == 11
        assert not store.has_table("r", "sae-a", "generations")  # tables only ever hold a complete stage
        broken["on"] = False
        srv.reset()
        out = run_generate(store, "r", "sae-a", cfg)
        assert srv.count() == 1  # only the failed feature is sent again
    assert out.extra["n_resumed"] == 11 and out.rows["generations"] == 120


def test_a_refused_prompt_is_recorded_not_retried(store):
    def fail(n, body):
        if "feature 5 " in body["messages"][1]["content"]:
            return 400, {}, {"error": {"message": "prompt violates policy", "code": "content_filter"}}
        return None

    with ChatServer(fail=fail) as srv:
        out = run_generate(store, "r", "sae-a", cfg_for(srv, max_workers=2))
        assert srv.count(400) == 1
    q = {r["feature_index"]: r for r in store.read_table("r", "sae-a", "queries").to_pylist()}
    assert q[5]["status"] == "error" and "prompt violates policy" in q[5]["error"] and q[5]["n_parsed"] == 0
    assert out.rows["generations"] == 110 and any("refused" in w for w in out.extra["warnings"])


def test_answers_are_cached_across_runs_and_saes(store):
    write_examples(store, "other-run", "sae-b", FEATURES)  # same examples: same prompts
    with ChatServer() as srv:
        cfg = cfg_for(srv)
        run_generate(store, "r", "sae-a", cfg)
        first = srv.count()
        assert run_generate(store, "r", "sae-a", cfg).skipped
        forced = run_generate(store, "r", "sae-a", cfg, force=True)
        other = run_generate(store, "other-run", "sae-b", cfg)
        assert srv.count() == first == len(FEATURES)  # never paid twice
        assert forced.extra["n_cached"] == other.extra["n_cached"] == len(FEATURES)
        run_generate(store, "r", "sae-a", cfg_for(srv, seed=7))  # a new seed is a new request
        assert srv.count() == 2 * len(FEATURES)
    a = plain(store.read_table("r", "sae-a", "generations"))
    b = plain(store.read_table("other-run", "sae-b", "generations"))
    assert len(a) == len(b) and a != b  # sae-a now holds the seed-7 texts


def test_max_cost_stops_before_the_budget_and_resumes(store):
    priced = {"max_workers": 2, "max_tokens": 200, "price_in": 1000.0, "price_out": 1000.0}  # $0.001 per token
    with ChatServer() as srv:
        # each request's worst case is its prompt estimate + 200 tokens, about $0.5: a few fit in $2
        with pytest.raises(BudgetExceededError, match="stopped before exceeding --max-cost") as e:
            run_generate(store, "r", "sae-a", cfg_for(srv, max_cost=2.0, **priced))
        assert "raise --max-cost" in e.value.one_line()
        sent = srv.count()
        journal = Checkpoint(store.checkpoint_dir("r", "sae-a", "generate:openai:test-model") / "answers.jsonl")
        answers = list(journal.load().values())
        assert 1 <= sent < len(FEATURES) and len(answers) == sent
        assert sum(a["prompt_tokens"] + a["completion_tokens"] for a in answers) / 1000 <= 2.0  # never exceeded
        out = run_generate(store, "r", "sae-a", cfg_for(srv, max_cost=100.0, **priced))
        assert srv.count() == len(FEATURES) and out.extra["n_resumed"] == sent  # only the rest was sent
    costs = store.read_table("r", "sae-a", "queries")["cost_usd"].to_pylist()
    assert all(c > 0 for c in costs) and out.extra["cost_usd"] == pytest.approx(sum(costs))


def test_max_cost_without_a_known_price_is_refused(store):
    with ChatServer() as srv:
        with pytest.raises(ConfigError, match="--max-cost needs the price of 'test-model'"):
            run_generate(store, "r", "sae-a", cfg_for(srv, max_cost=1.0))
        assert srv.count() == 0


def test_dry_run_sends_nothing_and_counts_what_is_left(store):
    with ChatServer(models=("gpt-4.1-mini",)) as srv:
        cfg = GenerateConfig(generator="openai:gpt-4.1-mini", base_url=srv.base_url, price_in=0.4, price_out=1.6)
        plan = plan_generate(store, "r", "sae-a", cfg)
        assert srv.count() == 0
        assert plan["requests"] == len(FEATURES) and plan["done"] == 0
        assert plan["est_prompt_tokens"] > 100 * len(FEATURES) and plan["est_completion_tokens"] > 0
        assert plan["est_cost_usd"] == pytest.approx(
            (plan["est_prompt_tokens"] * 0.4 + plan["est_completion_tokens"] * 1.6) / 1e6)
        run_generate(store, "r", "sae-a", cfg)
        assert plan_generate(store, "r", "sae-a", cfg)["requests"] == 0


def test_the_api_key_never_reaches_the_store(store, monkeypatch):
    secret = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def fail(n, body):  # a server that echoes the key in an error message, as some do
        if "feature 10 " in body["messages"][1]["content"]:
            return 400, {}, {"error": {"message": f"bad request for key {secret}"}}
        return None

    with ChatServer(api_key=secret, fail=fail) as srv:
        run_generate(store, "r", "sae-a", cfg_for(srv, max_workers=3))
        assert srv.count(200) == len(FEATURES) - 1  # the key was used and accepted
    # an interrupted run leaves a journal: it must not hold the key either
    store.checkpoint_dir("r", "sae-a", "x").mkdir(parents=True)
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert len(files) > len(FEATURES)  # tables, manifest, cache entries
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
    q = {r["feature_index"]: r for r in store.read_table("r", "sae-a", "queries").to_pylist()}
    assert q[10]["error"] == "400: bad request for key ***"


@pytest.mark.slow  # starts the llm-katan server process
def test_llm_katan_echo_server_with_injected_500s(store, tmp_path):
    # llm-katan is a dev dependency, installed next to this interpreter
    exe = os.path.join(os.path.dirname(sys.executable), "llm-katan")
    exe = exe if os.path.exists(exe) else shutil.which("llm-katan") or "llm-katan"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "-m", "echo-model", "-b", "echo", "-h", "127.0.0.1", "-p", str(port), "--error-rate", "0.3",
         "--max-concurrent", "8", "--stats-file", str(tmp_path / "stats.json"), "--disable-dashboard",
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while True:  # wait until it listens (or fail if it died)
            assert proc.poll() is None, "llm-katan exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        cfg = GenerateConfig(generator="openai:echo-model", base_url=f"http://127.0.0.1:{port}/v1", max_workers=4,
                             max_retries=10, retry_base_s=0.01)
        # llm-katan's injection is unseeded: with 40 requests at a 30% rate, P(no failure) is 6e-7
        features = list(range(40))
        write_examples(store, "r", "sae-k", features)
        out = run_generate(store, "r", "sae-k", cfg)
    finally:
        proc.terminate()
        proc.wait()
    q = store.read_table("r", "sae-k", "queries").to_pylist()
    assert sorted(r["feature_index"] for r in q) == features and {r["status"] for r in q} == {"ok"}
    assert out.extra["n_retries"] > 0  # failures were injected and survived
    assert sum(r["attempts"] for r in q) == len(features) + out.extra["n_retries"]
    assert all(r["n_parsed"] >= 1 for r in q)
    assert all(r["response"].startswith("[echo] model=echo-model") for r in q)
