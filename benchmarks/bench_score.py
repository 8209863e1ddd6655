"""Re-scoring throughput of `score` against the original tool's approach, same model, samples and run.

The original approach scores each feature's samples on their own, 4 at a time, runs the full model
to its last layer with ``output_hidden_states``, encodes every latent and appends one row at a time.
Ours deduplicates texts, sorts them by length, batches them, stops the model at the hook layer and
encodes only the latents being scored. Both must give the same max activations.

Run: python benchmarks/bench_score.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_sens.model import load_model  # noqa: E402
from sae_sens.sae import Sae, load_sae  # noqa: E402
from sae_sens.schemas import make_table  # noqa: E402
from sae_sens.score import ScoreConfig, score_tables  # noqa: E402
from tests.support.testing import WORDS, build_tiny_model, save_dictionary_learning_sae  # noqa: E402

HIDDEN, LAYERS, LAYER, D_SAE = 256, 8, 3, 4096
N_FEATURES, PER_FEATURE, N_DISTINCT = 40, 10, 200


def workload(seed: int = 0) -> pa.Table:
    """400 samples of 3-60 words; 200 distinct texts, so many are shared across features."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(N_DISTINCT)]
    rows = [{"feature_index": f * 97 % D_SAE, "generator": "bench", "sample_index": i, "text": rng.choice(pool)}
            for f in range(N_FEATURES) for i in range(PER_FEATURE)]
    return make_table("generations", rows)


def original_approach(model_dir: Path, sae: Sae, gens: pa.Table, batch_size: int = 4) -> list[dict[str, Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval().to(sae.device)
    special = torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id], device=sae.device)
    by_feature: dict[int, list[tuple[int, str]]] = {}
    for r in gens.to_pylist():
        by_feature.setdefault(r["feature_index"], []).append((r["sample_index"], r["text"]))

    def run() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for feature, samples in by_feature.items():
            for start in range(0, len(samples), batch_size):
                batch = samples[start : start + batch_size]
                seqs = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]][:128] for _, t in batch]
                width = max(map(len, seqs))
                ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs], device=sae.device)
                mask = (torch.arange(width, device=sae.device)[None]
                        < torch.tensor([len(s) for s in seqs], device=sae.device)[:, None]).long()
                with torch.no_grad():
                    h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[LAYER + 1]
                acts = sae.encode(h)[..., feature]
                counted = mask.bool() & ~torch.isin(ids, special)
                counted[:, 0] = False
                for j, (i, text) in enumerate(batch):
                    rows.append({"feature_index": feature, "sample_index": i, "text": text,
                                 "max_activation": float(acts[j][counted[j]].max())})
        return rows

    return run()


def timed(fn: Any, device: str = "cpu") -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, ...: both approaches run there")
    args = ap.parse_args(argv if argv is not None else [])  # called from benchmarks/bench.py: defaults
    device = args.device
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", hidden=HIDDEN, layers=LAYERS)
        g = torch.Generator().manual_seed(1)
        W_enc = torch.randn(HIDDEN, D_SAE, generator=g) / HIDDEN**0.5
        sae_dir = save_dictionary_learning_sae(Path(tmp) / "sae", W_enc=W_enc, b_enc=torch.zeros(D_SAE), layer=LAYER)
        sae = load_sae(str(sae_dir), device=device, dtype="float32")
        lm = load_model(str(model_dir), f"blocks.{LAYER}.hook_resid_post", device=device, dtype="float32")
        gens = workload()
        empty_examples = make_table("examples", [])
        feats = make_table("features", {"feature_index": sorted(set(gens["feature_index"].to_pylist())),
                                        "top_activation": [1.0] * N_FEATURES})

        def ours() -> pa.Table:
            tables, _ = score_tables(lm, sae, empty_examples, gens, feats, ScoreConfig(), batch_size=32)
            return tables["scores"]

        ours()  # warm-up (allocator, kernels)
        t_base, base_rows = timed(lambda: original_approach(model_dir, sae, gens), device)
        t_ours, scores = timed(ours, device)

    ref = {(r["feature_index"], r["sample_index"]): r["max_activation"] for r in base_rows}
    got = np.array([m for m in scores["max_activation"].to_pylist()])
    want = np.array([ref[(f, s)] for f, s in zip(scores["feature_index"].to_pylist(),
                                                  scores["sample_index"].to_pylist(), strict=True)])
    if not np.allclose(got, want, atol=1e-4):
        raise SystemExit(f"score disagrees with the original approach (max diff {np.abs(got - want).max():.2e})")
    n = gens.num_rows
    print(f"score: {n} samples ({N_DISTINCT} distinct), Llama hidden {HIDDEN} × {LAYERS} layers, "
          f"hook layer {LAYER}, SAE {D_SAE} latents, {device}")
    print(f"  original approach (batch 4, full forward, full encode, row by row): {n / t_base:8.1f} samples/s")
    print(f"  sae-sens score (dedup, length-sorted batches of 32, stop at hook):  {n / t_ours:8.1f} samples/s")
    print(f"  speed-up: {t_base / t_ours:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main(sys.argv[1:])
