"""The collect stage on a tiny real model and SAE: pass vs brute force vs two-pass baseline, reuse, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sae_sens.cli import main
from sae_sens.collect import CollectConfig, build_examples, collect_pass, run_collect
from sae_sens.corpus import Windows, load_windows, resolve_corpus
from sae_sens.model import HookedLM, load_model
from sae_sens.sae import Sae, load_sae
from sae_sens.stages import ModelOptions, open_model, open_sae
from sae_sens.store import Store
from tests.support.collect_reference import greedy_top_peaks, reference_collect
from tests.support.testing import build_tiny_model, save_dictionary_learning_sae, tiny_corpus

CTX = 48
TOKENS = 96 * CTX


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("collect")
    docs = tiny_corpus(300, seed=5)
    model_dir = build_tiny_model(root / "model", texts=docs, hidden=64, layers=2)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    # A ReLU SAE whose latents each fire on about 3% of tokens (biases set from the model's own states).
    lm = load_model(str(model_dir), "blocks.1.hook_resid_post", device="cpu", dtype="float32")
    ids, mask = lm.pad([s for s, _ in lm.encode_texts(docs[:60], 128)])
    h = lm.hidden(ids, mask)[lm.count_mask(ids, mask)]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g) / 8
    b = -torch.quantile(h @ w, 0.97, dim=0)
    b[90:] = -1e4  # six dead latents
    sae_dir = save_dictionary_learning_sae(root / "sae", W_enc=w, b_enc=b, layer=1, lm_name=str(model_dir))
    return {"root": root, "model": model_dir, "corpus": corpus, "sae": sae_dir}


def cfg_for(corpus: Path, **kw: object) -> CollectConfig:
    return CollectConfig(corpus=str(corpus), total_tokens=TOKENS, context_size=CTX, **kw)  # type: ignore[arg-type]


def open_pass_inputs(setup: dict[str, Path], **kw: object) -> tuple[Sae, HookedLM, CollectConfig, Windows]:
    """The fixture's SAE and model (batch 16, CPU), a config over its corpus and the windows."""
    opts = ModelOptions(device="cpu", dtype="float32", batch_size=16)
    sae = open_sae(str(setup["sae"]), opts)
    lm = open_model(sae, opts)
    cfg = cfg_for(setup["corpus"], **kw)
    windows = load_windows(resolve_corpus(cfg.corpus), lm.tokenizer, bos_id=lm.bos_id, total_tokens=TOKENS,
                           context_size=CTX)
    return sae, lm, cfg, windows


@pytest.mark.slow  # a real pass, a brute-force pass and a two-pass baseline over the tiny model
def test_pass_matches_brute_force_and_two_pass_baseline(setup: dict[str, Path]) -> None:
    sae, lm, cfg, windows = open_pass_inputs(setup, latent_chunk=40)
    res = collect_pass(lm, sae, windows, cfg, batch_size=16)
    # Reference activations computed directly, then the brute-force greedy per latent.
    ids = torch.from_numpy(windows.token_ids).long()
    mask = torch.ones_like(ids)
    dense = sae.encode(lm.hidden(ids, mask)).float() * lm.count_mask(ids, mask)[..., None]
    alive = [f for f in range(sae.d_sae) if int((dense[..., f] > 0).sum()) > 15]
    assert 60 <= len(alive) <= 90
    for f in range(sae.d_sae):
        expected = greedy_top_peaks(dense[..., f], 12, 10)
        got = [(int(res.top_window[r, f]), int(res.top_position[r, f])) for r in range(12) if res.top_window[r, f] >= 0]
        assert got == [(w, p) for w, p, _ in expected]
        assert res.top_activation[: len(got), f] == pytest.approx([v for *_, v in expected], rel=1e-4)
    assert res.n_firings.tolist() == (dense > 0).sum((0, 1)).tolist()
    # The two-pass baseline (other batch size): same frequencies, same top windows.
    ref = reference_collect(lm, sae, windows, alive, cfg, batch_size=32)
    assert res.n_firings.tolist() == ref.n_firings.tolist()
    assert res.counted_tokens == ref.counted_tokens
    assert res.max_activation == pytest.approx(ref.max_activation.double().numpy(), rel=1e-4)
    for f in alive:
        got = [(int(res.top_window[r, f]), int(res.top_position[r, f])) for r in range(12) if res.top_window[r, f] >= 0]
        assert got == [(w, p) for w, p, _ in ref.top[f]]
        # importance-weighted candidates: below the weakest top peak, never a top window's peak
        weakest = min(v for *_, v in ref.top[f])
        iw = [(int(res.iw_window[r, f]), int(res.iw_position[r, f]), res.iw_activation[r, f])
              for r in range(7) if res.iw_window[r, f] >= 0]
        assert len(iw) == min(7, len(ref.iw[f]))
        assert all(0 < v < weakest and 10 <= p < CTX - 10 for _, p, v in iw)
        assert not {(w, p) for w, p, _ in iw} & set(got)
    # Snippets: the pass kept each candidate's activations over the 21 tokens around its peak.
    for f in alive:
        for pool, win, pos, snip in (("top", res.top_window, res.top_position, res.top_snippet),
                                     ("iw", res.iw_window, res.iw_position, res.iw_snippet)):
            for r in range(win.shape[0]):
                if win[r, f] >= 0:
                    w, p = int(win[r, f]), int(pos[r, f])
                    assert snip[r, f] == pytest.approx(dense[w, p - 10:p + 11, f].numpy(), rel=1e-4, abs=1e-6), pool
                else:
                    assert np.isnan(snip[r, f]).all()


def test_saebench_mode_of_the_baseline_agrees(setup: dict[str, Path]) -> None:
    """The benchmark's baseline runs SAEBench's own operations (float indicators in pass 1, encode-all
    then index and bfloat16 in pass 2): same frequencies and top windows as the plain two passes."""
    sae, lm, cfg, windows = open_pass_inputs(setup)
    latents = list(range(0, 90, 9))
    plain = reference_collect(lm, sae, windows, latents, cfg, batch_size=16)
    seen: list[list[int]] = []

    def pick(n_firings: torch.Tensor) -> list[int]:  # chosen between the passes, from pass 1's counts
        seen.append(n_firings.tolist())
        return latents

    sb = reference_collect(lm, sae, windows, pick, cfg, batch_size=16, saebench=True, dense_dtype=torch.bfloat16)
    assert seen == [plain.n_firings.tolist()]
    assert sb.n_firings.tolist() == plain.n_firings.tolist() and sb.n_firings.sum() > 0
    assert sb.counted_tokens == plain.counted_tokens
    assert torch.isnan(sb.max_activation).all()  # SAEBench's pass 1 keeps no maximum
    assert sb.acts.dtype == torch.bfloat16 and sb.acts.shape == plain.acts.shape
    torch.testing.assert_close(sb.acts.float(), plain.acts.to(torch.bfloat16).float())
    for f in latents:  # bfloat16 rounding can tie close peaks and swap them: compare the five strongest
        assert [(w, p) for w, p, _ in sb.top[f]][:5] == [(w, p) for w, p, _ in plain.top[f]][:5]


def test_selection_reuses_the_pass(setup: dict[str, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "evals")
    opts = ModelOptions(device="cpu", dtype="float32", batch_size=16)
    sae_name = str(setup["sae"])
    first = run_collect(store, "r1", sae_name, cfg_for(setup["corpus"], features=4), opts)
    assert not first.skipped and first.extra["pass_skipped"] is False
    assert first.extra["n_selected"] == 4 and first.extra["n_alive"] >= 60
    features = store.read_table("r1", sae_name, "features")
    assert features.num_rows == 96 and sum(features["selected"].to_pylist()) == 4
    assert not any(features["alive"].to_pylist()[90:])
    ex1 = store.read_table("r1", sae_name, "examples")
    lat = store.read_table("r1", sae_name, "latents").to_pylist()
    chosen = [i for i, s in enumerate(features["selected"].to_pylist()) if s]
    assert ex1.num_rows == sum(min(10, lat[f]["n_top"]) + min(5, lat[f]["n_iw"]) for f in chosen)

    lm = open_model(open_sae(sae_name, opts), opts)
    calls = lm.forward_calls
    alive = [i for i, a in enumerate(features["alive"].to_pylist()) if a]
    other = tuple(alive[-3:])
    second = run_collect(store, "r1", sae_name, cfg_for(setup["corpus"], feature_ids=other + (95,)), opts)
    assert second.extra["pass_skipped"] is True and not second.skipped
    ex2 = store.read_table("r1", sae_name, "examples")
    # the selection grows (the dead 95 is skipped); --replace would start over
    assert sorted(set(ex2["feature_index"].to_pylist())) == sorted(set(chosen) | set(other))
    assert lm.forward_calls == calls  # the pass kept every candidate's activations: no model at all
    status = store.status("r1", sae_name)
    assert status["collect:pass"] == "done" and status["collect"] == "done"
    # Same selection again: nothing runs at all.
    calls = lm.forward_calls
    third = run_collect(store, "r1", sae_name, cfg_for(setup["corpus"], feature_ids=other + (95,)), opts)
    assert third.skipped and lm.forward_calls == calls
    # Examples of a feature do not depend on which other features were selected.
    fourth = run_collect(store, "r1", sae_name, cfg_for(setup["corpus"], feature_ids=other, replace=True), opts)
    assert not fourth.skipped
    ex2 = store.read_table("r1", sae_name, "examples")
    assert sorted(set(ex2["feature_index"].to_pylist())) == list(other)
    shared = [f for f in set(ex1["feature_index"].to_pylist()) if f in other]
    for f in shared:
        rows1 = [r for r in ex1.to_pylist() if r["feature_index"] == f]
        rows2 = [r for r in ex2.to_pylist() if r["feature_index"] == f]
        assert [r["text"] for r in rows1] == [r["text"] for r in rows2]



def test_examples_without_snippets_rerun_only_their_windows(setup: dict[str, Path], tmp_path: Path) -> None:
    """Candidates written without snippets (older artifacts): the model runs on the examples'
    windows only, cut after the last token needed, and the examples are the same."""
    store = Store(tmp_path / "evals")
    opts = ModelOptions(device="cpu", dtype="float32", batch_size=16)
    sae_name = str(setup["sae"])
    cfg = cfg_for(setup["corpus"], features=5)
    run_collect(store, "r", sae_name, cfg, opts)
    sae = open_sae(sae_name, opts)
    lm = open_model(sae, opts)
    windows = load_windows(resolve_corpus(cfg.corpus), lm.tokenizer, bos_id=lm.bos_id, total_tokens=TOKENS,
                           context_size=CTX, cache_dir=store.cache_dir)
    latents, cands = store.read_table("r", sae_name, "latents"), store.read_table("r", sae_name, "candidates")
    features = store.read_table("r", sae_name, "features")
    selected = [i for i, s in enumerate(features["selected"].to_pylist()) if s]
    with_snippets = store.read_table("r", sae_name, "examples")
    calls = lm.forward_calls
    old = cands.drop_columns(["activations"])
    rebuilt = build_examples(lm, sae, windows, old, latents, selected, cfg, batch_size=16)
    n_windows = len(set(rebuilt["window_index"].to_pylist()))
    assert 0 < lm.forward_calls - calls == math.ceil(n_windows / 16)
    assert rebuilt["text"].to_pylist() == with_snippets["text"].to_pylist()
    assert rebuilt["token_ids"].to_pylist() == with_snippets["token_ids"].to_pylist()
    for a, b in zip(rebuilt["activations"].to_pylist(), with_snippets["activations"].to_pylist(), strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)

def test_examples_content(setup: dict[str, Path], tmp_path: Path) -> None:
    store = Store(tmp_path / "evals")
    opts = ModelOptions(device="cpu", dtype="float32", batch_size=16)
    sae_name = str(setup["sae"])
    run_collect(store, "r", sae_name, cfg_for(setup["corpus"], features=3), opts)
    ex = store.read_table("r", sae_name, "examples").to_pylist()
    feats = {r["feature_index"]: r for r in store.read_table("r", sae_name, "features").to_pylist()}
    cands = store.read_table("r", sae_name, "candidates").to_pylist()
    docs = [json.loads(line)["text"] for line in setup["corpus"].read_text().splitlines()]
    sae = load_sae(sae_name, device="cpu", dtype="float32")
    lm = open_model(sae, opts)
    for r in ex:
        assert r["max_activation"] > 0 and len(r["token_ids"]) == len(r["tokens"]) == len(r["activations"]) == 21
        assert r["activations"][r["peak_offset"]] == pytest.approx(r["max_activation"])
        assert r["text"].replace("{{", "").replace("}}", "") == "".join(r["tokens"])
        top = feats[r["feature_index"]]["top_activation"]
        if r["kind"] == "top" or r["max_activation"] > 0.01 * top:
            assert "{{" in r["text"]
        marked = [a > 0.01 * top for a in r["activations"]]
        assert r["text"].count("{{") == sum(1 for i, m in enumerate(marked) if m and (i == 0 or not marked[i - 1]))
        # The peak token really is at that offset of its source document.
        doc_ids = lm.tokenizer(docs[r["doc_index"]], add_special_tokens=False)["input_ids"]
        assert doc_ids[r["doc_token_position"]] == r["token_ids"][r["peak_offset"]]
        # and it is one of the feature's candidates of that kind
        assert any(c["feature_index"] == r["feature_index"] and c["pool"] == r["kind"]
                   and c["window_index"] == r["window_index"] and c["position"] == r["context_position"]
                   for c in cands)
    lat = store.read_table("r", sae_name, "latents").to_pylist()
    for f in {r["feature_index"] for r in ex}:
        kinds = [r["kind"] for r in ex if r["feature_index"] == f]
        assert kinds == ["top"] * min(10, lat[f]["n_top"]) + ["iw"] * min(5, lat[f]["n_iw"])


def test_cli_collect_end_to_end(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "evals"
    main(["collect", "--sae", str(setup["sae"]), "--store", str(store), "--run", "cli", "--corpus",
          str(setup["corpus"]), "--total-tokens", str(TOKENS), "--context-size", str(CTX), "--features", "5",
          "--device", "cpu", "--batch-size", "16"])
    out = capsys.readouterr().out
    assert "selected" in out and "ran" in out
    sae_dir = next((store / "cli").iterdir())
    ex = pq.read_table(sae_dir / "examples.parquet")
    assert len(set(ex["feature_index"].to_pylist())) == 5 and ex.num_rows > 5 * 5
    assert min(ex["max_activation"].to_pylist()) > 0
    assert set(ex["run"].to_pylist()) == {"cli"}
    feats = pq.read_table(sae_dir / "features.parquet")
    assert sum(feats["selected"].to_pylist()) == 5
    manifest = json.loads((sae_dir / "manifest.json").read_text())
    assert {"collect:pass", "collect"} <= set(manifest["stages"])


def test_cli_empty_corpus_is_one_clear_line(setup: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["collect", "--sae", str(setup["sae"]), "--store", str(tmp_path / "evals"), "--corpus", str(empty),
              "--total-tokens", "4800", "--context-size", "48", "--device", "cpu"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "only 0 tokens" in errors[0] and "Traceback" not in err


class StopAfter:
    """A progress sink that interrupts the pass after ``n`` batches (as Ctrl-C would)."""

    def __init__(self, n: int) -> None:
        self.n, self.logs = n, []  # type: ignore[var-annotated]

    def start(self, task: str, total: int | None = None) -> None:
        pass

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        if task == "collect pass" and n:
            self.n -= 1
            if self.n < 0:
                raise KeyboardInterrupt

    def finish(self, task: str) -> None:
        pass

    def log(self, message: str) -> None:
        self.logs.append(message)


def test_interrupted_pass_resumes_from_its_checkpoint(setup: dict[str, Path], tmp_path: Path) -> None:
    sae, lm, cfg, windows = open_pass_inputs(setup)
    whole = collect_pass(lm, sae, windows, cfg, batch_size=16)
    ckpt = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        collect_pass(lm, sae, windows, cfg, StopAfter(3), batch_size=16, checkpoint=ckpt, checkpoint_every_s=0)
    assert ckpt.exists()
    calls = lm.forward_calls
    sink = StopAfter(10**6)
    resumed = collect_pass(lm, sae, windows, cfg, sink, batch_size=16, checkpoint=ckpt, checkpoint_every_s=0)
    assert any("resuming the pass at window 48" in m for m in sink.logs)
    assert lm.forward_calls - calls == len(windows) // 16 - 3
    for name in ("n_firings", "top_window", "top_position", "iw_window", "iw_position"):
        assert (getattr(whole, name) == getattr(resumed, name)).all(), name
