"""The ``hf:`` backend on a tiny randomly initialised chat model saved as a normal HF folder."""

from __future__ import annotations

import pytest

from sae_sens.errors import ConfigError
from sae_sens.generate import GenerateConfig, run_generate
from sae_sens.model import MODEL_RESOLVERS
from sae_sens.schemas import make_table
from sae_sens.store import Store
from tests.support.gen_support import plain
from tests.support.testing import build_tiny_model

FEATURES = [2, 9, 4]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", family="llama", hidden=32)


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "short.txt"  # the tiny model reads 512 positions: keep the prompt short
    path.write_text("=== system ===\nwrite $n_request texts\n=== user ===\n$examples\n")
    return path


def store_with_examples(root) -> Store:
    store = Store(root)
    # different lengths per feature, so a batch really needs padding
    rows = [{"feature_index": f, "example_index": 0, "kind": "top", "max_activation": 1.0,
             "text": "the {{cat}} sat" + " on the mat" * k} for k, f in enumerate(FEATURES)]
    store.write_table("r", "sae-a", "examples", make_table("examples", rows))
    return store


def hf_cfg(model, template, **kw) -> GenerateConfig:
    return GenerateConfig(generator=f"hf:{model}", prompt_template=template, samples_per_feature=2, max_tokens=8,
                          n_top=1, n_iw=0, **kw)


def test_left_padded_batches_match_one_at_a_time(tiny_model, template, tmp_path):
    """Greedy decoding: a batch of prompts of different lengths gives exactly what each prompt gives alone,
    which holds only when padding goes on the left."""
    batched = store_with_examples(tmp_path / "b")
    single = store_with_examples(tmp_path / "s")
    run_generate(batched, "r", "sae-a", hf_cfg(tiny_model, template, batch_size=3, temperature=0.0))
    run_generate(single, "r", "sae-a", hf_cfg(tiny_model, template, batch_size=1, temperature=0.0))
    cols = ["feature_index", "response", "prompt_tokens", "completion_tokens"]
    a, b = plain(batched.read_table("r", "sae-a", "queries"), cols), plain(single.read_table("r", "sae-a", "queries"), cols)
    assert a == b
    assert len({r["prompt_tokens"] for r in a}) == len(FEATURES)  # the batch really was ragged


def test_sampled_texts_do_not_depend_on_the_batch(tiny_model, template, tmp_path):
    """Sampling is seeded per request: a batch of three samples what each request samples alone, and
    so a resumed run, which batches only the requests a killed run left unanswered, writes the texts
    an uninterrupted run writes."""
    cols = ["feature_index", "response", "completion_tokens"]
    got = {}
    for batch in (3, 2, 1):
        store = store_with_examples(tmp_path / str(batch))
        run_generate(store, "r", "sae-a", hf_cfg(tiny_model, template, batch_size=batch, temperature=1.0))
        got[batch] = plain(store.read_table("r", "sae-a", "queries"), cols)
    assert got[3] == got[2] == got[1]
    greedy = store_with_examples(tmp_path / "greedy")
    run_generate(greedy, "r", "sae-a", hf_cfg(tiny_model, template, batch_size=3, temperature=0.0))
    assert plain(greedy.read_table("r", "sae-a", "queries"), cols) != got[3]  # it really sampled


def test_hf_backend_samples_with_a_seed_for_every_feature(tiny_model, template, tmp_path, monkeypatch):
    monkeypatch.setitem(MODEL_RESOLVERS, "tinytest:", lambda _id: str(tiny_model))  # as demo: ids resolve
    runs, stores = {}, {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        stores[name] = store = store_with_examples(tmp_path / name)
        cfg = GenerateConfig(generator="hf:tinytest:x", prompt_template=template, samples_per_feature=2,
                             max_tokens=8, n_top=1, n_iw=0, seed=seed, batch_size=2)
        out = run_generate(store, "r", "sae-a", cfg)
        runs[name] = plain(store.read_table("r", "sae-a", "queries"), ["feature_index", "generator", "response"])
    assert runs["a"] == runs["b"]  # same seed: same samples
    assert runs["a"] != runs["c"]
    q = stores["a"].read_table("r", "sae-a", "queries").to_pylist()
    assert sorted(r["feature_index"] for r in q) == sorted(FEATURES)
    for r in q:
        assert r["generator"] == "hf:tinytest:x" and r["status"] == "ok" and r["attempts"] == 1
        assert r["prompt_tokens"] > 5 and 1 <= r["completion_tokens"] <= 8 and r["cost_usd"] == 0.0
        assert r["parse_method"] in {"separator", "numbered", "blank_lines", "single", "empty"}
    gens = stores["a"].read_table("r", "sae-a", "generations").to_pylist()
    for r in q:  # the tiny model writes gibberish: whatever parsed is kept, up to samples_per_feature
        texts = [g["text"] for g in gens if g["feature_index"] == r["feature_index"]]
        assert len(texts) == min(2, r["n_parsed"]) and all(t.strip() for t in texts)
    assert out.extra["spent_usd"] == 0.0


def test_prompt_longer_than_the_model_reads_is_a_clear_error(tiny_model, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("=== system ===\n" + "many words here " * 400 + "\n=== user ===\n$examples\n")
    store = store_with_examples(tmp_path / "s")
    with pytest.raises(ConfigError, match="more than the 512 that"):
        run_generate(store, "r", "sae-a", hf_cfg(tiny_model, long))
