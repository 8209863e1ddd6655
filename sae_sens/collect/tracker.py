"""The streaming tracker: per-latent firing counts, top peaks and weighted reservoirs over batches of
SAE activations (pure tensor code, no I/O), and the ``PassResult`` it hands over."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..schemas import make_table

NEG_INF = float("-inf")


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

