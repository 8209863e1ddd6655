"""Fidelity with the original research code (issue 12): the alive rule and seeded feature sample,
``{{ }}`` marks stripped from generated and imported texts, and the ``text`` variant built by the
original's example builder, byte for byte.

The references here are written from the original's code (SAEBench's ``AutoInterp`` selection and
``get_feature_activation_sparsity``; nathanhu0/sae-sensitivity's ``Example.to_str`` and
``compute_sae_activations``), in torch and plain Python, independently of sae_sens's versions.
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from sae_sens.collect import (
    CollectConfig,
    alive_latents,
    features_table,
    mark_text,
    select_features,
    token_strings,
)
from sae_sens.errors import ConfigError
from sae_sens.model import HookedLM, load_model
from sae_sens.sae import Sae, load_sae
from sae_sens.schemas import make_table
from sae_sens.score import ScoreConfig, original_text, score_tables
from tests.support.cli import CliRunner
from tests.support.testing import build_tiny_model, tiny_corpus, token_detector_sae

LAYER = 1
HOOK = f"blocks.{LAYER}.hook_resid_post"


# ----- the alive rule and the seeded sample ---------------------------------------------------------

def saebench_alive(n_firings: np.ndarray, counted: int, total_tokens: int, threshold: float = 15) -> list[int]:
    """SAEBench's list: ``running_sum_F / total_tokens`` (float32, counted tokens) in
    get_feature_activation_sparsity, then ``sparsity *= cfg.total_tokens`` and
    ``torch.nonzero(sparsity > dead_latent_threshold)`` in AutoInterp."""
    running_sum = torch.tensor(n_firings, dtype=torch.float32)
    sparsity = running_sum / counted
    sparsity *= total_tokens
    return torch.nonzero(sparsity > threshold).squeeze(1).tolist()


def latents_table(n_firings: list[int], n_top: list[int], counted: int) -> pa.Table:
    n = len(n_firings)
    return make_table("latents", {
        "feature_index": list(range(n)), "n_firings": n_firings, "max_activation": [1.0] * n,
        "top_activation": [1.0 if t else None for t in n_top], "n_top": n_top,
        "n_iw": [min(t, 7) for t in n_top], "counted_tokens": [counted] * n,
    })


def test_latent_at_15_firings_is_alive_and_the_sample_is_the_originals() -> None:
    # the pass: 29,952 tokens of which 29,430 counted (BOS and EOS positions are not)
    total, counted = 29_952, 29_430
    rng = random.Random(3)
    n_firings = [rng.choice([0, 3, 14, 15, 15, 16, 40, 900]) for _ in range(300)]
    n_top = [min(n, 12) for n in n_firings]
    n_firings[7], n_top[7] = 15, 12
    n_firings[8], n_top[8] = 500, 0  # fires a lot, but only near context ends: no top window
    n_firings[9], n_top[9] = 14, 12  # 14 / 29,430 x 29,952 = 14.25: dead
    lat = latents_table(n_firings, n_top, counted)
    cfg = CollectConfig(total_tokens=total, features=6, seed=42)

    original = saebench_alive(np.array(n_firings), counted, total)
    assert 7 in original and 8 in original and 9 not in original  # 15 / 29,430 x 29,952 = 15.27 > 15; no top-window condition
    assert alive_latents(np.array(n_firings), np.array(n_top), counted, cfg).nonzero()[0].tolist() == original
    assert features_table(lat, [], cfg)["alive"].to_pylist() == [i in original for i in range(300)]

    random.seed(42)
    expected = sorted(random.sample(original, 6))
    assert select_features(lat, cfg) == expected

    # the count rule is another list (15 firings is dead there), so the same seed picks other features
    count = CollectConfig(total_tokens=total, features=6, seed=42, alive_rule="count")
    count_list = [i for i, (n, t) in enumerate(zip(n_firings, n_top, strict=True)) if n > 15 and t > 0]
    assert 7 not in count_list and 8 not in count_list  # earlier versions also wanted a top window
    random.seed(42)
    assert select_features(lat, count) == sorted(random.sample(count_list, 6)) != expected

    # fewer alive latents than asked: all of them, in index order (the original's else branch)
    assert select_features(lat, CollectConfig(total_tokens=total, features=10_000)) == original
    assert select_features(lat, CollectConfig(total_tokens=total, feature_ids=(9, 8, 7))) == [7, 8]


def test_alive_rule_is_saebench_float32_arithmetic() -> None:
    rng = np.random.default_rng(0)
    n = np.arange(0, 40)
    pairs = [(1077, 1077), (1_999_995, 2_000_000), (29_430, 29_952)]  # 15 / 1077 x 1077 is 15.000001 in float32
    pairs += [(int(c), int(t)) for t in rng.integers(1_000, 2_100_000, 300) for c in [rng.integers(t // 2, t + 1)]]
    rounding_matters = 0
    for counted, total in pairs:
        cfg = CollectConfig(total_tokens=total)
        mine = alive_latents(n, np.ones_like(n), counted, cfg).nonzero()[0].tolist()
        assert mine == saebench_alive(n, counted, total), (counted, total)
        exact = [int(k) for k in n if Fraction(int(k) * total, counted) > 15]
        rounding_matters += mine != exact
    assert rounding_matters >= 1  # the (1077, 1077) pair: exact arithmetic would call 15 firings dead


def test_alive_rule_is_recorded_and_checked() -> None:
    assert CollectConfig().select_config()["alive_rule"] == "original"
    assert CollectConfig(alive_rule="count").select_config()["alive_rule"] == "count"
    assert "alive_rule" not in CollectConfig().pass_config()  # a new rule reuses the pass
    with pytest.raises(ConfigError, match="alive rule 'bogus'"):
        CollectConfig(alive_rule="bogus")


def test_cli_rejects_an_unknown_alive_rule(cli: CliRunner) -> None:
    code, _, err = cli("collect", "--sae", "py_4k_topk_s0", "--alive-rule", "bogus")
    assert code == 2 and "Traceback" not in err
    assert "alive rule 'bogus'" in err and "original, count" in err


# ----- a tiny model whose tokenizer splits some non-ASCII characters into bytes ----------------------

# Greek words with τ, μ, ό, ς often enough to merge into whole characters; never ἀ, é, ï or ç, so
# those stay split across byte-level tokens.
GREEK = "ο τμός της μοτός στο τόμος μόστος".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(5)
    greek = [" ".join(rng.choice(GREEK) for _ in range(30)) for _ in range(60)]
    return build_tiny_model(tmp_path_factory.mktemp("model"), family="llama", layers=3,
                            texts=tiny_corpus() + greek)


@pytest.fixture(scope="module")
def lm(model_dir: Path) -> HookedLM:
    return load_model(str(model_dir), HOOK, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, lm: HookedLM) -> Path:
    """Latent 0 fires exactly on ' cat'."""
    (cat,) = lm.tokenizer(" cat", add_special_tokens=False)["input_ids"]
    return token_detector_sae(tmp_path_factory.mktemp("detector"), model_dir, [cat], layer=LAYER)


@pytest.fixture(scope="module")
def detector_sae(detector: Path) -> Sae:
    return load_sae(str(detector), device="cpu", dtype="float32")


# ----- the text variant: the original's builder -------------------------------------------------------

def original_builder(tokenizer: Any, toks: list[int], acts: list[float], act_threshold: float) -> str:
    """nathanhu0/sae-sensitivity: ``Example.to_str(mark_toks=True)`` over TransformerLens's
    ``to_str_tokens`` (each id through ``batch_decode`` on its own, no clean-up), then
    ``compute_sae_activations``' ``replace('{{', '').replace('}}', '')``."""
    str_toks = tokenizer.batch_decode([[t] for t in toks], clean_up_tokenization_spaces=False)
    toks_are_active = [act > act_threshold for act in acts]
    sequence = (
        "".join(f"{{{{{tok}}}}}" if is_active else tok for tok, is_active in zip(str_toks, toks_are_active))
        .replace("\ufffd", "")
        .replace("\n", "↵")
    )
    return sequence.replace("{{", "").replace("}}", "")


WINDOWS = [
    "the ἀτμός rose over the cat",
    "a résumé of the naïve king",
    "la façade du château\nthe cat sat",
    "x = {a}} and {{b} in }}{{ the cat",  # braces in the text itself, next to marked tokens
    "the τόμος of the cat",
]


def test_text_variant_is_the_originals_builder_byte_for_byte(lm: HookedLM, detector_sae: Sae) -> None:
    tok = lm.tokenizer
    rng = random.Random(1)
    top, frac = 2.0, 0.01
    rows, refs = [], []
    for i, text in enumerate(WINDOWS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        acts = [rng.choice([0.0, 0.0, 0.01, 0.5, 1.7]) for _ in ids]
        strs = token_strings(tok, ids)
        rows.append({"feature_index": 0, "example_index": i, "kind": "top", "max_activation": max(acts),
                     "text": mark_text(strs, acts, frac * top), "token_ids": ids, "tokens": strs,
                     "activations": acts, "peak_offset": 0})
        refs.append(original_builder(tok, ids, acts, frac * top))
        if "{" in text:  # the marks matter where tokens hold braces: stripping them eats the text's own
            assert refs[-1] != original_builder(tok, ids, [0.0] * len(ids), frac * top)
    examples = make_table("examples", rows)
    gens = make_table("generations", [{"feature_index": 0, "generator": "g", "sample_index": 0, "text": "the cat"}])
    features = make_table("features", {"feature_index": [0], "top_activation": [top]})
    tables, _ = score_tables(lm, detector_sae, examples, gens, features, ScoreConfig(), act_threshold_frac=frac)
    text_rows = sorted((r for r in tables["scores"].to_pylist() if r["variant"] == "text"),
                       key=lambda r: r["sample_index"])
    assert [r["text"] for r in text_rows] == refs
    for r, ref in zip(text_rows, refs, strict=True):
        assert r["n_tokens"] == len(tok(ref, add_special_tokens=False)["input_ids"])  # re-tokenised, as scored
    # the fixture does split these characters across tokens: the original drops them
    assert "τμός" in refs[0] and "ἀ" not in refs[0]
    assert "rsum" in refs[1] and "é" not in refs[1] and "château" not in refs[2]
    assert "τόμος" in refs[4]
    # sae_sens's own example text keeps every character: the old text variant differed here
    assert original_text(rows[0]["text"]) == "the ἀτμός rose over the cat" != refs[0]
    windows = [r for r in tables["scores"].to_pylist() if r["variant"] == "window"]
    assert [r["text"] for r in sorted(windows, key=lambda r: r["sample_index"])] == [r["text"] for r in rows]


def test_text_variant_without_activations_or_token_ids(lm: HookedLM, detector_sae: Sae) -> None:
    """Examples without activations are built unmarked; without token ids (SAEBench imports) the
    marked text is stripped as the original strips it."""
    ids = lm.tokenizer("the ἀτμός cat", add_special_tokens=False)["input_ids"]
    examples = make_table("examples", [
        {"feature_index": 0, "example_index": 0, "kind": "top", "text": "the {{ἀτμός}} cat", "token_ids": ids},
        {"feature_index": 0, "example_index": 1, "kind": "top", "text": "use a{{ debit}}↵card {{x}"},
    ])
    gens = make_table("generations", [{"feature_index": 0, "generator": "g", "sample_index": 0, "text": "a cat"}])
    features = make_table("features", {"feature_index": [0], "top_activation": [1.0]})
    tables, _ = score_tables(lm, detector_sae, examples, gens, features, ScoreConfig())
    texts = [r["text"] for r in tables["scores"].to_pylist() if r["variant"] == "text"]
    assert texts == ["the τμός cat", "use a debit↵card x}"]


# ----- marks stripped from generated and imported texts --------------------------------------------

MARKED = ["the {{cat}} sat", "a{{ cat}} and a dog", "{{the}}{{ cat}}", "no marks at all, a cat", "}}{{ the dog ran",
          "}{{} the cat"]


def test_imported_texts_with_marks_score_as_without(tmp_path: Path, model_dir: Path, detector: Path,
                                                    lm: HookedLM, cli: CliRunner) -> None:
    import csv

    from sae_sens.store import Store

    store = Store(tmp_path / "evals")
    sae = str(detector)
    store.write_table("r", sae, "features", make_table("features", {"feature_index": [0], "top_activation": [2.0]}))
    ids = lm.tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    store.write_table("r", sae, "examples", make_table("examples", [
        {"feature_index": 0, "example_index": 0, "kind": "top", "text": "the{{ cat}} sat", "token_ids": ids}]))
    # what the original scores: every '{{' removed, then every '}}'
    plain = [t.replace("{{", "").replace("}}", "") for t in MARKED]
    for name, texts in (("marked", MARKED), ("plain", plain)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["feature_index", "text"])
            w.writerows([0, t] for t in texts)
        cli.ok("generate", "--store", str(store.root), "--run", "r", "--sae", sae,
               "--from-table", str(tmp_path / f"{name}.csv"), "--generator", name)
    gens = store.read_table("r", sae, "generations").to_pylist()
    assert [g["text"] for g in gens if g["generator"] == "marked"] == MARKED  # the import keeps them as given

    err = cli.ok("score", "--store", str(store.root), "--run", "r", "--sae", sae, "--model", str(model_dir),
                 "--device", "cpu").err
    assert "5 generated texts had {{ }} marks; stripped before scoring" in " ".join(err.split())

    scores = store.read_table("r", sae, "scores").to_pylist()
    by = {g: sorted((r for r in scores if r["generator"] == g), key=lambda r: r["sample_index"])
          for g in ("marked", "plain")}
    assert len(by["marked"]) == len(by["plain"]) == len(MARKED)
    cols = ("text", "n_tokens", "truncated", "empty", "max_activation", "max_position", "active", "frac_of_top",
            "activations")
    for m, p in zip(by["marked"], by["plain"], strict=True):
        assert {c: m[c] for c in cols} == {c: p[c] for c in cols}
    assert [r["marks_stripped"] for r in by["marked"]] == [t != p for t, p in zip(MARKED, plain, strict=True)]
    assert not any(r["marks_stripped"] for r in by["plain"])
    assert sum(r["active"] for r in by["plain"]) == 5  # the detector sees ' cat' where it is one token
    stats = {r["generator"]: r for r in store.read_table("r", sae, "feature_stats").to_pylist()}
    assert {k: v for k, v in stats["marked"].items() if k != "generator"} == \
        {k: v for k, v in stats["plain"].items() if k != "generator"}
    rec = store.manifest("r", sae).stage("score")
    assert rec is not None and rec.extra["n_marks_stripped"] == 5
    # scored with the marks, the texts would be other token sequences: the stripping is what makes them equal
    assert [i for i, _ in lm.encode_texts(MARKED, 128)] != [i for i, _ in lm.encode_texts(plain, 128)]


def test_saebench_import_samples_in_the_files_order() -> None:
    """The original's ``bootstrap_saebench_examples``: ``random.seed(42); random.sample(list(unique), n)``
    over the features in the order the file lists them (SAEBench writes them in its own sample's
    order, not sorted)."""
    from tabulate import tabulate

    from sae_sens.collect.saebench import saebench_tables

    latents = [412, 7, 3050, 96, 1201, 55, 2999, 18, 640, 333]
    logs = {lat: "Generation phase\n" + tabulate([[2.0, f"a<< word{lat}>> here"]], headers=["Top act", "Sequence"],
                                                   tablefmt="simple_outline", floatfmt=".3f") for lat in latents}
    data = {"eval_result_unstructured": {str(lat): {"logs": logs[lat]} for lat in latents}}
    features, examples = saebench_tables(data, CollectConfig(features=4, seed=42))
    random.seed(42)
    expected = sorted(int(f) for f in random.sample([str(lat) for lat in latents], 4))
    assert sorted(set(examples["feature_index"].to_pylist())) == expected
    assert [f for f, s in zip(features["feature_index"].to_pylist(), features["selected"].to_pylist(),
                              strict=True) if s] == expected
    random.seed(42)
    assert sorted(random.sample(sorted(latents), 4)) != expected  # sampling the sorted list picks others
