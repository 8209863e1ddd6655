"""Parity: sae_sens's feature activations (pruned model, forward stopped at the hook, only the chosen
latents encoded) equal ``sae.encode`` on a separately loaded full model's ``output_hidden_states``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sae_sens.model import FAMILIES, _get_attr_path
from sae_sens.sae import Sae, load_sae
from sae_sens.stages import ModelOptions, open_model
from tests.support.testing import build_tiny_model, random_sae, tiny_corpus

LAYER = 1
D_SAE = 128
TEXTS = tiny_corpus(6, seed=5)
# each architecture on the family its real SAEs read: SAEBench on pythia (GPT-NeoX), GemmaScope on gemma-2
CASES = [(arch, "gpt_neox") for arch in ("relu", "pan", "topk", "btopk", "matbtopk", "jumprelu", "gated")]
CASES += [("gemmascope", "gemma2"), ("saelens", "llama")]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """family -> (model folder, its full forward pass on TEXTS)."""
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for fam in ("gpt_neox", "gemma2", "llama"):
        folder = build_tiny_model(root / fam, family=fam, layers=3)
        out[fam] = folder, full_hidden(folder)
    return out


def full_hidden(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, hidden_states[LAYER + 1]) from the complete model, no hooks, no early stop."""
    tok = AutoTokenizer.from_pretrained(folder)
    enc = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]][:48] for t in TEXTS]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hs) == 4  # all three layers ran
    return ids, mask, hs[LAYER + 1]


def saelens_sae(folder: Path, model_dir: Path, acts: torch.Tensor) -> Path:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_post", model_name=str(model_dir))
    sae = StandardSAE(StandardSAEConfig(d_in=acts.shape[-1], d_sae=D_SAE, metadata=meta))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) / acts.shape[-1] ** 0.5)
        sae.b_dec.zero_()
        # ~10% of distinct rows fire; the bias sits halfway between two rows so none is on the edge
        top = (acts.unique(dim=0) @ sae.W_enc).T.contiguous().topk(len(acts) // 10 + 1, dim=1).values
        sae.b_enc.copy_(-(top[:, -2] + top[:, -1]) / 2)
    sae.save_model(folder)
    return folder


@pytest.mark.parametrize(("arch", "family"), CASES)
def test_activations_match_full_model_hidden_states(models, tmp_path, arch, family) -> None:
    model_dir, (ids, mask, hidden) = models[family]
    keep = mask.bool()
    if arch == "saelens":
        path = saelens_sae(tmp_path / "sae", model_dir, hidden[keep])
    else:
        path = random_sae(tmp_path / "sae", arch, d_in=hidden.shape[-1], d_sae=D_SAE, acts=hidden[keep],
                          layer=LAYER, lm_name=str(model_dir))
    sae: Sae = load_sae(str(path), device="cpu", dtype="float32")
    if arch == "gemmascope":  # a bare params.npz does not say what it reads
        opts = ModelOptions(model=str(model_dir), hook=f"blocks.{LAYER}.hook_resid_post", device="cpu", dtype="float32")
    else:
        assert sae.spec.model_id == str(model_dir) and sae.spec.hook == f"blocks.{LAYER}.hook_resid_post"
        opts = ModelOptions(device="cpu", dtype="float32")
    lm = open_model(sae, opts)  # the path collect and score take
    assert len(_get_attr_path(lm.model, FAMILIES[family].layers)) == LAYER + 1

    latents = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))[:40]
    ours = sae.encode_latents(lm.hidden(ids, mask), latents)
    reference = sae.encode(hidden)[..., latents]
    torch.testing.assert_close(ours[keep], reference[keep], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[keep] > 0, reference[keep] > 0)
    active = (reference[keep] > 0).float().mean().item()
    assert 0.01 < active < 0.6, active  # the features do fire, and not everywhere
    # all latents at once (the chunked path) agree too
    torch.testing.assert_close(sae.encode_latents(lm.hidden(ids, mask), chunk=7)[keep], sae.encode(hidden)[keep],
                               rtol=1e-5, atol=1e-5)
