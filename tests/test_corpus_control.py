"""The corpus: control on a tiny real model and corpus: passages come only from documents collect did
not read, contain the feature's activating token, and a feature whose token the unread text lacks gets
fewer passages (reported, not invented); then they are scored like any generator's texts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sae_sens.collect import CollectConfig, run_collect
from sae_sens.generate.corpus_control import retrieve_passages
from sae_sens.stages import ModelOptions
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.testing import TinyWorld

RUN = "c"


@pytest.fixture(scope="module")
def world(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny world collected (features 0-2) into a store of this module's."""
    root = tmp_path_factory.mktemp("corpus_control")
    store = Store(root / "store")
    run_collect(store, RUN, str(tiny_world.sae), CollectConfig(corpus=str(tiny_world.corpus), total_tokens=3000,
                                                               context_size=48, features=None, feature_ids=(0, 1, 2)),
                ModelOptions(model=str(tiny_world.model), device="cpu"))
    return {"root": root, "store": store, "sae": str(tiny_world.sae), "model": str(tiny_world.model),
            "docs": tiny_world.docs, "targets": tiny_world.targets, "tok": tiny_world.tokenizer}


def test_passages_come_from_unread_text_and_missing_tokens_give_fewer(world: dict[str, Any],
                                                                      cli: CliRunner) -> None:
    docs, targets, store, sae = world["docs"], world["targets"], world["store"], world["sae"]
    # which documents collect read: those behind its windows (doc_index counts non-blank documents)
    windows = next((store.cache_dir / "windows").glob("*.parquet"))
    import pyarrow.parquet as pq

    n_read = max(max(d for d in row if d >= 0) for row in pq.read_table(windows)["doc_index"].to_pylist()) + 1
    assert n_read < 200
    read = docs[:n_read]
    lacking = targets[2]
    unread = [re.sub(rf"\b{lacking}\b", "river", d) for d in docs[200:]]
    # the control's corpus: documents collect read (must be skipped), unread ones without the third
    # feature's token, and exactly two unread documents with it
    two = [f"a quiet {lacking} by the lake", f"under the old bridge one {lacking} waited"]
    source = world["root"] / "control.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in read[:20] + unread + two))
    err = cli.ok("generate", "--store", str(store.root), "--run", RUN, "--sae", sae, "--generator",
                 f"corpus:{source}", "--samples-per-feature", "5", "--device", "cpu").err
    err = " ".join(err.split())  # the console wraps long lines
    label = f"corpus:{source}"
    gens = [g for g in store.read_table(RUN, sae, "generations").to_pylist() if g["generator"] == label]
    by_f = {f: [g["text"] for g in gens if g["feature_index"] == f] for f in (0, 1, 2)}
    assert len(by_f[0]) == len(by_f[1]) == 5
    assert len(by_f[2]) == 2  # fewer, not invented ...
    assert "1 features got fewer than 5 passages" in err and "2 (2)" in err  # ... and reported
    queries = {q["feature_index"]: q for q in store.read_table(RUN, sae, "queries").to_pylist()
               if q["generator"] == label}
    assert queries[2]["n_parsed"] == 2 and queries[0]["parse_method"] == "corpus"
    for f, texts in by_f.items():
        for t in texts:
            assert re.search(rf"\b{targets[f]}\b", t)  # the activating token, in a new context
            assert not any(t.strip() in d for d in read)  # never from text collect read

    # scored like any generator; the token detectors fire on every retrieved passage
    cli.ok("score", "--store", str(store.root), "--run", RUN, "--sae", sae, "--model", world["model"],
           "--device", "cpu", "--generator", label)
    stats = {r["feature_index"]: r for r in store.read_table(RUN, sae, "feature_stats").to_pylist()
             if r["generator"] == label}
    assert {f: stats[f]["n_generated"] for f in stats} == {0: 5, 1: 5, 2: 2}
    assert all(stats[f]["generated_sensitivity"] == 1.0 for f in stats)


def test_retrieve_skips_by_content_and_takes_one_passage_per_document(world: dict[str, Any]) -> None:
    tok, targets = world["tok"], world["targets"]
    t0 = tok(" " + targets[0], add_special_tokens=False)["input_ids"][0]
    docs = [f"one {targets[0]} two {targets[0]} three", f"skip {targets[0]} me", f"four {targets[0]}"]
    from sae_sens.hashing import hash_text

    found, stats = retrieve_passages(docs, tok, {0: {t0}}, 10, skip={hash_text(docs[1])}, buffer=2)
    assert len(found[0]) == 2 and stats["docs_skipped"] == 1
    assert all("skip" not in p for p in found[0])
