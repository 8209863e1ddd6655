"""``Sae.encode_latents`` (only the chosen latents' encoder columns) against the baseline
``encode(x)[..., latents]`` (every latent, then select), same SAE, activations and run.

Pythia-160m-sized SAEs (d_in 768, 16k latents), 2048 tokens, 50 latents: what score encodes per
batch. TopK needs every pre-activation, so it takes the chunked path and should be about 1x.

Run: python benchmarks/bench_saes.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_sens.sae import load_sae  # noqa: E402
from tests.support.testing import random_sae  # noqa: E402

D_IN, D_SAE, TOKENS, N_LATENTS, REPEATS = 768, 16384, 2048, 50, 3


def best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(TOKENS, D_IN)
    latents = torch.randperm(D_SAE)[:N_LATENTS]
    print(f"{'architecture':<14}{'encode+select':>15}{'encode_latents':>16}{'speed-up':>10}  max |diff|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("relu", "jumprelu", "gated", "btopk", "matbtopk", "topk", "gemmascope"):
            path = random_sae(Path(tmp) / arch, arch, d_in=D_IN, d_sae=D_SAE)
            sae = load_sae(str(path), device="cpu", dtype="float32")
            base = best_of(lambda sae=sae: sae.encode(x)[:, latents])
            fast = best_of(lambda sae=sae: sae.encode_latents(x, latents))
            diff = (sae.encode_latents(x, latents) - sae.encode(x)[:, latents]).abs().max().item()
            print(f"{arch:<14}{base * 1e3:>13.1f}ms{fast * 1e3:>14.1f}ms{base / fast:>9.1f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
