"""Pure parts of the generate stage: prompts, parsing, generator names, prices, retries, journals."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sae_sens.errors import ConfigError, UsageError
from sae_sens.generate import (
    GenerateConfig,
    build_prompts,
    load_template,
    lookup_price,
    parse_generator,
    parse_samples,
)
from sae_sens.generate.backends import parse_retry_after
from sae_sens.generate.core import make_requests
from sae_sens.generate.pricing import Price
from sae_sens.generate.runner import Budget, Checkpoint, QueryCache, Runner
from tests.support.gen_support import examples_table

SEP = "<SEP>"


# ----- parsing ------------------------------------------------------------------------------------
def test_parse_separator_strips_marks_and_blank_parts():
    samples, method = parse_samples(f"  one {{{{cat}}}}\n{SEP}\n\n{SEP}\ntwo\n<sep>\nthree\n", SEP)
    assert (samples, method) == (["one cat", "two", "three"], "separator")


def test_parse_separator_strips_only_sequential_numbering():
    assert parse_samples(f"1. alpha\n{SEP}\n2) beta\n{SEP}\n3: gamma", SEP)[0] == ["alpha", "beta", "gamma"]
    assert parse_samples(f"1. alpha\n{SEP}\nbeta", SEP)[0] == ["1. alpha", "beta"]
    # a lone bullet or number may be the very pattern the feature fires on: kept
    assert parse_samples(f"- item one\n{SEP}\n7. seventh", SEP)[0] == ["- item one", "7. seventh"]


def test_parse_numbered_list_drops_preamble_and_keeps_continuations():
    text = 'Here are the samples:\n1. first line\n   still first\n2) "second"\n**Sample 3:** third\n- fourth'
    samples, method = parse_samples(text, SEP)
    assert method == "numbered"
    assert samples == ["first line\n   still first", "second", "third", "fourth"]


def test_parse_blank_lines_single_and_empty():
    assert parse_samples("para one\nline\n\n  \npara two", SEP) == (["para one\nline", "para two"], "blank_lines")
    assert parse_samples("just one text", SEP) == (["just one text"], "single")
    assert parse_samples("   \n ", SEP) == ([], "empty")
    assert parse_samples(None, SEP) == ([], "empty")
    assert parse_samples(f"{SEP}\n{SEP}", SEP) == ([], "empty")


# ----- prompts ------------------------------------------------------------------------------------
def test_default_prompt_shows_each_example_and_asks_for_one_extra():
    cfg = GenerateConfig(samples_per_feature=10, n_top=2, n_iw=1)
    prompts = build_prompts(examples_table([5, 3]), cfg, load_template())
    assert [p.feature_index for p in prompts] == [3, 5]
    p = prompts[0]
    assert "{{like this}}" in p.system and "exactly 11 samples" in p.system and SEP in p.system  # explains the marks and the format
    shown = [line for line in p.user.splitlines() if line.startswith("feature 3")]
    # the first 2 top and the first iw example, nothing else, each once
    assert sorted(shown) == sorted([
        "feature 3 top 0: the {{cat}} sat on the mat", "feature 3 top 1: the {{cat}} sat on the mat",
        "feature 3 iw 3: the {{cat}} sat on the mat"])
    assert p.n_examples == 3 and "$" not in p.system + p.user
    # deterministic: the same config gives the same prompts (the cache depends on it)
    assert build_prompts(examples_table([5, 3]), cfg, load_template()) == prompts


def test_custom_template_and_bad_templates(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("=== system ===\nS $n_request\n=== user ===\nU $n_examples $separator\n$examples\n")
    cfg = GenerateConfig(samples_per_feature=2, n_top=1, n_iw=0, prompt_template=good, separator="##")
    p = build_prompts(examples_table([1]), cfg, load_template(good))[0]
    assert p.system == "S 3" and p.user == "U 1 ##\nfeature 1 top 0: the {{cat}} sat on the mat"
    missing_section = tmp_path / "a.txt"
    missing_section.write_text("just a user prompt with $examples")
    no_examples = tmp_path / "b.txt"
    no_examples.write_text("=== system ===\ns\n=== user ===\nno placeholder")
    for bad in (missing_section, no_examples, tmp_path / "absent.txt"):
        with pytest.raises(ConfigError):
            load_template(bad)


def test_query_hash_changes_with_everything_that_decides_the_answer():
    ex = examples_table([1])
    base = make_requests(ex, GenerateConfig(generator="openai:m", base_url="http://127.0.0.1:1/v1"))[0].query_hash
    variants = [
        GenerateConfig(generator="openai:other", base_url="http://127.0.0.1:1/v1"),
        GenerateConfig(generator="openai:m", base_url="http://127.0.0.1:2/v1"),
        GenerateConfig(generator="openai:m", base_url="http://127.0.0.1:1/v1", seed=1),
        GenerateConfig(generator="openai:m", base_url="http://127.0.0.1:1/v1", temperature=0.5),
        GenerateConfig(generator="openai:m", base_url="http://127.0.0.1:1/v1", samples_per_feature=3),
    ]
    hashes = {make_requests(ex, c)[0].query_hash for c in variants}
    assert base not in hashes and len(hashes) == len(variants)
    # workers, retries and budget do not change the answer
    same = GenerateConfig(generator="openai:m", base_url="http://127.0.0.1:1/v1", max_workers=3, max_retries=0)
    assert make_requests(ex, same)[0].query_hash == base


# ----- generator names, config ----------------------------------------------------------------------
def test_parse_generator_labels():
    assert parse_generator(None).label == "openai:gpt-4.1-mini"
    assert parse_generator("openai").label == "openai:gpt-4.1-mini"
    hf = parse_generator("hf:demo:smollm2")
    assert (hf.kind, hf.target, hf.label) == ("hf", "demo:smollm2", "hf:demo:smollm2")
    t = parse_generator("table:out/x.csv")
    assert (t.kind, t.target, t.label) == ("table", "out/x.csv", "table:out/x.csv")
    imp = parse_generator("claude-opus", "x.parquet")  # an imported file by its resolved path
    assert (imp.kind, imp.target, imp.label) == ("table", str(Path("x.parquet").resolve()), "claude-opus")
    assert parse_generator(None, "x.csv").label == f"table:{Path('x.csv').resolve()}"
    for bad in ("gpt-4o", "vllm:x", "hf:", "openai:  "):
        with pytest.raises(UsageError):
            parse_generator(bad)


def test_config_rejects_bad_values():
    for kw in ({"price_in": 1.0}, {"samples_per_feature": 0}, {"max_workers": 0}, {"max_cost": 0.0},
               {"separator": "  "}, {"n_top": 0, "n_iw": 0}):
        with pytest.raises(UsageError):
            GenerateConfig(**kw)


def test_manifest_config_never_holds_credentials():
    cfg = GenerateConfig(generator="openai:m", base_url="https://user:hunter2@llm.example.com:8443/v1")
    config = cfg.manifest_config("abc")
    assert config["base_url"] == "https://llm.example.com:8443/v1"
    assert "hunter2" not in repr(config)


# ----- prices ---------------------------------------------------------------------------------------
def test_price_lookup():
    assert lookup_price("openai", "gpt-4o-mini-2024-07-18") == Price(0.15, 0.60)  # longest prefix, not gpt-4o
    assert lookup_price("openai", "gpt-4.1-mini") == Price(0.40, 1.60)
    assert lookup_price("openai", "gpt-4.1-mini", "https://api.openai.com/v1") == Price(0.40, 1.60)
    assert lookup_price("openai", "gpt-4.1-mini", "http://localhost:8000/v1") is None  # a local server's name
    assert lookup_price("openai", "my-model") is None
    assert lookup_price("openai", "my-model", None, 1.0, 2.0) == Price(1.0, 2.0)
    assert lookup_price("hf", "anything").cost(10**6, 10**6) == 0.0
    assert Price(2.0, 8.0).cost(500_000, 250_000) == pytest.approx(3.0)


# ----- retries, budget, journals ---------------------------------------------------------------------
def test_retry_after_headers():
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({}) is None


def test_backoff_is_exponential_with_jitter_and_honours_retry_after():
    runner = Runner(backend=None, max_workers=1, max_retries=5, retry_base_s=1.0, retry_max_s=8.0)  # type: ignore[arg-type]
    for attempt, step in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)):
        delays = {runner.backoff(attempt, None) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays) and len(delays) > 1
    assert all(2.0 <= runner.backoff(1, 2.0) <= 2.2 for _ in range(20))
    assert runner.backoff(1, 100.0) <= 8.8  # capped


def test_budget_counts_in_flight_requests_at_worst_case():
    from sae_sens.generate import Request

    price = Price(1_000_000.0, 1_000_000.0)  # $1 per token: easy arithmetic
    budget = Budget(max_cost=250.0, price=price, max_tokens=100)
    r1, r2 = Request(1, "", "x" * 40, "h1"), Request(2, "", "x" * 40, "h2")
    assert budget.reserve(r1)  # 10 + 20 framing + 100 = 130 worst case
    assert not budget.reserve(r2)  # 130 + 130 > 250
    budget.settle(r1, 50.0)
    assert budget.reserve(r2) and budget.spent == 50.0


def test_checkpoint_ignores_a_torn_last_line(tmp_path):
    ck = Checkpoint(tmp_path / "c" / "answers.jsonl")
    assert ck.load() == {}
    ck.append({"query_hash": "a", "response": "x"})
    ck.append({"query_hash": "b", "response": "y"})
    with open(ck.path, "a") as f:
        f.write('{"query_hash": "c", "resp')  # killed mid-write
    assert set(ck.load()) == {"a", "b"}
    ck.clear()
    assert not ck.path.exists()


def test_query_cache_round_trip(tmp_path):
    cache = QueryCache(tmp_path)
    assert cache.get("abcd") is None
    cache.put("abcd", {"response": "r"})
    assert cache.get("abcd") == {"response": "r"}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_runner_stops_sleeping_retries_at_once():
    from sae_sens.generate.backends import TransientError
    from sae_sens.generate.runner import _Cancelled

    runner = Runner(backend=None, max_workers=1, max_retries=3, retry_base_s=1000.0, retry_max_s=1000.0)  # type: ignore[arg-type]
    calls, raised = [], []

    def flaky():
        calls.append(1)
        raise TransientError("503")

    def worker():
        try:
            runner._attempts(flaky, 1)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion below
            raised.append(e)

    t = threading.Thread(target=worker)
    t.start()
    while not calls:
        pass
    runner._stop.set()  # what Ctrl-C or a permanent error does: the 500-1000 s backoff ends now
    t.join()
    assert len(calls) == 1 and runner.stats.retries == 1 and isinstance(raised[0], _Cancelled)
