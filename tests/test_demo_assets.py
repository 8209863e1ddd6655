"""The demo assets: SmolLM2 from its GGUF (converted once into a safetensors cache) and the
Wikipedia summaries, both located through the installed wheels' file lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sae_sens import assets
from sae_sens.errors import ConfigError

pytestmark = pytest.mark.slow  # converts the real SmolLM2 GGUF and reads the real summaries


@pytest.mark.demo
def test_converted_cache_gives_the_gguf_models_logits() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.resolve_model("demo:smollm2")
    assert assets.resolve_model("demo:smollm2") == folder  # converted once, then reused
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert tok.chat_template and tok.bos_token == "<|im_start|>"

    gguf = assets.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "The Eiffel Tower is a wrought-iron lattice tower in Paris, France."
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref_tok(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        got, want = cached(ids).logits, reference(ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    # Both hold the same dequantized float32 weights: equal up to float32 rounding.
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert cached.config.num_hidden_layers == 30 and cached.config.hidden_size == 576


def test_corpus_has_every_summary_and_a_disjoint_heldout_split() -> None:
    everything = assets.demo_documents("all")
    train, heldout = assets.demo_documents("train"), assets.demo_documents("heldout")
    assert len(everything) == 10_033
    assert len(train) + len(heldout) == len(everything)
    assert not set(train) & set(heldout)
    assert 0.08 < len(heldout) / len(everything) < 0.12
    assert assets.demo_documents("heldout") == heldout  # deterministic

    path = assets.resolve_corpus("demo:wiki-heldout")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == heldout
    assert all(r["title"] for r in records)
    assert assets.resolve_corpus("demo:wiki").name == "corpus.jsonl"


def test_missing_asset_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assets, "GGUF_DIST", "no-such-sae-sens-asset")
    with pytest.raises(assets.MissingAssetError) as err:
        assets.resolve_model("demo:smollm2")
    assert "no-such-sae-sens-asset" in err.value.message and "make install" in err.value.one_line()

    with pytest.raises(assets.MissingAssetError, match="missing from the installed"):
        assets.asset_file(assets.CORPUS_DIST, "data/no_such_file.json")


def test_unknown_demo_ids_list_the_valid_ones() -> None:
    from sae_sens.model import load_model

    with pytest.raises(ConfigError) as err:
        load_model("demo:gpt5", "blocks.15.hook_resid_post")
    assert "demo:smollm2" in err.value.one_line()
    with pytest.raises(ConfigError) as err:
        assets.resolve_corpus("demo:books")
    assert "demo:wiki, demo:wiki-train, demo:wiki-heldout" in err.value.one_line()
    with pytest.raises(ConfigError) as err:
        assets.demo_documents("test")
    assert "train, heldout or all" in err.value.one_line()


def test_cache_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "models" / "x" / "key"

    def crash(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError):
        assets._publish(final, crash)
    assert not final.exists() and os.listdir(final.parent) == []

    calls = []
    assets._publish(final, lambda tmp: calls.append((tmp / "model.safetensors").write_bytes(b"whole")))
    assets._publish(final, lambda tmp: calls.append("rebuilt"))
    assert (final / "model.safetensors").read_bytes() == b"whole" and len(calls) == 1


def test_cache_key_follows_the_asset_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"v1")
    first = assets._file_key(gguf)
    assert assets._file_key(gguf) == first
    gguf.write_bytes(b"v22")
    assert assets._file_key(gguf) != first

    monkeypatch.setenv("SAE_SENS_CACHE", str(tmp_path / "cache"))
    assert assets.cache_root() == tmp_path / "cache"
