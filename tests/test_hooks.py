"""TransformerLens hook names on tiny random models of every supported Hugging Face family."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sae_sens.errors import ConfigError, ModelError
from sae_sens.model import FAMILIES, HookedLM, _get_attr_path, load_model
from tests.support.testing import build_tiny_model, random_sae, tiny_corpus

LAYER = 1  # of 3: neither the first nor the last (HF applies the final norm to the last hidden state)
TEXTS = tiny_corpus(4, seed=3)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_tiny_model(root / family, family=family, layers=3) for family in sorted(FAMILIES)}


def batch(lm: HookedLM) -> tuple[torch.Tensor, torch.Tensor]:
    return lm.pad([ids for ids, _ in lm.encode_texts(TEXTS, 40)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hook_points_on_each_family(tiny_models, family) -> None:
    folder = tiny_models[family]
    lm = load_model(str(folder), f"blocks.{LAYER}.hook_resid_post", device="cpu", dtype="float32")
    assert len(_get_attr_path(lm.model, FAMILIES[family].layers)) == LAYER + 1  # later layers dropped
    assert lm.d_model == 64
    ids, mask = batch(lm)
    acts = {"resid_post": lm.hidden(ids, mask)}
    assert acts["resid_post"].shape == (*ids.shape, 64)
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert full.config.model_type == family
    for kind in ("resid_pre", "attn_out", "mlp_out"):  # a pruned copy each (loading is what is slow)
        acts[kind] = HookedLM(copy.deepcopy(full), lm.tokenizer, f"blocks.{LAYER}.hook_{kind}", model_id=family).hidden(
            ids, mask)
    with torch.no_grad():
        hs = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = mask.bool()

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a[keep], b[keep], rtol=1e-5, atol=1e-5)

    close(acts["resid_pre"], hs[LAYER])
    close(acts["resid_post"], hs[LAYER + 1])
    # TransformerLens's decomposition: the block adds exactly attn_out + mlp_out to the stream
    close(acts["resid_pre"] + acts["attn_out"] + acts["mlp_out"], acts["resid_post"])
    assert acts["attn_out"][keep].abs().mean() > 1e-3 and acts["mlp_out"][keep].abs().mean() > 1e-3


def test_forward_stops_at_the_hook_layer(tiny_models) -> None:
    folder = tiny_models["llama"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lm = HookedLM(model, AutoTokenizer.from_pretrained(folder), f"blocks.{LAYER}.hook_resid_post",
                  model_id="tiny", prune=False)
    ran = []
    for name in ("model.layers.2", "model.norm", "lm_head"):
        _get_attr_path(model, name).register_forward_hook(lambda *_, n=name: ran.append(n))
    ids, mask = batch(lm)
    lm.hidden(ids, mask)
    assert ran == [] and lm.forward_calls == 1
    model(input_ids=ids, attention_mask=mask)  # the hooks do fire on a normal forward
    assert ran == ["model.layers.2", "model.norm", "lm_head"]


def test_unsupported_family_names_the_supported_ones() -> None:
    import transformers as tf

    cfg = tf.OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                       word_embed_proj_dim=16, max_position_embeddings=32)
    with pytest.raises(ModelError) as e:
        HookedLM(tf.OPTForCausalLM(cfg), object(), "blocks.0.hook_resid_post", model_id="tiny-opt")
    line = e.value.one_line()
    assert "'opt'" in line
    for family in ("gpt_neox", "gemma2", "gemma3", "llama", "qwen2", "gpt2"):
        assert family in line


def test_bad_hooks_and_layers(tiny_models) -> None:
    with pytest.raises(ConfigError) as e:
        load_model(str(tiny_models["gpt2"]), "blocks.3.hook_resid_post", device="cpu")
    assert "the model has layers 0..2" in e.value.one_line()
    with pytest.raises(ConfigError) as e:
        load_model(str(tiny_models["gpt2"]), "blocks.1.hook_resid_mid", device="cpu")
    assert "unknown hook name" in e.value.one_line() and "hook_mlp_out" in e.value.one_line()


def test_d_model_mismatch_is_an_error_before_compute(tiny_models, tmp_path) -> None:
    from sae_sens.sae import load_sae
    from sae_sens.stages import ModelOptions, open_model

    folder = random_sae(tmp_path / "sae", "relu", d_in=32, d_sae=64, layer=LAYER, lm_name=str(tiny_models["gpt_neox"]))
    sae = load_sae(str(folder), device="cpu")
    with pytest.raises(ConfigError, match="reads 32-dim activations .* d_model 64"):
        open_model(sae, ModelOptions(device="cpu"))
