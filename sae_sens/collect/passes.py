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
from ..model import HookedLM
from ..progress import NULL_PROGRESS, ProgressSink
from ..sae import Sae
from ..store import atomic_write_bytes
from .config import PASS_TASK, CollectConfig
from .tracker import PassResult, PeakTracker


def window_batch(lm: HookedLM, windows: Windows, index: Sequence[int] | slice) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.from_numpy(windows.token_ids[index].astype(np.int64))
    return ids, torch.ones_like(ids)


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
    keys = [_pass_key(sae, windows, cfg, batch_size) for sae in saes]
    # A checkpoint's "next" is a batch boundary of this batch size (the key pins it), so the
    # resume points of all trackers lie on the loop's grid whichever of them is the earliest.
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
    for lo in range(start, len(windows), batch_size):
        ids, mask = window_batch(lm, windows, slice(lo, lo + batch_size))
        with record_function("collect.forward"):
            h = lm.hidden(ids, mask)
        counted = lm.count_mask(ids, mask).to(h.device)
        for sae, tracker, at in zip(saes, trackers, resume, strict=True):
            if lo < at:  # already in this tracker's checkpoint: feeding it again would count it twice
                continue
            with record_function("collect.encode"):
                acts = sae.encode(h)
            for f0 in range(0, sae.d_sae, cfg.latent_chunk):
                with record_function("collect.update"):  # the tracker labels its own phases inside
                    tracker.update(acts[..., f0:f0 + cfg.latent_chunk], counted, lo, f0)
            del acts  # free this SAE's [batch, context, d_sae] codes before the next SAE makes its own
        progress.advance(PASS_TASK, ids.shape[0], info)
        if time.monotonic() - last_save >= checkpoint_every_s:
            for path, key, tracker, at in zip(paths, keys, trackers, resume, strict=True):
                # a tracker still waiting for its resume point keeps the (later) checkpoint it has
                if path is not None and lo >= at:
                    _save_checkpoint(path, key, lo + ids.shape[0], tracker)
            last_save = time.monotonic()
    progress.finish(PASS_TASK)
    return [tracker.result() for tracker in trackers]


def _pass_key(sae: Sae, windows: Windows, cfg: CollectConfig, batch_size: int) -> str:
    """What a checkpoint must match to be resumed: the same SAE over the same windows, batched alike."""
    return hash_config({"cfg": cfg.pass_config(), "corpus": windows.corpus_id, "n": len(windows),
                        "batch_size": batch_size, "sae": sae.weight_hash, "chunk": cfg.latent_chunk,
                        "tracker": 3})  # state layout: checkpoints of another layout are not resumed


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
