"""Model + SAE over token sequences: each distinct sequence once, length-sorted batches, only the
needed latents, a checkpoint of the traces so an interrupted score resumes."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..hashing import hash_bytes
from ..model import HookedLM, to_device
from ..progress import NULL_PROGRESS, ProgressSink
from ..sae import Sae
from ..store import atomic_write_json, atomic_write_parquet


@dataclass(frozen=True)
class Trace:
    """One feature's activations on one token sequence (positions after position 0)."""

    max_activation: float | None  # None when no position counts
    max_position: int | None  # index into ``activations``
    activations: np.ndarray  # float32, non-counted positions are 0


def _seq_key(ids: Sequence[int]) -> str:
    return hash_bytes(np.asarray(ids, dtype=np.int64).tobytes())


class Checkpoint:
    """Finished traces of an interrupted scoring run, as Parquet parts in ``folder``.

    ``key`` names everything a trace depends on besides its token ids and latent (model, SAE
    weights, hook, dtype, device); parts written under another key are discarded.
    """

    def __init__(self, folder: Path, key: str, every_s: float = 30.0) -> None:
        self.folder, self.key, self.every_s = folder, key, every_s
        self._pending: list[tuple[str, int, Trace]] = []
        self._last = time.monotonic()

    def load(self) -> dict[tuple[str, int], Trace]:
        key_file = self.folder / "key.json"
        if not key_file.exists() or json.loads(key_file.read_text()) != self.key:
            self.clear()
            atomic_write_json(key_file, self.key)
            return {}
        done = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            for r in pq.read_table(part).to_pylist():
                acts = np.asarray(r["activations"], dtype=np.float32)
                done[(r["seq"], r["latent"])] = Trace(r["max_activation"], r["max_position"], acts)
        return done

    def add(self, seq: str, latent: int, trace: Trace) -> None:
        self._pending.append((seq, latent, trace))
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            table = pa.table({
                "seq": [s for s, _, _ in self._pending],
                "latent": pa.array([f for _, f, _ in self._pending], pa.int64()),
                "max_activation": pa.array([t.max_activation for _, _, t in self._pending], pa.float64()),
                "max_position": pa.array([t.max_position for _, _, t in self._pending], pa.int32()),
                "activations": pa.array([t.activations for _, _, t in self._pending], pa.list_(pa.float32())),
            })
            n = len(list(self.folder.glob("part-*.parquet")))
            atomic_write_parquet(self.folder / f"part-{n:06d}.parquet", table)
            self._pending = []
        self._last = time.monotonic()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)


def _score_batch(
    lm: HookedLM, sae: Sae, seqs: Sequence[Sequence[int]], wanted: Sequence[Sequence[int]], chunk_tokens: int,
    encode_all: bool | None = None,
) -> list[dict[int, Trace]]:
    """One forward pass; the SAE computes the union of the wanted latents.

    On a CPU only the counted tokens are encoded (a boolean index). On a GPU (or with ``encode_all``)
    every position is encoded and the uncounted ones zeroed instead: a boolean index would make the
    host wait for the device, and the host's one read per batch is the result."""
    union = sorted({f for w in wanted for f in w})
    col = {f: c for c, f in enumerate(union)}
    ids, mask = lm.pad(seqs)
    keep = lm.count_mask(ids, mask)  # on the host
    hidden = lm.hidden(to_device(ids, lm.device), to_device(mask, lm.device))
    lat = to_device(torch.tensor(union, dtype=torch.long), sae.device)
    if encode_all is None:
        encode_all = hidden.device.type == "cuda"
    if encode_all:
        dense = sae.encode_latents(hidden, lat, chunk_tokens).float()
        dense = dense * to_device(keep, dense.device)[..., None]
    else:
        acts = sae.encode_latents(hidden[keep.to(hidden.device)], lat, chunk_tokens).float()
        dense = torch.zeros((*keep.shape, len(union)), dtype=torch.float32, device=acts.device)
        dense[keep.to(acts.device)] = acts
    dense_np, keep_np = dense.cpu().numpy(), keep.numpy()
    out: list[dict[int, Trace]] = []
    for row, (seq, fs) in enumerate(zip(seqs, wanted, strict=True)):
        counted = keep_np[row, 1 : len(seq)]
        traces = {}
        for f in fs:
            a = np.ascontiguousarray(dense_np[row, 1 : len(seq), col[f]])
            if counted.any():
                masked = np.where(counted, a, -np.inf)
                pos = int(masked.argmax())
                traces[f] = Trace(float(masked[pos]), pos, a)
            else:
                traces[f] = Trace(None, None, a)
        out.append(traces)
    return out


def score_sequences(
    lm: HookedLM,
    sae: Sae,
    sequences: Sequence[Sequence[int]],
    latents: Sequence[Sequence[int]],
    *,
    batch_size: int = 32,
    chunk_tokens: int = 4096,
    progress: ProgressSink = NULL_PROGRESS,
    task: str = "score",
    checkpoint: Checkpoint | None = None,
) -> list[dict[int, Trace]]:
    """For each sequence (already starting with BOS), the traces of the latents it needs.

    Sequences run longest first in batches of ``batch_size`` (little padding, and an out-of-memory
    batch shows up at once). With a ``checkpoint``, traces it holds are reused and new ones saved.
    """
    keys = [_seq_key(s) for s in sequences]
    done = checkpoint.load() if checkpoint is not None else {}
    if done:
        progress.log(f"{task}: resuming from its checkpoint: {len(done):,} traces already computed")
    out = [{int(f): done[(k, int(f))] for f in fs if (k, int(f)) in done} for k, fs in zip(keys, latents, strict=True)]
    todo = [[int(f) for f in fs if int(f) not in o] for fs, o in zip(latents, out, strict=True)]
    order = sorted((i for i in range(len(sequences)) if todo[i]), key=lambda i: -len(sequences[i]))
    progress.start(task, total=len(order))
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            traces = _score_batch(lm, sae, [sequences[i] for i in batch], [todo[i] for i in batch], chunk_tokens)
            for i, tr in zip(batch, traces, strict=True):
                out[i].update(tr)
                if checkpoint is not None:
                    for f, t in tr.items():
                        checkpoint.add(keys[i], f, t)
            progress.advance(task, len(batch), f"{len({f for i in batch for f in todo[i]})} latents")
    finally:  # keep what finished, even when interrupted
        if checkpoint is not None:
            checkpoint.flush()
    progress.finish(task)
    return out
