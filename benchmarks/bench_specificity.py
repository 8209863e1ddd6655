"""The precision side's scoring cost against the scoring of the generated texts it sits beside.

For 50 features of one SAE: 10 generated texts each (20-60 words, as an LLM's answers run) against
the base rate's 200 shared random passages (21 tokens, listed under every feature: 10,000 rows, 200
distinct texts) plus 10 token injections per feature (500 distinct texts). Both through
``score_tables``, the same model and SAE, in this process. The target: the references cost at most
1.5x the generated texts (one batched pass; shared passages run once).

Run: python benchmarks/bench_specificity.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_sens.model import load_model  # noqa: E402
from sae_sens.sae import load_sae  # noqa: E402
from sae_sens.schemas import make_table  # noqa: E402
from sae_sens.score import ScoreConfig, score_tables  # noqa: E402
from tests.support.testing import WORDS, build_tiny_model, save_dictionary_learning_sae  # noqa: E402

HIDDEN, LAYERS, LAYER, D_SAE = 256, 8, 3, 4096
N_FEATURES, PER_FEATURE, N_BASE, PASSAGE_WORDS = 50, 10, 200, 21


def workloads(seed: int = 0) -> tuple[pa.Table, pa.Table]:
    rng = random.Random(seed)
    feats = [f * 97 % D_SAE for f in range(N_FEATURES)]

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    positives = [{"feature_index": f, "generator": "openai:bench", "sample_index": i, "text": words(rng.randint(20, 60))}
                 for f in feats for i in range(PER_FEATURE)]
    base = [words(PASSAGE_WORDS) for _ in range(N_BASE)]
    refs = [{"feature_index": f, "generator": "baseline:bench", "sample_index": i, "text": t}
            for f in feats for i, t in enumerate(base)]
    refs += [{"feature_index": f, "generator": "inject:bench", "sample_index": i, "text": words(PASSAGE_WORDS + 1)}
             for f in feats for i in range(PER_FEATURE)]
    return make_table("generations", positives), make_table("generations", refs)


def main(argv: list[str] | None = None) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", hidden=HIDDEN, layers=LAYERS)
        g = torch.Generator().manual_seed(1)
        W_enc = torch.randn(HIDDEN, D_SAE, generator=g) / HIDDEN**0.5
        sae_dir = save_dictionary_learning_sae(Path(tmp) / "sae", W_enc=W_enc, b_enc=torch.zeros(D_SAE), layer=LAYER)
        sae = load_sae(str(sae_dir), device="cpu", dtype="float32")
        lm = load_model(str(model_dir), f"blocks.{LAYER}.hook_resid_post", device="cpu", dtype="float32")
        positives, refs = workloads()
        examples = make_table("examples", [])
        feats = make_table("features", {"feature_index": sorted(set(positives["feature_index"].to_pylist())),
                                        "top_activation": [1.0] * N_FEATURES})

        def score(gens: pa.Table) -> float:
            t0 = time.perf_counter()
            score_tables(lm, sae, examples, gens, feats, ScoreConfig(), batch_size=32)
            return time.perf_counter() - t0

        score(positives)  # warm-up
        t_pos = min(score(positives) for _ in range(3))
        t_ref = min(score(refs) for _ in range(3))
    print(f"specificity scoring: {N_FEATURES} features; {positives.num_rows} generated texts vs "
          f"{refs.num_rows} reference rows ({N_BASE} shared base passages + {N_FEATURES * PER_FEATURE} injections)")
    print(f"  generated texts:            {t_pos * 1000:8.0f} ms")
    print(f"  base rate + injections:     {t_ref * 1000:8.0f} ms")
    print(f"  ratio: {t_ref / t_pos:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main(sys.argv[1:])
