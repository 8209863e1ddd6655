"""The score stage on a tiny real Llama and SAEs saved in the dictionary_learning format."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from sae_sens.errors import ConfigError, MissingTableError
from sae_sens.model import HookedLM, load_model
from sae_sens.progress import NullProgress
from sae_sens.sae import Sae, load_sae
from sae_sens.schemas import make_table
from sae_sens.score import Checkpoint, ScoreConfig, original_text, score_tables, window_ids
from tests.support.cli import CliRunner
from tests.support.testing import WORDS, build_tiny_model, save_dictionary_learning_sae, token_detector_sae

LAYER = 1
HOOK = f"blocks.{LAYER}.hook_resid_post"
CAT, PIANO, CASTLE = " cat", " piano", " castle"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 layers: hidden_states[LAYER + 1] is then a plain residual (the last one has the final norm)
    return build_tiny_model(tmp_path_factory.mktemp("model"), family="llama", layers=3)


@pytest.fixture(scope="module")
def lm(model_dir: Path) -> HookedLM:
    return load_model(str(model_dir), HOOK, device="cpu", dtype="float32")


def token_id(lm: HookedLM, word: str) -> int:
    ids = lm.tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{word!r} is not one token"
    return int(ids[0])


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, lm: HookedLM) -> Path:
    """Latent 0 fires exactly on ' cat', 1 on ' piano', 2 on ' castle'."""
    ids = [token_id(lm, w) for w in (CAT, PIANO, CASTLE)]
    return token_detector_sae(tmp_path_factory.mktemp("detector"), model_dir, ids, layer=LAYER)


def random_sae(folder: Path, trainer_class: str, d_in: int = 64, d_sae: int = 128, **kw: Any) -> Path:
    g = torch.Generator().manual_seed(7)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.1 - 0.05
    W_dec = W_enc.T / W_enc.T.norm(dim=1, keepdim=True)  # sae_bench's TopK loader wants unit decoder rows
    return save_dictionary_learning_sae(folder, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, trainer_class=trainer_class,
                                        layer=LAYER, lm_name="tiny-llama", **kw)


@pytest.fixture(scope="module", params=["StandardTrainer", "TopKTrainer"])
def random_saes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sae:
    kw = {"k": 8} if request.param == "TopKTrainer" else {}
    folder = random_sae(tmp_path_factory.mktemp(request.param), request.param, **kw)
    sae = load_sae(str(folder), device="cpu", dtype="float32")
    assert sae.architecture == ("topk" if request.param == "TopKTrainer" else "relu")
    return sae


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def generations(rows: list[tuple[int, str, str]]) -> pa.Table:
    """(feature, generator, text) rows, numbered per feature × generator."""
    counter: dict[tuple[int, str], int] = {}
    out = []
    for f, g, t in rows:
        i = counter.get((f, g), 0)
        counter[(f, g)] = i + 1
        out.append({"feature_index": f, "generator": g, "sample_index": i, "text": t})
    return make_table("generations", out)


def examples(lm: HookedLM, rows: list[tuple[int, str]]) -> pa.Table:
    """(feature, marked text) rows; token_ids are the unmarked text's tokens, without BOS."""
    out = []
    for i, (f, marked) in enumerate(rows):
        ids = lm.tokenizer(marked.replace("{{", "").replace("}}", ""), add_special_tokens=False)["input_ids"]
        out.append({"feature_index": f, "example_index": i, "kind": "top", "text": marked, "token_ids": ids})
    return make_table("examples", out)


def features(idx: list[int], top: float = 2.0) -> pa.Table:
    return make_table("features", {"feature_index": idx, "top_activation": [top] * len(idx)})


def rows_of(table: pa.Table, **where: Any) -> list[dict[str, Any]]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


def stat(stats: pa.Table, feature: int, generator: str) -> dict[str, Any]:
    (row,) = rows_of(stats, feature_index=feature, generator=generator)
    return row


def direct_activations(model_dir: Path, sae: Sae, text: str, feature: int, lm: HookedLM) -> np.ndarray | None:
    """Reference: full HF forward with output_hidden_states, full SAE encode, counted positions only."""
    from transformers import AutoModelForCausalLM

    full = getattr(direct_activations, "model", None)
    if full is None:
        full = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        direct_activations.model = full  # type: ignore[attr-defined]
    tok = lm.tokenizer
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        h = full(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1][0]
    acts = sae.encode(h)[:, feature].numpy()
    special = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    counted = [p for p in range(1, len(ids)) if ids[p] not in special]
    return acts[counted] if counted else None


# ----- exactness ------------------------------------------------------------------------------

def test_max_activation_equals_direct_encode(model_dir: Path, lm: HookedLM, random_saes: Sae) -> None:
    sae = random_saes
    texts = random_texts(14, seed=3)
    feats = [0, 5, 17, 64, 127]
    gens = generations([(f, "g", t) for f in feats for t in texts[f % 5 : f % 5 + 9]])
    tables, _ = score_tables(lm, sae, examples(lm, []), gens, features(feats), ScoreConfig(), batch_size=4)
    scores = tables["scores"]
    assert scores.num_rows == gens.num_rows
    n_positive = 0
    for r in scores.to_pylist():
        ref = direct_activations(model_dir, sae, r["text"], r["feature_index"], lm)
        assert ref is not None
        assert r["max_activation"] == pytest.approx(float(ref.max()), abs=1e-4)
        assert r["active"] == (r["max_activation"] > 1e-6)
        assert r["frac_of_top"] == pytest.approx(r["max_activation"] / 2.0)
        np.testing.assert_allclose(r["activations"], ref, atol=1e-4)
        assert r["activations"][r["max_position"]] == pytest.approx(r["max_activation"])
        n_positive += r["max_activation"] > 0
    # the comparison means something only if some features fire and some do not
    assert 0 < n_positive < scores.num_rows


def test_chunked_equals_unchunked(lm: HookedLM, random_saes: Sae) -> None:
    texts = random_texts(10, seed=5)
    gens = generations([(f, "g", t) for f in (1, 2, 99) for t in texts])
    args = (lm, random_saes, examples(lm, []), gens, features([1, 2, 99]))
    whole, _ = score_tables(*args, ScoreConfig(chunk_tokens=100_000))
    chunked, _ = score_tables(*args, ScoreConfig(chunk_tokens=3))
    a, b = whole["scores"], chunked["scores"]
    np.testing.assert_allclose(a["max_activation"].to_numpy(), b["max_activation"].to_numpy(), atol=1e-6)
    for x, y in zip(a["activations"].to_pylist(), b["activations"].to_pylist(), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert a["max_position"].to_pylist() == b["max_position"].to_pylist()


def test_the_gpu_path_masks_to_the_same_traces(lm: HookedLM, random_saes: Sae) -> None:
    """On a GPU every position is encoded and the uncounted ones zeroed (no boolean index, no sync):
    the same traces as encoding only the counted tokens, here forced on the CPU."""
    from sae_sens.score import _score_batch

    texts = random_texts(6, seed=8)
    seqs = [ids for ids, _ in lm.encode_texts(texts, 64)]
    wanted = [[1, 2, 99]] * len(seqs)
    plain_traces = _score_batch(lm, random_saes, seqs, wanted, 4096, encode_all=False)
    masked_traces = _score_batch(lm, random_saes, seqs, wanted, 4096, encode_all=True)
    for p, m in zip(plain_traces, masked_traces, strict=True):
        for f in (1, 2, 99):
            assert p[f].max_position == m[f].max_position
            np.testing.assert_allclose(p[f].activations, m[f].activations, atol=1e-6)


# ----- known sensitivities --------------------------------------------------------------------

@pytest.fixture(scope="module")
def detector_sae(detector: Path) -> Sae:
    return load_sae(str(detector), device="cpu", dtype="float32")


def test_known_sensitivities(lm: HookedLM, detector_sae: Sae) -> None:
    with_cat = ["the cat sat on a mat", "a cat ran in the park", "dogs and the cat sang", "cat music and the cat"]
    no_token = ["the dog sat on a mat", "birds sang songs about rivers", "coffee tea bread", "the king and queen"]
    castle = ["the castle on the river", "a tower and a castle", "the king rode a train", "bread and tea",
              "the castle of the queen"]
    gens = generations(
        [(0, "a", t) for t in with_cat]            # latent 0 reads ' cat': 1.0
        + [(1, "a", t) for t in no_token + with_cat]  # latent 1 reads ' piano', never present: 0.0
        + [(2, "a", t) for t in castle]              # ' castle' in 3 of 5: 0.6
        + [(2, "b", t) for t in castle[:2] + no_token]  # 2 of 6 for another generator
    )
    exs = examples(lm, [(0, "the {{cat}} sat"), (0, "a big {{cat}}\nran"), (2, "the {{castle}} on a hill")])
    tables, counts = score_tables(lm, detector_sae, exs, gens, features([0, 1, 2]), ScoreConfig())
    stats = tables["feature_stats"]
    assert stat(stats, 0, "a")["generated_sensitivity"] == 1.0
    assert stat(stats, 1, "a")["generated_sensitivity"] == 0.0
    assert stat(stats, 2, "a")["generated_sensitivity"] == pytest.approx(3 / 5)
    assert stat(stats, 2, "b")["generated_sensitivity"] == pytest.approx(2 / 6)
    assert stat(stats, 2, "b")["n_generated"] == 6
    # generator "b" has no samples for features 0 and 1: no sensitivity rather than a made-up 0
    assert stat(stats, 0, "b")["generated_sensitivity"] is None and stat(stats, 0, "b")["n_generated"] == 0
    for f in (0, 2):
        s = stat(stats, f, "a")
        assert s["original_sensitivity"] == 1.0 and s["original_sensitivity_window"] == 1.0
    assert stat(stats, 0, "a")["n_original"] == 2
    assert stat(stats, 1, "a")["original_sensitivity"] is None  # no examples for latent 1
    # the statistics are those of the score rows
    maxes = [r["max_activation"] for r in rows_of(tables["scores"], feature_index=2, generator="a")]
    assert stat(stats, 2, "a")["mean_max_activation"] == pytest.approx(float(np.mean(maxes)))
    assert stat(stats, 2, "a")["median_max_activation"] == pytest.approx(float(np.median(maxes)))
    assert {r["threshold"] for r in stats.to_pylist()} == {1e-6}
    # the activating token is where the maximum is
    for r in rows_of(tables["scores"], feature_index=0, source="generated"):
        ids = lm.tokenizer(r["text"], add_special_tokens=False)["input_ids"]
        assert ids[r["max_position"]] == token_id(lm, CAT)
    assert counts["n_empty"] == 0 and counts["n_truncated"] == 0


def test_threshold_and_frac_of_top(lm: HookedLM, detector_sae: Sae) -> None:
    gens = generations([(0, "a", "the cat sat"), (0, "a", "the dog sat")])
    low, _ = score_tables(lm, detector_sae, examples(lm, []), gens, features([0], top=4.0), ScoreConfig())
    act = rows_of(low["scores"], text="the cat sat")[0]["max_activation"]
    assert act > 0
    high, _ = score_tables(lm, detector_sae, examples(lm, []), gens, features([0], top=4.0),
                           ScoreConfig(threshold=act + 1))
    assert stat(low["feature_stats"], 0, "a")["generated_sensitivity"] == 0.5
    assert stat(high["feature_stats"], 0, "a")["generated_sensitivity"] == 0.0
    assert rows_of(low["scores"], text="the cat sat")[0]["frac_of_top"] == pytest.approx(act / 4.0)


def test_scores_store_the_tokens_of_every_scored_text(lm: HookedLM, detector_sae: Sae) -> None:
    gens = generations([(0, "a", "the cat sat on a mat"), (0, "a", "   "), (0, "a", "dogs and the cat sang")])
    exs = examples(lm, [(0, "the {{cat}}\nran")])
    tables, _ = score_tables(lm, detector_sae, exs, gens, features([0]), ScoreConfig())
    for r in tables["scores"].to_pylist():
        if r["empty"]:
            assert r["tokens"] is None
            continue
        assert len(r["tokens"]) == len(r["activations"]) == r["n_tokens"]
        # the peak's token is the one the latent reads, and the tokens spell the scored text
        assert r["tokens"][r["max_position"]] == CAT
        if r["variant"] == "window":
            assert r["tokens"] == [lm.tokenizer.decode([i]) for i in exs["token_ids"][0].as_py()]
        else:
            assert "".join(r["tokens"]) == r["text"]


# ----- the two original variants -----------------------------------------------------------------

def test_original_text_variant_follows_the_original_tool() -> None:
    assert original_text("a {{cat}} sat\non the {{ mat}}") == "a cat sat↵on the  mat"
    assert window_ids([5, 6, 7], bos_id=1, max_length=128) == ([1, 5, 6, 7], False)
    assert window_ids([1, 5, 6], bos_id=1, max_length=128) == ([1, 5, 6], False)  # no double BOS
    assert window_ids(list(range(10, 20)), bos_id=1, max_length=4) == ([1, 10, 11, 12], True)


def test_window_and_text_variants(lm: HookedLM, detector_sae: Sae) -> None:
    marked = "the {{cat}}\nran"
    exs = examples(lm, [(0, marked)])
    tables, _ = score_tables(lm, detector_sae, exs, generations([(0, "a", "x cat")]), features([0]), ScoreConfig())
    (window,) = rows_of(tables["scores"], variant="window")
    (text,) = rows_of(tables["scores"], variant="text")
    token_ids = exs["token_ids"][0].as_py()
    assert window["n_tokens"] == len(token_ids) == len(window["activations"])
    assert token_ids[window["max_position"]] == token_id(lm, CAT)
    assert window["text"] == marked and window["kind"] == "top" and window["generator"] == ""
    assert text["text"] == "the cat↵ran"
    retok = lm.tokenizer("the cat↵ran", add_special_tokens=False)["input_ids"]
    assert retok != token_ids  # '↵' is not the newline token the window holds
    assert text["n_tokens"] == len(retok)
    assert window["active"] and text["active"]


# ----- truncation, empty texts, dedup ----------------------------------------------------------------

def test_truncated_and_empty_texts(lm: HookedLM, detector_sae: Sae) -> None:
    late_cat = "the dog sat on a mat " * 6 + "the cat"
    gens = generations([(0, "a", "the cat sat"), (0, "a", ""), (0, "a", "   "), (0, "a", "a cat"),
                        (0, "a", late_cat)])
    tables, counts = score_tables(lm, detector_sae, examples(lm, []), gens, features([0]),
                                  ScoreConfig(max_length=16))
    scores = tables["scores"]
    for r in rows_of(scores, empty=True):
        assert r["text"].strip() == ""
        assert r["max_activation"] is None and r["active"] is None and r["activations"] is None
    (long,) = rows_of(scores, text=late_cat)
    assert long["truncated"] and long["n_tokens"] == 15 and len(long["activations"]) == 15
    assert long["active"] is False  # the cat came after the cut
    s = stat(tables["feature_stats"], 0, "a")
    assert (s["n_generated"], s["n_empty"], s["n_truncated"]) == (3, 2, 1)
    assert s["generated_sensitivity"] == pytest.approx(2 / 3)  # empties are not counted as inactive
    assert counts["n_empty"] == 2 and counts["n_truncated"] == 1


def test_each_distinct_text_runs_once(lm: HookedLM, detector_sae: Sae) -> None:
    texts = random_texts(6, seed=11)
    # every text for 3 features and 2 generators, and as an original example of feature 0
    gens = generations([(f, g, t) for g in ("a", "b") for f in (0, 1, 2) for t in texts])
    exs = examples(lm, [(0, t) for t in texts])
    before = lm.forward_calls
    tables, counts = score_tables(lm, detector_sae, exs, gens, features([0, 1, 2]), ScoreConfig(), batch_size=4)
    # window and text variants tokenise the same here (no marks, no newlines): 6 distinct sequences
    assert counts["n_sequences"] == 6
    assert lm.forward_calls - before == 2  # ceil(6 / 4)
    assert tables["scores"].num_rows == 36 + 12
    by_text: dict[tuple[str, int], set[float]] = {}
    for r in tables["scores"].to_pylist():
        by_text.setdefault((r["text"], r["feature_index"]), set()).add(r["max_activation"])
    assert all(len(v) == 1 for v in by_text.values())


def test_generator_filter_and_errors(lm: HookedLM, detector_sae: Sae) -> None:
    gens = generations([(0, "a", "the cat"), (0, "b", "the dog")])
    tables, _ = score_tables(lm, detector_sae, examples(lm, []), gens, features([0]), ScoreConfig(generator="b"))
    assert set(tables["scores"]["generator"].to_pylist()) == {"b"}
    assert set(tables["feature_stats"]["generator"].to_pylist()) == {"b"}
    with pytest.raises(ConfigError, match="'zz'") as e:
        score_tables(lm, detector_sae, examples(lm, []), gens, features([0]), ScoreConfig(generator="zz"))
    assert "generators in this run: a, b" in e.value.one_line()
    with pytest.raises(MissingTableError, match="empty") as e2:
        score_tables(lm, detector_sae, examples(lm, []), generations([]), features([0]), ScoreConfig())
    assert "sae-sens generate" in e2.value.one_line()
    with pytest.raises(ConfigError, match="max-length"):
        score_tables(lm, detector_sae, examples(lm, []), gens, features([0]), ScoreConfig(max_length=1))


# ----- the stage and the CLI over a real store --------------------------------------------------

@pytest.fixture()
def store_dir(tmp_path: Path, lm: HookedLM, detector: Path) -> Path:
    from sae_sens.store import Store

    store = Store(tmp_path / "evals")
    sae = str(detector)
    store.write_table("default", sae, "features", features([0, 2]))
    store.write_table("default", sae, "examples", examples(lm, [(0, "the {{cat}} sat"), (2, "a {{castle}}")]))
    store.write_table("default", sae, "generations", generations(
        [(0, "imported", t) for t in ("the cat", "a cat sat", "the dog")]
        + [(2, "imported", t) for t in ("the castle", "a tower")]
        + [(0, "other", t) for t in ("a cat", "the cat ran")]
    ))
    return store.root


def test_cli_score_end_to_end(store_dir: Path, model_dir: Path, detector: Path,
                              cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_sens.cli import output
    from sae_sens.store import Store

    monkeypatch.setattr(output.console, "width", 200)  # one table line per generator

    base = ("score", "--sae", str(detector), "--store", str(store_dir), "--model", str(model_dir),
            "--device", "cpu", "--batch-size", "2")
    out = cli.ok(*base)
    # piped: TSV at full precision, one line per generator after the header
    header, *body = [line.split("\t") for line in out.out.splitlines() if "\t" in line]
    lines = {cells[0]: cells for cells in body}
    assert set(lines) == {"imported", "other"} and header[0] == "generator"
    # imported: 2 features, mean generated sensitivity (2/3 + 1/2) / 2, originals all active, 5 samples
    got = lines["imported"][1:]
    assert got[0] == "2" and float(got[1]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert [float(x) for x in got[2:]] == [1, 1, 5, 0, 0]
    assert "11 rows from" in out.err  # 7 generated + 2 originals × 2 variants, logged by the stage
    store = Store(store_dir)
    stats = store.read_table("default", str(detector), "feature_stats")
    assert stat(stats, 0, "imported")["generated_sensitivity"] == pytest.approx(2 / 3)
    assert stat(stats, 2, "imported")["generated_sensitivity"] == 0.5
    assert stat(stats, 0, "other")["generated_sensitivity"] == 1.0
    assert stat(stats, 0, "other")["original_sensitivity"] == 1.0
    scores = store.read_table("default", str(detector), "scores")
    assert set(scores["run"].to_pylist()) == {"default"} and set(scores["sae"].to_pylist()) == {str(detector)}
    assert not store.checkpoint_dir("default", str(detector), "score").exists()  # removed once written
    rec = store.manifest("default", str(detector)).stage("score")
    assert rec is not None and rec.config["threshold"] == 1e-6 and "table:generations" in rec.inputs
    # unchanged inputs: skipped; --force reruns; another threshold reruns
    assert "up to date" in cli.ok(*base).err
    cli.ok(*base, "--threshold", "1000")
    stats = store.read_table("default", str(detector), "feature_stats")
    assert stat(stats, 0, "imported")["generated_sensitivity"] == 0.0
    assert stat(stats, 0, "imported")["threshold"] == 1000


def test_cli_score_without_generations_says_what_to_do(store_dir: Path, model_dir: Path, detector: Path,
                                                       cli: CliRunner) -> None:
    from sae_sens.store import Store

    Store(store_dir).table_path("default", str(detector), "generations").unlink()
    code, _, err = cli("score", "--sae", str(detector), "--store", str(store_dir), "--model", str(model_dir))
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no generations table" in err and "sae-sens generate" in err


class StopAfter(NullProgress):
    """Interrupts scoring (as Ctrl-C would) after ``n`` batches."""

    def __init__(self, n: int) -> None:
        self.n = n

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt


def test_interrupted_scoring_resumes_from_its_checkpoint(tmp_path: Path, lm: HookedLM, detector_sae: Sae) -> None:
    texts = list(dict.fromkeys(random_texts(30, seed=21)))[:12]
    gens = generations([(f, "a", t) for t in texts for f in (0, 2)])
    args = (lm, detector_sae, examples(lm, []), gens, features([0, 2]), ScoreConfig())
    with pytest.raises(KeyboardInterrupt):
        score_tables(*args, batch_size=4, progress=StopAfter(2), checkpoint=Checkpoint(tmp_path / "ck", "k1"))
    before = lm.forward_calls
    logs: list[str] = []

    class Logs(NullProgress):
        def log(self, message: str) -> None:
            logs.append(message)

    resumed, _ = score_tables(*args, batch_size=4, checkpoint=Checkpoint(tmp_path / "ck", "k1"), progress=Logs())
    assert lm.forward_calls - before == 1  # 12 texts in 3 batches, 2 of them saved
    assert any("resuming from its checkpoint: 16 traces" in m for m in logs), logs  # 8 texts x 2 features
    fresh, _ = score_tables(*args, batch_size=4)
    for col in ("max_activation", "max_position", "active", "activations"):
        assert resumed["scores"][col].to_pylist() == fresh["scores"][col].to_pylist()
    # traces saved for another model / SAE are not reused
    before = lm.forward_calls
    score_tables(*args, batch_size=4, checkpoint=Checkpoint(tmp_path / "ck", "k2"))
    assert lm.forward_calls - before == 3
