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
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from legacy_tracker import PeakTracker as LegacyTracker  # noqa: E402

from sae_sens.collect import PeakTracker  # noqa: E402

SYNC_OPS = {"nonzero", "_local_scalar_dense", "item", "unique_consecutive", "_unique", "_unique2", "unique_dim",
            "masked_select", "bincount", "repeat_interleave", "equal", "is_nonzero", "lift_fresh"}
NO_KERNEL = {"view", "_unsafe_view", "_reshape_alias", "slice", "select", "squeeze", "unsqueeze", "expand",
             "as_strided", "t", "transpose", "permute", "alias", "detach", "empty", "empty_strided", "lift_fresh",
             "new_empty", "empty_like", "split", "unbind", "view_as", "unfold"}


class Count(TorchDispatchMode):
    """Launching ops and syncs (lift_fresh: a tensor from Python data, a blocking copy on CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.launches = self.syncs = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        ins = [a for a in args if isinstance(a, torch.Tensor)]
        outs = [o for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)]
        no_op = name in ("to", "_to_copy", "reshape", "contiguous") and bool(ins) and bool(outs) and \
            outs[0].untyped_storage().data_ptr() == ins[0].untyped_storage().data_ptr()
        self.launches += name not in NO_KERNEL and not name.startswith("_record_function") and not no_op
        bool_index = name in ("index", "index_put", "index_put_") and len(args) > 1 and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        self.syncs += name in SYNC_OPS or bool_index
        return out


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
    with Count() as c:
        for f0 in range(0, f, chunk):
            tracker.update(batches[-1][..., f0:f0 + chunk], counted, (len(batches) - 1) * b, f0)
    tracker.result()
    return statistics.median(times), c.launches, c.syncs


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
