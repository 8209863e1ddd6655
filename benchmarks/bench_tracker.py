"""The tracker alone, on synthetic SAE codes: the fixed-shape tracker (sae_sens.collect.PeakTracker)
against the one it replaced (benchmarks/legacy_tracker.py, commit 05895e7), in the same process.

Per width: ms per batch of 32 x 128 tokens (median over the timed batches, after one warm-up batch;
on CUDA synchronised, so it is the device's time), and per batch the device-launching aten ops and
the host syncs (nonzero, item, boolean masks, tensors built from Python data, device copies), counted
with a dispatch mode over one steady-state batch. Codes: 1.5% of entries positive, exponential values.

  python benchmarks/bench_tracker.py                        # CPU, 16,384 latents
  python benchmarks/bench_tracker.py --device cuda --widths 16384,65536
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from legacy_tracker import PeakTracker as LegacyTracker  # noqa: E402

from sae_sens.collect import PeakTracker  # noqa: E402
from tests.support.opcount import OpCounter  # noqa: E402


def codes(b: int, t: int, f: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = int(b * t * f * 0.015)
    a = torch.zeros(b * t * f)
    a[torch.randint(0, b * t * f, (n,), generator=g)] = -torch.log(torch.rand(n, generator=g))
    return a.view(b, t, f).to(device)


def measure(cls: type, f: int, chunk: int, batches: list[torch.Tensor], counted: torch.Tensor,
            device: str) -> tuple[float, int, int]:
    """(median ms per batch, launches per batch, syncs per batch) of one tracker over ``batches``."""
    tracker = cls(f, device=device)
    cuda = device == "cuda"
    times = []
    b = counted.shape[0]
    for i, acts in enumerate(batches[:-1]):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for f0 in range(0, f, chunk):
            tracker.update(acts[..., f0:f0 + chunk], counted, i * b, f0)
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first batch builds constants and fills empty state
            times.append((time.perf_counter() - start) * 1000)
    with OpCounter() as c:
        for f0 in range(0, f, chunk):
            tracker.update(batches[-1][..., f0:f0 + chunk], counted, (len(batches) - 1) * b, f0)
    tracker.result()
    return statistics.median(times), c.launches, c.total_syncs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--widths", default="16384")
    p.add_argument("--batches", type=int, default=4, help="batches per tracker (the first is not timed)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=128)
    args = p.parse_args(argv if argv is not None else [])
    torch.manual_seed(0)
    if args.device == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    print(f"{'width':>7} {'tracker':<26} {'ms/batch':>9} {'launches':>9} {'syncs':>6}", flush=True)
    for f in (int(w) for w in args.widths.split(",")):
        batches = [codes(args.batch, args.context, f, i, args.device) for i in range(args.batches + 1)]
        counted = torch.ones(args.batch, args.context, dtype=torch.bool, device=args.device)
        counted[:, 0] = False
        # the current tracker as collect ran it (4,096 latents per update), the new one as collect runs
        # it on this device (a GPU: the whole width per update; a CPU: 256) and, on a CPU, also with
        # the whole width per update: the launches and syncs a GPU would see
        new_chunk = min(f, 65_536) if args.device == "cuda" else 256
        variants = [(f"current (chunk {4096:,})", LegacyTracker, 4096),
                    (f"fixed-shape (chunk {new_chunk:,})", PeakTracker, new_chunk)]
        if new_chunk != min(f, 65_536):
            variants.append(("fixed-shape (one update)", PeakTracker, min(f, 65_536)))
        rows = []
        for label, cls, chunk in variants:
            ms, launches, syncs = measure(cls, f, chunk, batches, counted, args.device)
            rows.append(ms)
            print(f"{f:>7,} {label:<26} {ms:>9.1f} {launches:>9,} {syncs:>6,}", flush=True)
        print(f"{f:>7,} new (chunk {new_chunk:,}) vs current: {rows[0] / rows[1]:.2f}x the speed", flush=True)
        del batches


if __name__ == "__main__":
    main(sys.argv[1:])
