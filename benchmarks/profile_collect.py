"""Where a collect pass spends its time: one pass under ``torch.profiler``, per phase.

The pass labels its phases with ``record_function``: ``collect.forward`` (the model up to the hook),
``collect.encode`` (the SAE), and inside ``PeakTracker.update`` ``collect.firing`` (positive
entries, firing counts, max), ``collect.top`` (top peaks), ``collect.reservoir`` (importance-weighted
reservoir and uncertain list) and ``collect.merge`` (the merges into the state, inside the two
before). Each operation is charged to its nearest labelled ancestor (``collect.update`` is what a
tracker without inner labels shows). Printed per phase: its time (device time on CUDA, CPU time
otherwise), operations and host synchronisations (``nonzero``, ``item``/``_local_scalar_dense``,
``unique*``, ``masked_select``) per tracker update, then its top operations by time and by count.

Same assets as benchmarks/bench_collect.py (random pythia-160m-shaped model, random ReLU SAE of
--width latents; built once per --work folder). A few batches run before the profiled pass, so
lazy initialisation is not charged.

Run: python benchmarks/profile_collect.py [--device cpu|cuda] [--width 4096] [--tokens 16384] [--top 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

PHASES = ("collect.forward", "collect.encode", "collect.firing", "collect.top", "collect.reservoir",
          "collect.merge", "collect.update")
SYNC_OPS = ("aten::nonzero", "aten::item", "aten::_local_scalar_dense", "aten::unique_consecutive", "aten::_unique2",
            "aten::unique_dim", "aten::masked_select")


def _self_time(ev: Any, cuda: bool) -> float:
    """Microseconds of the event itself: device time of its kernels on CUDA, else CPU time."""
    if cuda:
        return float(getattr(ev, "self_device_time_total", getattr(ev, "self_cuda_time_total", 0.0)))
    return float(ev.self_cpu_time_total)


def _phase(ev: Any) -> str:
    node = ev
    while node is not None:
        if node.name in PHASES:
            return node.name
        node = node.cpu_parent
    return "other"


def profile_pass(folder: Path, device: str, tokens: int) -> tuple[dict[str, dict[str, list[float]]], int, bool]:
    """Per phase, per operation: [total microseconds, calls]; the number of tracker updates."""
    import torch
    from bench_collect import BATCH, CTX
    from torch.profiler import ProfilerActivity, profile

    from sae_sens.collect import CollectConfig, collect_pass
    from sae_sens.corpus import load_windows, resolve_corpus
    from sae_sens.stages import ModelOptions, open_model, open_sae

    opts = ModelOptions(device=device, dtype="float32", batch_size=BATCH)
    sae = open_sae(str(folder / "sae"), opts)
    lm = open_model(sae, opts)
    cfg = CollectConfig(corpus=str(folder.parent / "corpus.jsonl"), total_tokens=tokens, context_size=CTX)
    windows = load_windows(resolve_corpus(cfg.corpus), lm.tokenizer, bos_id=lm.bos_id, total_tokens=tokens,
                           context_size=CTX, cache_dir=folder.parent / "cache")
    cuda = lm.device.type == "cuda"
    # warm-up: a short pass over the first windows (kernels, allocator, lazy imports)
    warm = CollectConfig(corpus=cfg.corpus, total_tokens=2 * BATCH * CTX, context_size=CTX)
    warm_windows = load_windows(resolve_corpus(cfg.corpus), lm.tokenizer, bos_id=lm.bos_id,
                                total_tokens=warm.total_tokens, context_size=CTX, cache_dir=folder.parent / "cache")
    collect_pass(lm, sae, warm_windows, warm, batch_size=BATCH)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        collect_pass(lm, sae, windows, cfg, batch_size=BATCH)
        if cuda:
            torch.cuda.synchronize()
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    updates = 0
    for ev in prof.events():
        if ev.name == "collect.update":
            updates += 1
        if ev.name in PHASES:
            continue
        row = table[_phase(ev)][ev.name]
        row[0] += _self_time(ev, cuda)
        row[1] += 1
    return table, updates, cuda


def report(table: dict[str, dict[str, list[float]]], updates: int, cuda: bool, top: int) -> None:
    unit = "device" if cuda else "CPU"
    total = sum(t for ops in table.values() for t, _ in ops.values())
    print(f"{'phase':<20}{unit + ' ms':>10}{'share':>8}{'ops/update':>12}{'syncs/update':>14}")
    order = [p for p in (*PHASES, "other") if p in table]
    for phase in order:
        ops = table[phase]
        t = sum(x for x, _ in ops.values())
        calls = sum(n for _, n in ops.values())
        syncs = sum(n for name, (_, n) in ops.items() if name in SYNC_OPS)
        per = updates if phase not in ("collect.forward", "collect.encode", "other") else 0
        print(f"{phase:<20}{t / 1e3:>10.1f}{t / max(total, 1e-9):>8.1%}"
              f"{(f'{calls / per:.0f}' if per else '-'):>12}{(f'{syncs / per:.1f}' if per else '-'):>14}")
    print(f"({updates} tracker updates)")
    for phase in order:
        ops = table[phase]
        by_time = sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]
        by_count = sorted(ops.items(), key=lambda kv: -kv[1][1])[:top]
        print(f"\n{phase}: top by {unit} time" + " " * 22 + "| top by count")
        for (n1, (t1, c1)), (n2, (_, c2)) in zip(by_time, by_count + [("", (0.0, 0))] * top, strict=False):
            left = f"  {n1[:34]:<34}{t1 / 1e3:>9.1f} ms {int(c1):>6}"
            print(f"{left:<56}| {n2[:34]:<34}{int(c2):>6}" if n2 else left)


def main(argv: list[str] | None = None) -> None:
    from bench_collect import PRESETS, asset_dir, build_assets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="pythia160m")
    ap.add_argument("--width", type=int, default=4096, help="SAE latents (default 4096)")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens of the profiled pass (default 16384)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=8, help="operations listed per phase (default 8)")
    ap.add_argument("--work", type=Path, default=None, help="reuse assets in this folder")
    args = ap.parse_args(argv if argv is not None else [])
    preset = PRESETS[args.preset]
    with tempfile.TemporaryDirectory(prefix="profile_collect_") as tmp:
        folder = asset_dir(args.work or Path(tmp), args.preset, args.width, args.tokens)
        build_assets(folder, preset, args.width, args.tokens, n_saes=1)
        table, updates, cuda = profile_pass(folder, args.device, args.tokens)
    print(f"collect pass profile: preset {args.preset}, ReLU SAE {args.width:,} latents, {args.tokens:,} tokens, "
          f"{args.device}", flush=True)
    report(table, updates, cuda, args.top)


if __name__ == "__main__":
    main(sys.argv[1:])
