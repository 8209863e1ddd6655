"""Near-miss negatives (``generate --negatives``) through the openai client and a real OpenAI-compatible
server on 127.0.0.1: their own prompt and label, role ``negative``, cached, resumable, costed and
planned like every generation."""

from __future__ import annotations

import pytest

from sae_sens.errors import BudgetExceededError, GenerationError, UsageError
from sae_sens.generate import GenerateConfig, parse_generator, plan_generate, run_generate
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.gen_support import write_examples
from tests.support.openai_server import ChatServer

FEATURES = list(range(0, 40, 5))  # 8 features
NEG = "negatives:openai:test-model"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "store")
    write_examples(s, "r", "sae-a", FEATURES)
    return s


def cfg(server: ChatServer, negatives: bool = True, **kw) -> GenerateConfig:  # type: ignore[no-untyped-def]
    kw.setdefault("retry_base_s", 0.01)
    return GenerateConfig(generator=(NEG if negatives else "openai:test-model"), base_url=server.base_url, **kw)


def test_the_label_and_role_of_negatives() -> None:
    spec = parse_generator(NEG)
    assert (spec.kind, spec.target, spec.label, spec.negatives) == ("openai", "test-model", NEG, True)
    table = parse_generator("negatives:mine", "x.csv")
    assert table.kind == "table" and table.label == "negatives:mine" and table.negatives
    for bad in ("negatives:corpus:demo:wiki", "negatives:baseline:demo:wiki", "negatives:negatives:openai:x"):
        with pytest.raises(UsageError, match="--negatives needs an LLM generator"):
            parse_generator(bad)


def test_negatives_get_their_own_prompt_rows_and_cache_entries(store: Store) -> None:
    with ChatServer() as srv:
        run_generate(store, "r", "sae-a", cfg(srv, negatives=False))
        run_generate(store, "r", "sae-a", cfg(srv))
        assert srv.count() == 2 * len(FEATURES)  # the positives' answers are not reused for negatives
        half = len(FEATURES)
        pos_body = next(b for b in srv.bodies[:half] if "feature 0 top" in b["messages"][1]["content"])
        neg_body = next(b for b in srv.bodies[half:] if "feature 0 top" in b["messages"][1]["content"])
        assert "must NOT contain the pattern" in neg_body["messages"][0]["content"]
        assert "must NOT" not in pos_body["messages"][0]["content"]
        assert "leave that shared pattern out" in neg_body["messages"][1]["content"]
        # the same examples are shown: only the instructions differ
        assert pos_body["messages"][1]["content"].split("First work out")[0] == \
            neg_body["messages"][1]["content"].split("First work out")[0]
        forced = run_generate(store, "r", "sae-a", cfg(srv), force=True)
        assert srv.count() == 2 * len(FEATURES) and forced.extra["n_cached"] == len(FEATURES)  # never paid twice
    gens = store.read_table("r", "sae-a", "generations").to_pylist()
    assert {(g["generator"], g["role"]) for g in gens} == {("openai:test-model", "positive"), (NEG, "negative")}
    assert sum(g["generator"] == NEG for g in gens) == 10 * len(FEATURES)
    assert store.manifest("r", "sae-a").stage(f"generate:{NEG}") is not None


def test_negatives_resume_after_a_failed_run(store: Store) -> None:
    broken = {"on": True}

    def fail(n, body):  # type: ignore[no-untyped-def]
        if broken["on"] and "feature 35 " in body["messages"][1]["content"]:
            return 502, {}, {"error": {"message": "bad gateway"}}
        return None

    with ChatServer(fail=fail) as srv:
        with pytest.raises(GenerationError, match="1 of 8 features got no answer"):
            run_generate(store, "r", "sae-a", cfg(srv, max_workers=1, max_retries=1))
        assert srv.count(200) == 7
        broken["on"] = False
        srv.reset()
        out = run_generate(store, "r", "sae-a", cfg(srv, max_workers=1, max_retries=1))
        assert srv.count() == 1 and out.extra["n_resumed"] == 7  # only the missing one is sent again


def test_negatives_are_costed_bounded_by_max_cost_and_planned(store: Store) -> None:
    priced = {"max_workers": 2, "max_tokens": 200, "price_in": 1000.0, "price_out": 1000.0}
    with ChatServer() as srv:
        plan = plan_generate(store, "r", "sae-a", cfg(srv, **priced))
        assert srv.count() == 0 and plan["requests"] == len(FEATURES) and plan["generator"] == NEG
        assert plan["est_cost_usd"] > 0
        with pytest.raises(BudgetExceededError, match="stopped before exceeding --max-cost"):
            run_generate(store, "r", "sae-a", cfg(srv, max_cost=2.0, **priced))
        sent = srv.count()
        assert 1 <= sent < len(FEATURES)
        out = run_generate(store, "r", "sae-a", cfg(srv, max_cost=100.0, **priced))
        assert srv.count() == len(FEATURES) and out.extra["n_resumed"] == sent
        assert plan_generate(store, "r", "sae-a", cfg(srv, **priced))["requests"] == 0
    costs = [q["cost_usd"] for q in store.read_table("r", "sae-a", "queries").to_pylist() if q["generator"] == NEG]
    assert len(costs) == len(FEATURES) and all(c > 0 for c in costs)


def test_the_cli_flag_and_its_dry_run(store: Store, cli: CliRunner) -> None:
    with ChatServer() as srv:
        common = ["generate", "--store", str(store.root), "--run", "r", "--sae", "sae-a",
                  "--generator", "openai:test-model", "--base-url", srv.base_url, "--negatives"]
        dry = cli.ok(*common, "--dry-run", "--price-in", "1", "--price-out", "1")
        assert srv.count() == 0 and NEG in dry.out
        cli.ok(*common)
        assert srv.count() == len(FEATURES)
    assert {g["role"] for g in store.read_table("r", "sae-a", "generations").to_pylist()} == {"negative"}
