"""The collect stage: one streaming pass over the corpus, then examples for any selection.

The pass (``collect_pass``) reads every token once, encodes it with the SAE and, for every latent,
keeps its firing count, its max activation, its top peaks and a weighted reservoir for the
importance-weighted samples. Nothing is stored densely over the corpus: memory is
O(latents x examples kept). Its outputs (``latents`` and ``candidates`` tables) hold every latent,
so a later ``collect`` with another selection only re-runs the few windows its examples come from.

Semantics follow SAEBench's autointerp collection (which the original tool uses):

- a peak is never within ``buffer`` tokens of the start or end of its context;
- top windows are the largest peaks with no two in the same context within ``buffer`` tokens of
  each other (greedy, descending, over the whole corpus); ``n_top_candidates`` are drawn;
- importance-weighted peaks are drawn without replacement with probability proportional to the
  squared activation, among peak positions whose activation is below the weakest top peak;
- a random ``n_top_ex_for_generation`` / ``n_iw_ex_for_generation`` of the candidates are kept;
- tokens above ``act_threshold_frac`` of the strongest top peak are marked ``{{like this}}``.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import torch

from .corpus import DEFAULT_DATASET, CorpusSource, Windows, load_windows, resolve_corpus
from .errors import ConfigError
from .hashing import hash_config
from .model import HookedLM
from .progress import NULL_PROGRESS, ProgressSink
from .sae import Sae
from .schemas import make_table
from .stages import (
    ModelOptions,
    StageOutcome,
    model_inputs,
    model_key,
    open_model,
    open_sae,
    record_sae_info,
    run_stage,
    table_inputs,
)
from .store import Store, atomic_write_bytes, now_iso

PASS_STAGE = "collect:pass"
PASS_TASK = "collect pass"  # the progress bar of the pass
SELECT_STAGE = "collect"
NEG_INF = float("-inf")
ALIVE_RULES = ("original", "count")


@dataclass(frozen=True)
class CollectConfig:
    corpus: str = DEFAULT_DATASET
    split: str = "train"
    text_column: str = "text"
    total_tokens: int = 2_000_000
    context_size: int = 128
    features: int | None = 50  # sample this many alive latents (seed) ...
    feature_ids: tuple[int, ...] | None = None  # ... or take exactly these
    n_top_ex_for_generation: int = 10
    n_iw_ex_for_generation: int = 5
    n_top_candidates: int = 12
    n_iw_candidates: int = 7
    buffer: int = 10
    dead_min_firings: int = 15
    alive_rule: str = "original"  # see alive_latents
    act_threshold_frac: float = 0.01
    seed: int = 42
    latent_chunk: int = 4096  # latents tracked at once: bounds the [batch, context, chunk] temporaries

    def __post_init__(self) -> None:
        if self.context_size <= 2 * self.buffer:
            raise ConfigError(f"--context-size {self.context_size} leaves no room for peaks",
                              f"use a context size above {2 * self.buffer} (twice the {self.buffer}-token buffer)")
        if self.n_top_ex_for_generation > self.n_top_candidates or self.n_iw_ex_for_generation > self.n_iw_candidates:
            raise ConfigError("more examples per feature requested than candidates drawn",
                              f"use at most {self.n_top_candidates} top and {self.n_iw_candidates} importance-weighted")
        if self.features is not None and self.features < 1:
            raise ConfigError("--features must be at least 1")
        if self.alive_rule not in ALIVE_RULES:
            raise ConfigError(f"unknown alive rule {self.alive_rule!r}", f"use one of: {', '.join(ALIVE_RULES)}")

    def pass_config(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "split": self.split, "text_column": self.text_column,
                "total_tokens": self.total_tokens, "context_size": self.context_size, "buffer": self.buffer,
                "n_top_candidates": self.n_top_candidates, "n_iw_candidates": self.n_iw_candidates,
                "seed": self.seed}

    def select_config(self) -> dict[str, Any]:
        return {**self.pass_config(), "features": self.features,
                "feature_ids": list(self.feature_ids) if self.feature_ids is not None else None,
                "n_top_ex_for_generation": self.n_top_ex_for_generation,
                "n_iw_ex_for_generation": self.n_iw_ex_for_generation,
                "dead_min_firings": self.dead_min_firings, "alive_rule": self.alive_rule,
                "act_threshold_frac": self.act_threshold_frac}


# ----- the streaming core -------------------------------------------------------------------------
@dataclass
class PassResult:
    """Per-latent statistics and candidate peaks (arrays are [rank, latent]; -1 / NaN where absent)."""

    n_firings: np.ndarray  # [F] int64
    max_activation: np.ndarray  # [F] float64
    counted_tokens: int
    top_activation: np.ndarray  # [K, F]
    top_window: np.ndarray  # [K, F] int64
    top_position: np.ndarray  # [K, F] int32
    top_snippet: np.ndarray  # [K, F, 2 * buffer + 1] float32: activations around each peak
    iw_activation: np.ndarray  # [n_iw, F]
    iw_window: np.ndarray
    iw_position: np.ndarray
    iw_key: np.ndarray
    iw_snippet: np.ndarray

    @property
    def n_latents(self) -> int:
        return int(self.n_firings.shape[0])

    def latents_table(self) -> pa.Table:
        has_top = self.top_window[0] >= 0
        top = np.where(has_top, self.top_activation[0], np.nan)
        return make_table("latents", {
            "feature_index": pa.array(np.arange(self.n_latents)),
            "n_firings": pa.array(self.n_firings),
            "max_activation": pa.array(self.max_activation),
            "top_activation": pa.array(top, pa.float64(), mask=~has_top),
            "n_top": pa.array((self.top_window >= 0).sum(0)),
            "n_iw": pa.array((self.iw_window >= 0).sum(0)),
            "counted_tokens": pa.array(np.full(self.n_latents, self.counted_tokens)),
        })

    def candidates_table(self) -> pa.Table:
        parts = []
        for pool, act, win, pos, key, snip in (
            ("top", self.top_activation, self.top_window, self.top_position, None, self.top_snippet),
            ("iw", self.iw_activation, self.iw_window, self.iw_position, self.iw_key, self.iw_snippet),
        ):
            rank, feat = np.nonzero(win >= 0)
            parts.append({
                "feature_index": feat.astype(np.int64), "pool": np.full(len(feat), pool, object),
                "rank": rank.astype(np.int32), "window_index": win[rank, feat], "position": pos[rank, feat],
                "activation": act[rank, feat].astype(np.float64),
                "key": key[rank, feat].astype(np.float64) if key is not None else np.full(len(feat), np.nan),
                "activations": snip[rank, feat].astype(np.float32),
            })
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.lexsort((cols["rank"], cols["pool"] != "top", cols["feature_index"]))
        snippets = cols.pop("activations")[order]
        width = snippets.shape[1]
        offsets = np.arange(0, snippets.size + 1, width, dtype=np.int32)
        table = {k: pa.array(v[order]) for k, v in cols.items()}
        table["activations"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(snippets.ravel()))
        return make_table("candidates", table)


def _group_order(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Permutation sorting entries by group, and by descending score inside a group."""
    order = score.argsort(descending=True, stable=True)
    return order[group[order].argsort(stable=True)]


class PeakTracker:
    """Streaming top peaks (no-overlap rule) and weighted reservoirs, for every latent at once.

    Feed it raw activations ``[batch, context, latents]`` (``update``); ``result`` gives the same
    top peaks as SAEBench's greedy over the whole corpus, an exact weighted sample, and for each
    kept peak its activations over the ``2 * buffer + 1`` tokens around it (its "snippet"), so
    examples can later be built without running the model again.

    Top peaks: the global greedy (descending, skip positions within ``buffer`` of a pick in the same
    context) only ever excludes within a context, so its result is the k largest among the union of
    each context's own greedy peaks. Per batch we run each context's greedy (up to k rounds, on the
    positive entries that beat the running k-th best) and merge the candidates with ``topk``.

    Importance-weighted peaks: A-Res (Efraimidis & Spirakis) with weight act^2 and key log(u)/w,
    the sample being the ``n_iw`` largest keys among positions below the final weakest top peak.
    That threshold is only known at the end, but the running k-th top value ``theta`` never
    decreases, so an entry below the current ``theta`` is certain to qualify: those go to a
    reservoir of exactly ``n_iw`` keys. Entries at or above ``theta`` wait in an "uncertain" list
    and move to the reservoir once ``theta`` passes them; every such entry lies within ``buffer``
    of a current top peak (otherwise the greedy would have picked it, or a peak suppressing it,
    into the top k), so the list never exceeds k * (2 * buffer + 1) entries per latent and in
    practice holds a handful. An entry whose key is below the reservoir's n_iw-th key can never be
    sampled and is dropped at once. At the end, the uncertain entries below the final threshold
    join the reservoir: its keys are exactly A-Res on the filtered population, a weighted sample
    without replacement with p ~ act^2.
    """

    def __init__(self, n_latents: int, *, n_top: int = 12, n_iw: int = 7, buffer: int = 10, seed: int = 42,
                 device: torch.device | str = "cpu") -> None:
        self.n_top, self.n_iw, self.buffer = n_top, n_iw, buffer
        self.width = 2 * buffer + 1
        dev = torch.device(device)
        f, w = n_latents, self.width
        self.n_firings = torch.zeros(f, dtype=torch.long, device=dev)
        self.max_act = torch.zeros(f, device=dev)
        self.counted = 0
        self.top_val = torch.full((n_top, f), NEG_INF, device=dev)
        self.top_win = torch.full((n_top, f), -1, dtype=torch.long, device=dev)
        self.top_pos = torch.full((n_top, f), -1, dtype=torch.int32, device=dev)
        self.top_snip = torch.zeros((n_top, f, w), device=dev)
        self.iw_key = torch.full((n_iw, f), NEG_INF, device=dev)
        self.iw_val = torch.zeros((n_iw, f), device=dev)
        self.iw_win = torch.full((n_iw, f), -1, dtype=torch.long, device=dev)
        self.iw_pos = torch.full((n_iw, f), -1, dtype=torch.int32, device=dev)
        self.iw_snip = torch.zeros((n_iw, f, w), device=dev)
        # the uncertain entries, flat: latent, key, activation, window, position, snippet
        self.u_lat = torch.zeros(0, dtype=torch.long, device=dev)
        self.u_key = torch.zeros(0, device=dev)
        self.u_val = torch.zeros(0, device=dev)
        self.u_win = torch.zeros(0, dtype=torch.long, device=dev)
        self.u_pos = torch.zeros(0, dtype=torch.int32, device=dev)
        self.u_snip = torch.zeros((0, w), device=dev)
        self.gen = torch.Generator(device=dev).manual_seed(seed)

    _STATE = ("n_firings", "max_act", "top_val", "top_win", "top_pos", "top_snip", "iw_key", "iw_val", "iw_win",
              "iw_pos", "iw_snip")
    _UNCERTAIN = ("u_lat", "u_key", "u_val", "u_win", "u_pos", "u_snip")

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k).cpu() for k in self._STATE + self._UNCERTAIN}
        d.update(counted=self.counted, gen=self.gen.get_state())
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k in self._STATE:
            getattr(self, k).copy_(d[k])
        for k in self._UNCERTAIN:  # variable length
            setattr(self, k, d[k].to(getattr(self, k).device))
        self.counted = int(d["counted"])
        self.gen.set_state(d["gen"])

    @torch.inference_mode()
    def update(self, acts: torch.Tensor, counted: torch.Tensor, window_offset: int, latent_offset: int = 0) -> None:
        """Add a batch: ``acts`` [B, T, Fc] for latents ``latent_offset:+Fc`` of windows
        ``window_offset:+B``; ``counted`` [B, T] marks positions that count (others are ignored).
        Call with ``latent_offset == 0`` exactly once per batch (it counts the tokens)."""
        b, t, fc = acts.shape
        counted = counted.to(acts.device).reshape(-1).bool()
        if latent_offset == 0:
            self.counted += int(counted.sum())
        # SAE codes are sparse: work on the positive entries only, never on dense copies. Boolean
        # indexing runs a nonzero per indexed tensor, so each filter takes one index and gathers;
        # 1-D indexing is several times faster than 2-D, hence flat positions.
        flat = acts.reshape(b * t, fc)
        mask = flat > 0
        uncounted = (~counted).nonzero().squeeze(1)
        if uncounted.numel():  # a few rows per batch (position 0, BOS, EOS, pad): they never count
            mask[uncounted] = False
        nz = mask.view(-1).nonzero().squeeze(1)
        row, fi = torch.div(nz, fc, rounding_mode="floor"), nz % fc
        val = (flat.view(-1)[nz] if flat.is_contiguous() else flat[row, fi]).float()
        lat = slice(latent_offset, latent_offset + fc)
        self.n_firings[lat].index_add_(0, fi, (val > 0).long())
        chunk_max = torch.zeros(fc, device=acts.device).scatter_reduce_(0, fi, val, "amax")
        self.max_act[lat] = torch.maximum(self.max_act[lat], chunk_max)
        # positions within `buffer` of either end of the context can never be peaks
        in_ctx = torch.arange(t, device=acts.device)
        peak_row = (counted.view(b, t) & (in_ctx >= self.buffer) & (in_ctx < t - self.buffer)).reshape(-1)
        idx = peak_row[row].nonzero().squeeze(1)
        row, fi, val = row[idx], fi[idx], val[idx]
        offsets = torch.arange(-self.buffer, self.buffer + 1, device=acts.device)

        def snippets(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            """Activations of chunk latent ``c`` over the tokens around flat row ``r`` ([E, width])."""
            rows = r[:, None] + offsets
            return flat[rows, c[:, None]].float() * counted[rows]

        self._update_top(row, fi, val, t, window_offset, latent_offset, snippets)
        self._update_iw(row, fi, val, t, window_offset, latent_offset, snippets)

    def _update_top(self, row: torch.Tensor, fi: torch.Tensor, val: torch.Tensor, t: int, window_offset: int,
                    latent_offset: int, snippets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Each (context, latent)'s own greedy peaks that beat the running k-th best, merged in."""
        k = self.n_top
        f = fi + latent_offset
        # Entries below the threshold are dropped before the greedy: they come after every entry
        # above it in their context, so they could not have suppressed any of those.
        idx = (val > self.top_val[k - 1][f].clamp(min=0.0)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        row, f, fi, val = row[idx], f[idx], fi[idx], val[idx]
        group = torch.div(row, t, rounding_mode="floor") * self.top_val.shape[1] + f
        order = _group_order(group, val)
        row, f, fi, val, group = row[order], f[order], fi[order], val[order], group[order]
        pos = row % t
        alive = torch.ones_like(val, dtype=torch.bool)
        picks = []
        for _ in range(k):  # round r picks each context's r-th greedy peak
            ia = alive.nonzero().squeeze(1)
            if ia.numel() == 0:
                break
            ga = group[ia]
            first = torch.ones_like(ga, dtype=torch.bool)
            first[1:] = ga[1:] != ga[:-1]
            pick = ia[first]
            picks.append(pick)
            pick_pos = pos[pick][first.cumsum(0) - 1]
            alive[ia[(pos[ia] - pick_pos).abs() <= self.buffer]] = False
        p = torch.cat(picks)
        win = window_offset + torch.div(row[p], t, rounding_mode="floor")
        self._merge(k, f[p], val[p], [(self.top_val, val[p], NEG_INF), (self.top_win, win, -1),
                                      (self.top_pos, pos[p].int(), -1),
                                      (self.top_snip, lambda o: snippets(row[p][o], fi[p][o]), 0.0)])

    def _update_iw(self, row: torch.Tensor, fi: torch.Tensor, val: torch.Tensor, t: int, window_offset: int,
                   latent_offset: int, snippets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        if fi.numel() == 0:
            return
        f = fi + latent_offset
        u = torch.rand(val.shape, generator=self.gen, device=val.device)
        key = torch.log(u) / (val * val)
        # A key below the reservoir's n_iw-th can never be sampled, certain or not.
        idx = (key > self.iw_key[self.n_iw - 1][f]).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        row, f, fi, key, val = row[idx], f[idx], fi[idx], key[idx], val[idx]
        win, pos = window_offset + torch.div(row, t, rounding_mode="floor"), (row % t).int()
        theta = self.top_val[self.n_top - 1]
        sure = val < theta[f]
        si = sure.nonzero().squeeze(1)
        # Snippets are gathered only for entries the merge keeps (the first batches offer many).
        self._merge_iw(f[si], key[si], val[si], win[si], pos[si], lambda o: snippets(row[si][o], fi[si][o]))
        ui = (~sure).nonzero().squeeze(1)
        if ui.numel():
            new = (f[ui], key[ui], val[ui], win[ui], pos[ui], snippets(row[ui], fi[ui]))
            old = (self.u_lat, self.u_key, self.u_val, self.u_win, self.u_pos, self.u_snip)
            self.u_lat, self.u_key, self.u_val, self.u_win, self.u_pos, self.u_snip = (
                torch.cat([a, b]) for a, b in zip(old, new, strict=True))
        self._settle(theta)

    def _merge_iw(self, f: torch.Tensor, key: torch.Tensor, val: torch.Tensor, win: torch.Tensor, pos: torch.Tensor,
                  snip: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._merge(self.n_iw, f, key, [(self.iw_key, key, NEG_INF), (self.iw_val, val, 0.0), (self.iw_win, win, -1),
                                        (self.iw_pos, pos, -1), (self.iw_snip, snip, 0.0)])

    def _settle(self, theta: torch.Tensor) -> None:
        """Uncertain entries now below their latent's ``theta`` join the reservoir; the others stay
        (minus those whose key the reservoir now beats)."""
        if self.u_lat.numel() == 0:
            return
        entries = (self.u_lat, self.u_key, self.u_val, self.u_win, self.u_pos, self.u_snip)
        f, key, val = entries[:3]
        sure = val < theta[f]
        si = sure.nonzero().squeeze(1)
        if si.numel():
            self._merge_iw(*(x[si] for x in entries))
        keep = (~sure & (key > self.iw_key[self.n_iw - 1][f])).nonzero().squeeze(1)
        self.u_lat, self.u_key, self.u_val, self.u_win, self.u_pos, self.u_snip = (x[keep] for x in entries)

    @staticmethod
    def _merge(r: int, f: torch.Tensor, score: torch.Tensor,
               fields: list[tuple[torch.Tensor, torch.Tensor | Callable[[torch.Tensor], torch.Tensor], float]]) -> None:
        """Keep, per latent, the ``r`` highest-``score`` rows among the state and the new entries.
        ``fields`` are (state [r, F, ...], new values [E, ...], fill); the first is the score itself.
        New values may be a function of the entry indices, called only for entries that compete."""
        if f.numel() == 0:
            return
        order = _group_order(f, score)
        f = f[order]
        touched, inverse, counts = torch.unique_consecutive(f, return_inverse=True, return_counts=True)
        rank = torch.arange(f.numel(), device=f.device) - (counts.cumsum(0) - counts)[inverse]
        sel = rank < r
        rs, cs, o = rank[sel], inverse[sel], order[sel]
        stacked = []
        for state, new, fill in fields:
            dense = torch.full((r, touched.numel(), *state.shape[2:]), fill, dtype=state.dtype, device=state.device)
            dense[rs, cs] = (new(o) if callable(new) else new[o]).to(state.dtype)
            stacked.append(torch.cat([state[:, touched], dense]))
        _, idx = stacked[0].topk(r, dim=0)
        for (state, _, _), both in zip(fields, stacked, strict=True):
            gather = idx.view(*idx.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
            state[:, touched] = both.gather(0, gather)

    def result(self) -> PassResult:
        found = self.top_win >= 0
        # The weakest top peak found (the k-th, or fewer when the latent has fewer peaks).
        weakest = torch.where(found, self.top_val, torch.inf).amin(0)
        self._settle(weakest)
        kept = self.iw_win >= 0  # reservoir rows are sorted by key, largest first

        def pick(x: torch.Tensor, fill: float) -> np.ndarray:
            mask = kept.view(*kept.shape, *([1] * (x.dim() - 2)))
            return torch.where(mask, x, torch.as_tensor(fill, dtype=x.dtype)).cpu().numpy()

        top_mask = found[..., None]
        return PassResult(
            n_firings=self.n_firings.cpu().numpy(),
            max_activation=self.max_act.double().cpu().numpy(),
            counted_tokens=self.counted,
            top_activation=torch.where(found, self.top_val, torch.nan).double().cpu().numpy(),
            top_window=self.top_win.cpu().numpy(),
            top_position=self.top_pos.cpu().numpy(),
            top_snippet=torch.where(top_mask, self.top_snip, torch.nan).cpu().numpy(),
            iw_activation=pick(self.iw_val.double(), np.nan),
            iw_window=pick(self.iw_win, -1),
            iw_position=pick(self.iw_pos, -1),
            iw_key=pick(self.iw_key.double(), np.nan),
            iw_snippet=pick(self.iw_snip, np.nan),
        )


# ----- the pass over a corpus ---------------------------------------------------------------------
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
        h = lm.hidden(ids, mask)
        counted = lm.count_mask(ids, mask).to(h.device)
        for sae, tracker, at in zip(saes, trackers, resume, strict=True):
            if lo < at:  # already in this tracker's checkpoint: feeding it again would count it twice
                continue
            acts = sae.encode(h)
            for f0 in range(0, sae.d_sae, cfg.latent_chunk):
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
                        "tracker": 2})  # state layout: checkpoints of another layout are not resumed


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


# ----- selection and examples ---------------------------------------------------------------------
def alive_latents(n_firings: np.ndarray, n_top: np.ndarray, counted_tokens: int, cfg: CollectConfig) -> np.ndarray:
    """Which latents are alive, as a bool mask.

    ``original`` (the default) is SAEBench's rule, which the original tool copies: the firing
    frequency over counted tokens, rescaled to the token budget, must exceed ``dead_min_firings``
    (``firings / counted_tokens * total_tokens > 15``). The arithmetic is float32, as SAEBench's
    torch tensors, so a latent on the boundary falls on the same side. ``count`` is the rule
    earlier sae_sens versions used (``firings > 15`` and at least one top window), kept to
    reproduce selections made with them. The two differ only for latents with about
    ``dead_min_firings`` firings or without a top window, but a different alive list makes the
    seeded sample pick different features.
    """
    n = np.asarray(n_firings)
    if cfg.alive_rule == "count":
        return np.asarray((n > cfg.dead_min_firings) & (np.asarray(n_top) > 0))
    freq = n.astype(np.float32) / np.float32(max(int(counted_tokens), 1))
    return np.asarray(freq * np.float32(cfg.total_tokens) > cfg.dead_min_firings)


def _counted_tokens(latents: pa.Table) -> int:
    return int(latents["counted_tokens"][0].as_py()) if latents.num_rows else 0


def select_features(latents: pa.Table, cfg: CollectConfig, progress: ProgressSink = NULL_PROGRESS) -> list[int]:
    """Sample ``cfg.features`` alive latents (seeded), or take ``cfg.feature_ids`` (dead ones skipped).

    The sample is the original's: ``random.seed(seed); sorted(random.sample(alive, n))`` over the
    alive latents in index order. A chosen latent that fired only within ``buffer`` tokens of its
    contexts' ends has no top window and gets no examples (the original would fill its top list
    with windows where it does not fire, see the README).
    """
    n_firings = np.asarray(latents["n_firings"].to_numpy(zero_copy_only=False))
    n_top = np.asarray(latents["n_top"].to_numpy(zero_copy_only=False))
    alive = alive_latents(n_firings, n_top, _counted_tokens(latents), cfg)
    rule = f"{cfg.alive_rule} alive rule, more than {cfg.dead_min_firings} firings"
    if cfg.feature_ids is not None:
        bad = [i for i in cfg.feature_ids if not 0 <= i < len(alive)]
        if bad:
            raise ConfigError(f"feature ids {bad} are out of range", f"this SAE has latents 0..{len(alive) - 1}")
        dead = [i for i in cfg.feature_ids if not alive[i]]
        if dead:
            progress.log(f"collect: skipping dead features {dead} ({rule})")
        chosen = sorted(dict.fromkeys(i for i in cfg.feature_ids if alive[i]))
    else:
        alive_ids = np.nonzero(alive)[0].tolist()
        n = cfg.features or len(alive_ids)
        if len(alive_ids) < n:
            progress.log(f"collect: only {len(alive_ids)} alive latents ({rule}), fewer than --features {n}")
            chosen = alive_ids
        else:
            chosen = sorted(random.Random(cfg.seed).sample(alive_ids, n))
    no_top = [i for i in chosen if n_top[i] == 0]
    if no_top:
        progress.log(f"collect: features {no_top} fire only near the ends of their contexts: no examples")
    return chosen


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One string per token that concatenate to the decoded text (multi-byte characters split over
    several tokens land on the token that completes them)."""
    return token_strings_many(tokenizer, [ids])[0]


def token_strings_many(tokenizer: Any, seqs: Sequence[Sequence[int]], chunk: int = 128) -> list[list[str]]:
    """``token_strings`` of many sequences, decoding their prefixes a chunk of sequences at a time."""
    decode = _batch_decoder(tokenizer)
    out: list[list[str]] = []
    for lo in range(0, len(seqs), chunk):
        part = seqs[lo:lo + chunk]
        prefixes = decode([list(ids[: i + 1]) for ids in part for i in range(len(ids))])
        at = 0
        for ids in part:
            out.append(_split_prefixes(tokenizer, ids, prefixes[at:at + len(ids)]))
            at += len(ids)
    return out


def _batch_decoder(tokenizer: Any) -> Callable[[list[list[int]]], list[str]]:
    """A fast tokenizer's Rust ``decode_batch`` when the Python wrapper would add nothing to it (no
    tokenization-space clean-up): the wrapper's per-sequence overhead is most of the cost of an
    example's 21 prefix decodes. Anything else decodes through ``batch_decode``."""
    decode_batch = getattr(getattr(tokenizer, "_tokenizer", None), "decode_batch", None)
    if getattr(tokenizer, "is_fast", False) and not getattr(tokenizer, "clean_up_tokenization_spaces", True) \
            and callable(decode_batch):
        return lambda seqs: list(decode_batch(seqs, skip_special_tokens=False))
    return lambda seqs: list(tokenizer.batch_decode(seqs))


def _split_prefixes(tokenizer: Any, ids: Sequence[int], prefixes: Sequence[str]) -> list[str]:
    out: list[str] = []
    prev = ""
    for i, cur in enumerate(prefixes):
        if cur.endswith("\ufffd") and i < len(ids) - 1:
            out.append("")
            continue
        if cur.startswith(prev):
            out.append(cur[len(prev):])
        else:  # the decoder rewrote earlier text (rare): fall back to the token on its own
            out.append(tokenizer.decode([ids[i]]))
        prev = cur
    return out


def mark_text(tokens: Sequence[str], acts: Sequence[float], threshold: float) -> str:
    """Concatenate tokens, wrapping each run of tokens with activation > threshold in ``{{ }}``."""
    parts: list[str] = []
    inside = False
    for tok, a in zip(tokens, acts, strict=True):
        on = a > threshold
        if on and not inside:
            parts.append("{{")
        elif not on and inside:
            parts.append("}}")
        inside = on
        parts.append(tok)
    if inside:
        parts.append("}}")
    return "".join(parts)


@dataclass
class WantedExample:
    """One example to build: which feature, which candidate peak, and its activations once known."""

    feature: int
    kind: str
    example_index: int
    window: int
    position: int
    snippet: list[float] | None = None  # the pass's activations around the peak, when it kept them


def choose_examples(candidates: pa.Table, selected: Sequence[int], cfg: CollectConfig) -> list[WantedExample]:
    """Per feature a random ``n_top_ex_for_generation`` of its top candidates and
    ``n_iw_ex_for_generation`` of its importance-weighted ones (seeded per feature, so a feature's
    examples do not depend on which other features are selected); top ones first, strongest first."""
    chosen_set = set(selected)
    # Filter before converting to Python: a wide SAE has a million candidate rows.
    mask = pa.compute.is_in(candidates["feature_index"], pa.array(sorted(chosen_set), pa.int64()))
    cols = ["feature_index", "pool", "rank", "window_index", "position"]
    if "activations" in candidates.column_names:  # tables written before snippets existed lack it
        cols.append("activations")
    cand = candidates.filter(mask).select(cols).to_pylist()
    by_feature: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in cand:
        by_feature.setdefault((row["feature_index"], row["pool"]), []).append(row)
    wanted: list[WantedExample] = []
    for f in selected:
        rng = random.Random(cfg.seed * 1_000_003 + f)
        i = 0
        for pool, n in (("top", cfg.n_top_ex_for_generation), ("iw", cfg.n_iw_ex_for_generation)):
            rows = sorted(by_feature.get((f, pool), []), key=lambda r: r["rank"])
            chosen = sorted(rng.sample(range(len(rows)), min(n, len(rows))))
            for j in chosen:
                snip = rows[j].get("activations")
                if snip is not None and (len(snip) != 2 * cfg.buffer + 1 or any(math.isnan(x) for x in snip)):
                    snip = None
                wanted.append(WantedExample(f, pool, i, int(rows[j]["window_index"]), int(rows[j]["position"]), snip))
                i += 1
    return wanted


def _rerun_snippets(
    lm: HookedLM, sae: Sae, windows: Windows, missing: Sequence[WantedExample], buffer: int, batch_size: int,
) -> None:
    """Fill ``snippet`` by running the model on the windows the examples come from. Only for
    candidates without stored snippets (older artifacts); each window is cut right after the
    last token needed, which a causal model allows."""
    by_window: dict[int, list[WantedExample]] = {}
    for w in missing:
        by_window.setdefault(w.window, []).append(w)
    end = {win: max(w.position for w in ws) + buffer + 1 for win, ws in by_window.items()}
    order = sorted(by_window, key=lambda win: (end[win], win))  # similar lengths batch together
    for lo in range(0, len(order), batch_size):
        chunk = order[lo:lo + batch_size]
        length = max(end[win] for win in chunk)
        latents = sorted({w.feature for win in chunk for w in by_window[win]})
        col_of = {f: i for i, f in enumerate(latents)}
        ids = torch.from_numpy(windows.token_ids[chunk, :length].astype(np.int64))
        mask = torch.ones_like(ids)  # tokens past a window's own end are real text, never read back
        h = lm.hidden(ids, mask)
        counted = lm.count_mask(ids, mask).to(h.device)
        idx = torch.as_tensor(latents, dtype=torch.long, device=sae.device)
        acts = (sae.encode_latents(h, idx).float() * counted[..., None]).cpu().numpy()
        for i, win in enumerate(chunk):
            for w in by_window[win]:
                w.snippet = acts[i, w.position - buffer:w.position + buffer + 1, col_of[w.feature]].tolist()


def build_examples(
    lm: HookedLM,
    sae: Sae,
    windows: Windows,
    candidates: pa.Table,
    latents: pa.Table,
    selected: Sequence[int],
    cfg: CollectConfig,
    *,
    batch_size: int = 32,
    progress: ProgressSink = NULL_PROGRESS,
) -> pa.Table:
    """The ``examples`` table. Activations come from the snippets the pass kept; the model runs
    only for candidates that have none."""
    wanted = choose_examples(candidates, selected, cfg)
    missing = [w for w in wanted if w.snippet is None]
    if missing:
        _rerun_snippets(lm, sae, windows, missing, cfg.buffer, batch_size)
    top_act = dict(zip(latents["feature_index"].to_pylist(), latents["top_activation"].to_pylist(), strict=True))
    thresholds = [cfg.act_threshold_frac * float(top_act[w.feature] or 0.0) for w in wanted]
    rows: list[dict[str, Any]] = []
    progress.start("collect examples", len(wanted))
    step = 512  # progress granularity; token_strings_many chunks its own decoding
    for lo in range(0, len(wanted), step):
        part = wanted[lo:lo + step]
        rows += example_rows(lm.tokenizer, windows, part, thresholds[lo:lo + step], cfg.buffer)
        progress.advance("collect examples", len(part))
    progress.finish("collect examples")
    rows.sort(key=lambda r: (r["feature_index"], r["example_index"]))
    return make_table("examples", rows)


def example_rows(tokenizer: Any, windows: Windows, wanted: Sequence[WantedExample], thresholds: Sequence[float],
                 buffer: int) -> list[dict[str, Any]]:
    """``examples`` rows: the tokens around each peak, their activations and the marked text
    (``thresholds``: per example, the activation above which a token is marked)."""
    ids = [windows.token_ids[w.window, w.position - buffer:w.position + buffer + 1].tolist() for w in wanted]
    rows = []
    for w, threshold, tok_ids, toks in zip(wanted, thresholds, ids, token_strings_many(tokenizer, ids), strict=True):
        a = w.snippet or []
        rows.append({
            "feature_index": w.feature, "example_index": w.example_index, "kind": w.kind,
            "max_activation": float(a[buffer]), "text": mark_text(toks, a, threshold),
            "token_ids": tok_ids, "tokens": toks, "activations": a, "peak_offset": buffer,
            "window_index": w.window, "context_position": w.position,
            "doc_index": int(windows.doc_index[w.window, w.position]),
            "doc_token_position": int(windows.doc_pos[w.window, w.position]),
        })
    return rows


def features_table(latents: pa.Table, selected: Sequence[int], cfg: CollectConfig) -> pa.Table:
    def col(name: str) -> np.ndarray:
        return latents[name].to_numpy(zero_copy_only=False)

    n_firings, counted = col("n_firings"), col("counted_tokens")
    chosen = np.zeros(latents.num_rows, bool)
    chosen[list(selected)] = True
    return make_table("features", {
        "feature_index": pa.array(col("feature_index")),
        "frequency": pa.array(n_firings / np.maximum(counted, 1)),
        "n_firings": pa.array(n_firings),
        "max_activation": pa.array(col("max_activation")),
        "top_activation": latents["top_activation"].combine_chunks(),
        "alive": pa.array(alive_latents(n_firings, col("n_top"), _counted_tokens(latents), cfg)),
        "selected": pa.array(chosen),
    })


# ----- the stage ----------------------------------------------------------------------------------
def run_collect(
    store: Store,
    run: str,
    sae_name: str,
    cfg: CollectConfig,
    opts: ModelOptions,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> StageOutcome:
    """The pass (``collect:pass``: ``latents`` + ``candidates``, skipped when fresh) then the
    selection (``collect``: ``features`` + ``examples``). A new selection reuses the pass."""
    return run_collect_many(store, run, [sae_name], cfg, opts, force=force, progress=progress)[0]


@dataclass
class _Target:
    """One SAE of a collect call, with what its pass stage is keyed on."""

    name: str
    sae: Sae
    inputs: dict[str, str]
    checkpoint: Path


def run_collect_many(
    store: Store,
    run: str,
    sae_names: Sequence[str],
    cfg: CollectConfig,
    opts: ModelOptions,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> list[StageOutcome]:
    """``run_collect`` for each SAE (outcomes in the same order, manifests alike), but SAEs that read
    the same model at the same hook share one pass: the model runs over the corpus once for all of
    them whose pass is not fresh. Groups run one after the other, so one model is in memory at a time.
    """
    source = resolve_corpus(cfg.corpus, split=cfg.split, text_column=cfg.text_column)
    names = list(sae_names)
    saes = {name: open_sae(name, opts, progress) for name in dict.fromkeys(names)}
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(model_key(saes[name], opts), []).append(i)
    outcomes: dict[int, StageOutcome] = {}
    for positions in groups.values():
        group = list(dict.fromkeys(names[i] for i in positions))
        targets: dict[str, _Target] = {}
        for name in group:
            sae = saes[name]
            lm = open_model(sae, opts, progress)  # equal model keys: the same cached HookedLM for the whole group
            record_sae_info(store, run, name, sae)
            targets[name] = _Target(name, sae, {**model_inputs(sae, lm), "corpus": source.fingerprint},
                                    store.checkpoint_dir(run, name, PASS_STAGE) / "state.pt")
        windows = _lazy_windows(store, source, lm, cfg, progress)
        stale = [t for t in targets.values()
                 if force or not store.is_fresh(run, t.name, PASS_STAGE, cfg.pass_config(), t.inputs)]
        started = now_iso()
        if len(stale) > 1:
            progress.log(f"collect: one pass over the corpus for {', '.join(t.name for t in stale)}")
        shared = _pass_tables(lm, stale, windows(), cfg, opts, progress) if stale else {}
        for i in positions:
            outcomes[i] = _collect_one(store, run, targets[names[i]], lm, windows, source, cfg, opts,
                                       shared.pop(names[i], None), started, force=force, progress=progress)
    return [outcomes[i] for i in range(len(names))]


def _lazy_windows(store: Store, source: CorpusSource, lm: HookedLM, cfg: CollectConfig,
                  progress: ProgressSink) -> Callable[[], Windows]:
    """The corpus windows in ``lm``'s tokens, loaded on first use: fresh stages never need them."""
    return functools.cache(lambda: load_windows(
        source, lm.tokenizer, bos_id=lm.bos_id, total_tokens=cfg.total_tokens, context_size=cfg.context_size,
        cache_dir=store.cache_dir, progress=progress))


def _pass_tables(lm: HookedLM, targets: Sequence[_Target], windows: Windows, cfg: CollectConfig,
                 opts: ModelOptions, progress: ProgressSink) -> dict[str, dict[str, pa.Table]]:
    """One shared pass for ``targets``: each SAE's ``collect:pass`` tables, by SAE name."""
    results = collect_pass_many(lm, [t.sae for t in targets], windows, cfg, progress, batch_size=opts.batch_size,
                                checkpoints=[t.checkpoint for t in targets])
    return {t.name: {"latents": r.latents_table(), "candidates": r.candidates_table()}
            for t, r in zip(targets, results, strict=True)}


def _collect_one(
    store: Store,
    run: str,
    target: _Target,
    lm: HookedLM,
    windows: Callable[[], Windows],
    source: CorpusSource,
    cfg: CollectConfig,
    opts: ModelOptions,
    pass_tables: dict[str, pa.Table] | None,
    pass_started: str,
    *,
    force: bool,
    progress: ProgressSink,
) -> StageOutcome:
    """Record one SAE's pass (``pass_tables`` when the shared pass made them) and run its selection."""
    name, sae = target.name, target.sae

    def do_pass() -> dict[str, pa.Table]:
        if pass_tables is not None:
            return pass_tables
        # Only when the shared pass did not cover this SAE, e.g. the same SAE listed twice with force.
        return _pass_tables(lm, [target], windows(), cfg, opts, progress)[name]

    pass_outcome = run_stage(store, run, name, PASS_STAGE, config=cfg.pass_config(), inputs=target.inputs,
                             compute=do_pass, force=force, progress=progress,
                             started_at=pass_started if pass_tables is not None else None,
                             extra=lambda: {"corpus": source.describe(), "windows": len(windows()),
                                            "batch_size": opts.batch_size})
    target.checkpoint.unlink(missing_ok=True)
    sel_inputs = {**target.inputs, **table_inputs(store, run, name, ["latents", "candidates"])}
    summary: dict[str, Any] = {}

    def do_select() -> dict[str, pa.Table]:
        latents = store.read_table(run, name, "latents")
        candidates = store.read_table(run, name, "candidates")
        selected = select_features(latents, cfg, progress)
        features = features_table(latents, selected, cfg)
        examples = build_examples(lm, sae, windows(), candidates, latents, selected, cfg,
                                  batch_size=opts.batch_size, progress=progress)
        summary.update(n_latents=latents.num_rows, n_alive=int(np.sum(features["alive"].to_numpy())),
                       n_selected=len(selected), n_examples=examples.num_rows,
                       counted_tokens=_counted_tokens(latents), alive_rule=cfg.alive_rule)
        return {"features": features, "examples": examples}

    outcome = run_stage(store, run, name, SELECT_STAGE, config=cfg.select_config(), inputs=sel_inputs,
                        compute=do_select, force=force, progress=progress, extra=lambda: dict(summary))
    outcome.extra = {**outcome.extra, "pass_skipped": pass_outcome.skipped}
    return outcome
