"""The pass over a corpus: the model once per batch of windows, each SAE's encode fed to its tracker,
with checkpoints to resume an interrupted pass."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from ..corpus import Windows
from ..hashing import hash_config
from ..model import HookedLM, to_device
from ..progress import NULL_PROGRESS, ProgressSink
from ..sae import Sae
from ..store import atomic_write_bytes
from .config import PASS_TASK, CollectConfig
from .tracker import PassResult, PeakTracker


def window_batch(lm: HookedLM, windows: Windows, index: Sequence[int] | slice) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(windows.token_ids[index].astype(np.int64))
    return ids, torch.ones_like(ids)


def latent_chunk(cfg: CollectConfig, sae: Sae) -> int:
    """Latents per tracker update: the configured chunk, else the whole width on a GPU (one update per
    batch, up to 65,536 latents) and 256 on a CPU, where temporaries that fit in its caches are several
    times faster."""
    if cfg.latent_chunk:
        return cfg.latent_chunk
    return min(sae.d_sae, 65_536) if sae.device.type == "cuda" else 256


def collect_pass(
    lm: HookedLM,
    sae: Sae,
    windows: Windows,
    cfg: CollectConfig,
    progress: ProgressSink = NULL_PROGRESS,
    *,
    batch_size: int = 32,
    checkpoint: Path | None = None,
    checkpoint_every_s: float = 120.0,
) -> PassResult:
    """Run the model and SAE once over every window, tracking every latent (see ``PeakTracker``).

    With ``checkpoint``, the tracker state is saved there every ``checkpoint_every_s`` seconds and a
    matching saved state is resumed from (the result is identical to an uninterrupted pass).
    """
    (result,) = collect_pass_many(lm, [sae], windows, cfg, progress, batch_size=batch_size,
                                  checkpoints=[checkpoint], checkpoint_every_s=checkpoint_every_s)
    return result


def collect_pass_many(
    lm: HookedLM,
    saes: Sequence[Sae],
    windows: Windows,
    cfg: CollectConfig,
    progress: ProgressSink = NULL_PROGRESS,
    *,
    batch_size: int = 32,
    checkpoints: Sequence[Path | None] | None = None,
    checkpoint_every_s: float = 120.0,
) -> list[PassResult]:
    """``collect_pass`` for several SAEs that read the same activations of ``lm``: the model runs
    once per batch and every SAE encodes that batch into its own tracker. The model forward is most
    of a pass's cost, so k SAEs of one model and hook cost about one pass, not k.

    ``checkpoints`` holds one path (or None) per SAE. Each tracker resumes from its own matching
    checkpoint and is fed only the batches after it, so every result is identical to an
    uninterrupted single-SAE pass; the loop starts at the earliest resume point.
    """
    paths = list(checkpoints) if checkpoints is not None else [None] * len(saes)
    if len(paths) != len(saes):
        raise ValueError(f"{len(paths)} checkpoint paths for {len(saes)} SAEs")
    trackers = [PeakTracker(sae.d_sae, n_top=cfg.n_top_candidates, n_iw=cfg.n_iw_candidates, buffer=cfg.buffer,
                            seed=cfg.seed, device=sae.device) for sae in saes]
    keys = [_pass_key(sae, windows, cfg) for sae in saes]
    # The tracker's result depends on neither batch size nor chunk, so a checkpoint resumes at any
    # window: a batch that straddles a tracker's resume point feeds it only the windows after it.
    resume = [_resume(path, key, tracker) for path, key, tracker in zip(paths, keys, trackers, strict=True)]
    for sae, at in zip(saes, resume, strict=True):
        if at:
            whose = f" of {sae.spec.name}" if len(saes) > 1 else ""
            progress.log(f"collect: resuming the pass{whose} at window {at:,} of {len(windows):,}")
    start = min(resume, default=len(windows))
    info = f"{len(saes)} SAEs" if len(saes) > 1 else ""
    progress.start(PASS_TASK, len(windows))
    progress.advance(PASS_TASK, start, info)
    last_save = time.monotonic()
    chunks = [latent_chunk(cfg, sae) for sae in saes]
    for lo in range(start, len(windows), batch_size):
        ids, mask = window_batch(lm, windows, slice(lo, lo + batch_size))
        counted = lm.count_mask(ids, mask)  # on the host, before the forward: copied without a wait
        with record_function("collect.forward"):
            h = lm.hidden(to_device(ids, lm.device), to_device(mask, lm.device))
        on_device: dict[torch.device, torch.Tensor] = {}
        for sae, tracker, at, chunk in zip(saes, trackers, resume, chunks, strict=True):
            skip = max(0, at - lo)  # windows already in this tracker's checkpoint: fed twice, counted twice
            if skip >= ids.shape[0]:
                continue
            with record_function("collect.encode"):
                acts = sae.encode(h)[skip:]
            if sae.device not in on_device:
                on_device[sae.device] = to_device(counted, sae.device)
            for f0 in range(0, sae.d_sae, chunk):
                with record_function("collect.update"):  # the tracker labels its own phases inside
                    tracker.update(acts[..., f0:f0 + chunk], on_device[sae.device][skip:], lo + skip, f0)
            del acts  # free this SAE's [batch, context, d_sae] codes before the next SAE makes its own
        progress.advance(PASS_TASK, ids.shape[0], info)
        if time.monotonic() - last_save >= checkpoint_every_s:
            for path, key, tracker, at in zip(paths, keys, trackers, resume, strict=True):
                # a tracker still waiting for its resume point keeps the (later) checkpoint it has
                if path is not None and lo >= at:
                    _save_checkpoint(path, key, lo + ids.shape[0], tracker)
            last_save = time.monotonic()
    progress.finish(PASS_TASK)
    results = [tracker.result() for tracker in trackers]
    for sae, result in zip(saes, results, strict=True):
        flagged = int(result.iw_tie_loss.sum()) if result.iw_tie_loss is not None else 0
        if flagged:
            progress.log(f"collect: {flagged:,} latents of {sae.spec.name} have more top peaks tied at their "
                         "weakest value than the tracker keeps aside; their importance-weighted draws may "
                         "miss a token next to one of them")
    return results


def _pass_key(sae: Sae, windows: Windows, cfg: CollectConfig) -> str:
    """What a checkpoint must match to be resumed: the same SAE over the same windows (any batching)."""
    return hash_config({"cfg": cfg.pass_config(), "corpus": windows.corpus_id, "n": len(windows),
                        "sae": sae.weight_hash,
                        "tracker": 4})  # state layout: checkpoints of another layout are not resumed


def _resume(path: Path | None, key: str, tracker: PeakTracker) -> int:
    """Load ``tracker`` from ``path`` if that is a checkpoint of this very pass; the window to go on from."""
    if path is None or not path.exists():
        return 0
    saved = torch.load(path, weights_only=True)
    if saved.get("key") != key:
        return 0
    tracker.load_state_dict(saved["state"])
    return int(saved["next"])


def _save_checkpoint(path: Path, key: str, next_window: int, tracker: PeakTracker) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"key": key, "next": next_window, "state": tracker.state_dict()}, buf)
    atomic_write_bytes(path, buf.getvalue())
