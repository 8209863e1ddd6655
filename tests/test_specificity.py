"""The precision side of sensitivity: base rate, near-miss negatives, the token-injection control and
AUROC, on the same scored texts, and a known-answer test of the whole method.

The known answer: the tiny world's latents 0-2 are exact detectors of one token each (they fire iff
their token occurs), so on real passages with the token the sensitivity is 1, injecting the token
anywhere fires it (injection rate 1: it *is* a token detector), the base rate is the share of random
passages that happen to hold the token, and negatives without the token never fire (specificity 1).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from sae_sens.collect import CollectConfig, run_collect
from sae_sens.generate.references import draw_passages, inject
from sae_sens.schemas import role_of
from sae_sens.score import auroc
from sae_sens.stages import ModelOptions
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.testing import TinyWorld

RUN = "k"


# ----- units ---------------------------------------------------------------------------------------
def test_auroc_equals_the_pairwise_count_with_ties_as_half() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(0, 5, rng.integers(1, 12)).astype(float)  # a coarse grid: many ties
        n = rng.integers(0, 5, rng.integers(1, 12)).astype(float)
        brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in p for b in n) / (len(p) * len(n))
        assert auroc(p, n) == pytest.approx(brute, abs=1e-12)
    assert auroc([1.0, 2.0], [0.0]) == 1.0 and auroc([0.0], [0.0, 0.0]) == 0.5 and auroc([], [1.0]) is None


def test_roles_follow_the_label() -> None:
    assert [role_of(g) for g in ("openai:gpt-4.1-mini", "negatives:openai:gpt-4.1-mini", "corpus:demo:wiki",
                                 "baseline:demo:wiki", "inject:demo:wiki", "table:mine")] == \
        ["positive", "negative", "control", "base", "injection", "positive"]


def test_passages_are_seeded_and_skip_what_collect_read(tiny_world: TinyWorld) -> None:
    from sae_sens.hashing import hash_text

    tok, docs = tiny_world.tokenizer, tiny_world.docs
    skip = {hash_text(d) for d in docs[:100]}
    a, stats = draw_passages(docs, tok, 30, 21, skip=skip, seed=7)
    b, _ = draw_passages(docs, tok, 30, 21, skip=skip, seed=7)
    c, _ = draw_passages(docs, tok, 30, 21, skip=skip, seed=8)
    assert a == b and a != c and len(a) == 30 and stats["docs_scanned"] == 140
    texts = tok.batch_decode(a)
    assert all(any(t in d for d in docs[100:]) for t in texts)
    assert not any(t in d for t in texts for d in docs[:100])
    assert all(len(p) <= 21 for p in a)


def test_an_injected_token_survives_retokenising(tiny_world: TinyWorld) -> None:
    import random

    tok = tiny_world.tokenizer
    target = tok(" " + tiny_world.targets[0], add_special_tokens=False)["input_ids"][0]
    passage = tok(" ".join(tiny_world.others[:12]), add_special_tokens=False)["input_ids"]
    for seed in range(20):
        text = inject(tok, passage, target, random.Random(seed))
        assert text is not None and target in tok(text, add_special_tokens=False)["input_ids"]
        assert text.replace(" " + tiny_world.targets[0], "", 1) == tok.decode(passage)  # one token put in, nothing else


# ----- the known-answer test ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("specificity")
    store = Store(root / "store")
    run_collect(store, RUN, str(tiny_world.sae), CollectConfig(corpus=str(tiny_world.corpus), total_tokens=3000,
                                                               context_size=48, features=None, feature_ids=(0, 1, 2)),
                ModelOptions(model=str(tiny_world.model), device="cpu"))
    windows = next((store.cache_dir / "windows").glob("*.parquet"))
    n_read = max(max(d for d in row if d >= 0) for row in pq.read_table(windows)["doc_index"].to_pylist()) + 1
    return {"root": root, "store": store, "sae": str(tiny_world.sae), "n_read": n_read}


def _tables(store: Store, sae: str, name: str, label: str) -> list[dict[str, Any]]:
    return [r for r in store.read_table(RUN, sae, name).to_pylist() if r["generator"] == label]


@pytest.mark.slow  # every control generated and scored through the CLI
def test_known_answer_token_detectors(world: dict[str, Any], tiny_world: TinyWorld, cli: CliRunner,
                                      tmp_path: Path) -> None:
    store, sae, tok = world["store"], world["sae"], tiny_world.tokenizer
    docs, targets, others = tiny_world.docs, tiny_world.targets, tiny_world.others
    read, unread = docs[:world["n_read"]], docs[world["n_read"]:]
    # the controls' corpus: read documents first (never to be used), then the unread ones
    source = tmp_path / "heldout.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in read[:30] + unread))
    common = ["--store", str(store.root), "--run", RUN, "--sae", sae]
    for g, extra in ((f"corpus:{source}", ["--samples-per-feature", "5"]), (f"baseline:{source}", ["--passages", "60"]),
                     (f"inject:{source}", ["--samples-per-feature", "6"])):
        cli.ok("generate", *common, "--generator", g, *extra)
    # positives with the token and near misses without it, as an LLM's answers would be imported
    pos, neg = tmp_path / "pos.csv", tmp_path / "neg.csv"
    for path, with_token in ((pos, True), (neg, False)):
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["feature_index", "text"])
            for feat in (0, 1, 2):
                for i in range(4):
                    words = [others[(feat + i + j) % len(others)] for j in range(6)]
                    if with_token:
                        words.insert(3, targets[feat])
                    w.writerow([feat, " ".join(words)])
    cli.ok("generate", *common, "--from-table", str(pos), "--generator", "mine")
    cli.ok("generate", *common, "--from-table", str(neg), "--generator", "mine", "--negatives")
    cli.ok("score", *common, "--model", str(tiny_world.model), "--device", "cpu")

    gens = store.read_table(RUN, sae, "generations").to_pylist()
    assert {g["generator"]: g["role"] for g in gens} == {
        f"corpus:{source}": "control", f"baseline:{source}": "base", f"inject:{source}": "injection",
        "mine": "positive", "negatives:mine": "negative"}
    base_texts = [g["text"] for g in gens if g["generator"] == f"baseline:{source}" and g["feature_index"] == 0]
    assert len(base_texts) == 60 and len(set(base_texts)) == 60
    assert all(all(g["text"] in base_texts for g in gens if g["generator"] == f"baseline:{source}"
                   and g["feature_index"] == f) for f in (1, 2))  # one shared set
    assert not any(t.strip() in d for t in base_texts for d in read)  # never from text collect read
    for g in gens:
        if g["generator"] == f"inject:{source}":
            assert re.search(rf"\b{targets[g['feature_index']]}\b", g["text"])

    stats = {(r["generator"], r["feature_index"]): r for r in store.read_table(RUN, sae, "feature_stats").to_pylist()}
    for f in (0, 1, 2):
        target_id = tok(" " + targets[f], add_special_tokens=False)["input_ids"][0]
        holds = [target_id in tok(t, add_special_tokens=False)["input_ids"] for t in base_texts]
        expected_base = sum(holds) / len(holds)
        mine = stats[("mine", f)]
        assert mine["role"] == "positive" and mine["generated_sensitivity"] == 1.0
        assert mine["base_rate"] == expected_base and mine["n_base"] == 60  # exact: the detector fires iff the token is there
        assert mine["lift"] == 1.0 - expected_base
        assert mine["injection_rate"] == 1.0 and mine["n_injected"] == 6  # a token detector, and the control says so
        assert mine["specificity"] == 1.0 and mine["n_negative"] == 4
        assert mine["auroc"] == 1.0  # every positive above every negative
        assert mine["dense"] is False
        control = stats[(f"corpus:{source}", f)]
        assert control["role"] == "control" and control["generated_sensitivity"] == 1.0
        assert control["lift"] == 1.0 - expected_base and control["specificity"] is None
        # the base rate is within sampling error of the token's measured frequency in unread text:
        # P(a 21-token window holds the token) over every window of the unread documents
        windows = []
        for d in unread:
            ids = tok(d, add_special_tokens=False)["input_ids"]
            windows += [target_id in ids[i:i + 21] for i in range(max(len(ids) - 20, 1))]
        p = float(np.mean(windows))
        assert abs(mine["base_rate"] - p) <= 4 * np.sqrt(p * (1 - p) / 60) + 1e-9
        assert 0.0 < p < 1.0

    # the report: evidence beside the sensitivity, never averaged with it
    cli.ok("report", *common[:4], "--specificity", "-o", str(tmp_path / "r.json"))
    rows = {r["generator"]: r for r in json.loads((tmp_path / "r.specificity.json").read_text())}
    assert set(rows) == {"mine", f"corpus:{source}"}
    mine = rows["mine"]
    assert mine["sensitivity"] == 1.0 and mine["specificity"] == 1.0 and mine["injection_rate"] == 1.0
    assert mine["auroc"] == 1.0 and mine["features"] == 3
    base = np.mean([stats[("mine", f)]["base_rate"] for f in (0, 1, 2)])
    assert mine["base_rate"] == pytest.approx(base) and mine["lift"] == pytest.approx(1.0 - base)
    assert mine["specificity_low"] <= mine["specificity"] <= mine["specificity_high"]
    summary = json.loads(cli.ok("report", *common[:4], "--format", "json").out)
    assert {r["generator"] for r in summary} == {"mine"}  # no base, injection or negatives row, ...
    assert summary[0]["sensitivity"] == 1.0  # ... and nothing of theirs averaged in

    # one feature side by side: in the terminal and on the HTML page
    shown = " ".join(cli.ok("show", *common[:4], "--sae", sae, "0").out.split())
    fired = sum(tok(" " + targets[0], add_special_tokens=False)["input_ids"][0] in tok(t, add_special_tokens=False)[
        "input_ids"] for t in base_texts)
    assert "beside the sensitivity" in shown and f"({fired} of 60 fire; those shown)" in shown
    assert "near misses by negatives:mine (4 samples)" in shown and "token injections by inject:" in shown
    page = tmp_path / "r.html"
    cli.ok("report", *common[:4], "--html", str(page))
    text = page.read_text()
    assert text.count("random passage (fires)") == sum(min(5, round(stats[("mine", f)]["base_rate"] * 60))
                                                       for f in (0, 1, 2))
    assert text.count("near miss · ") == 12 and "specificity 1 (n=4)" in text

    # the same seed draws the same passages
    cli.ok("generate", *common, "--generator", f"baseline:{source}", "--passages", "60", "--force")
    again = [g["text"] for g in store.read_table(RUN, sae, "generations").to_pylist()
             if g["generator"] == f"baseline:{source}" and g["feature_index"] == 0]
    assert again == base_texts


@pytest.mark.slow  # its own SAE, collect, controls and score
def test_a_latent_for_a_or_b_seen_only_through_a(tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner) -> None:
    """What the method cannot see: a latent firing on token A or B, collected where only A occurs. Its
    examples, control passages and injections all show A; B leaves one trace, a base rate above what
    A alone explains."""
    from tests.support.testing import token_detector_sae

    tok, docs, others = tiny_world.tokenizer, tiny_world.docs, tiny_world.others
    one = {w: tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in others}
    sae = None
    for a, b in [(x, y) for i, x in enumerate(others[1:10]) for y in others[i + 2:10]]:
        try:  # the first pair whose union one direction separates from every other token
            sae = token_detector_sae(tmp_path / "sae_ab", tiny_world.model, [(one[a], one[b])], layer=1,
                                     texts=docs[:80])
            break
        except ValueError:
            continue
    assert sae is not None
    filler = next(w for w in others if w not in (a, b))
    without_b = [re.sub(rf"\b{b}\b", filler, d) for d in docs]
    corpus = tmp_path / "a_only.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in without_b[:120]))
    heldout = tmp_path / "heldout.jsonl"  # unread text where both occur
    heldout.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[120:]))
    store = tmp_path / "store"
    common = ["--store", str(store), "--run", "ab", "--sae", str(sae)]
    cli.ok("collect", *common, "--model", str(tiny_world.model), "--device", "cpu", "--corpus", str(corpus),
           "--total-tokens", "3000", "--context-size", "48", "--feature-ids", "0")
    for g, extra in ((f"corpus:{heldout}", ["--samples-per-feature", "5"]), (f"baseline:{heldout}", ["--passages", "60"]),
                     (f"inject:{heldout}", ["--samples-per-feature", "6"])):
        cli.ok("generate", *common, "--generator", g, *extra)
    b_texts = tmp_path / "b.csv"
    b_texts.write_text("feature_index,text\n" + "".join(f"0,the {filler} {b} and {filler}\n" for _ in range(3)))
    cli.ok("generate", *common, "--from-table", str(b_texts), "--generator", "b-texts")
    cli.ok("score", *common, "--model", str(tiny_world.model), "--device", "cpu")
    st = Store(store)
    sae_name = str(sae)

    # what the method sees: A, everywhere it looks
    examples = st.read_table("ab", sae_name, "examples").to_pylist()
    assert examples and {e["token_ids"][e["peak_offset"]] for e in examples} == {one[a]}
    gens = st.read_table("ab", sae_name, "generations").to_pylist()
    assert all(re.search(rf"\b{a}\b", g["text"]) for g in gens if g["generator"].startswith(("corpus:", "inject:")))
    injected = [q for q in st.read_table("ab", sae_name, "queries").to_pylist() if q["generator"].startswith("inject:")]
    assert injected[0]["user_prompt"] == f"injected tokens: {' ' + a!r}"
    stats = {r["generator"]: r for r in st.read_table("ab", sae_name, "feature_stats").to_pylist()}
    assert stats[f"corpus:{heldout}"]["generated_sensitivity"] == 1.0 and stats["b-texts"]["injection_rate"] == 1.0

    # what it cannot: B fires the latent (texts with B alone are all active) ...
    assert stats["b-texts"]["generated_sensitivity"] == 1.0
    # ... and shows only as a base rate above A's share of the random passages
    base = [g["text"] for g in gens if g["generator"] == f"baseline:{heldout}"]
    ids = [set(tok(t, add_special_tokens=False)["input_ids"]) for t in base]
    with_a = sum(one[a] in s for s in ids) / len(ids)
    with_a_or_b = sum(bool({one[a], one[b]} & s) for s in ids) / len(ids)
    assert stats["b-texts"]["base_rate"] == with_a_or_b > with_a
