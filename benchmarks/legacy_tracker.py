"""The tracker sae-sens shipped before the fixed-shape one (commit 05895e7), kept only so that
`benchmarks/bench_tracker.py` can time the new tracker against it in the same process."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from sae_sens.collect.tracker import PassResult

NEG_INF = float("-inf")


def _group_order(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Permutation sorting entries by group, and by descending score inside a group."""
    order = score.argsort(descending=True, stable=True)
    return order[group[order].argsort(stable=True)]


Uncertain = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Fields = list[tuple[torch.Tensor, "torch.Tensor | Callable[[torch.Tensor], torch.Tensor]", float]]


class PeakTracker:
    """Streaming top peaks (no-overlap rule) and weighted reservoirs, for every latent at once.

    Feed it raw activations ``[batch, context, latents]`` (``update``); ``result`` gives the same
    top peaks as SAEBench's greedy over the whole corpus, an exact weighted sample, and for each
    kept peak its activations over the ``2 * buffer + 1`` tokens around it (its "snippet"), so
    examples can later be built without running the model again.

    Top peaks: the global greedy (descending, skip positions within ``buffer`` of a pick in the same
    context) only ever excludes within a context, so its result is the k largest among the union of
    each context's own greedy peaks. Per batch, a (context, latent) pair can only contribute if its
    largest peak beats the running k-th best ``theta`` and is among the k largest of the batch for
    that latent (k other contexts with a larger first peak would outrank all of its peaks). Those
    pairs' entries above ``theta`` (entries below it come after every entry above it, so they could
    not suppress any of those; few once ``theta`` has risen) run the greedy as a fixed number of
    vectorised rounds: per pair, the largest entry still alive (a scatter-max over pairs) is picked
    and the entries within ``buffer`` of it die. The picks merge into the state with ``topk``.

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

    On a GPU, an operation whose output size the host must learn (``nonzero``) or whose value it
    reads (``item``) stalls the queue until everything before it has run. ``update`` issues five
    such synchronisations, whatever k, the batch or the number of positive entries: the positive
    entries, the top-peak candidates, those still alive after the first greedy round, the
    reservoir's candidates and the uncertain entries kept. Everything else has shapes the host knows: merges sort entries by latent, rank
    them with ``searchsorted`` and scatter the first ``r`` of each latent into a dense ``[r, latents]``
    block (the rest, and invalid entries, into a spare column) that ``topk`` merges with the state.
    tests/test_collect_sync.py pins this count.
    """

    def __init__(self, n_latents: int, *, n_top: int = 12, n_iw: int = 7, buffer: int = 10, seed: int = 42,
                 device: torch.device | str = "cpu") -> None:
        self.n_top, self.n_iw, self.buffer = n_top, n_iw, buffer
        self.n_latents = n_latents
        self.width = 2 * buffer + 1
        dev = torch.device(device)
        f, w = n_latents, self.width
        self.n_firings = torch.zeros(f, dtype=torch.long, device=dev)
        self.max_act = torch.zeros(f, device=dev)
        self._counted = torch.zeros((), dtype=torch.long, device=dev)  # read only at the end: no sync per batch
        self.top_val = torch.full((n_top, f), NEG_INF, device=dev)
        self.top_win = torch.full((n_top, f), -1, dtype=torch.long, device=dev)
        self.top_pos = torch.full((n_top, f), -1, dtype=torch.int32, device=dev)
        self.top_snip = torch.zeros((n_top, f, w), device=dev)
        self.iw_key = torch.full((n_iw, f), NEG_INF, device=dev)
        self.iw_val = torch.zeros((n_iw, f), device=dev)
        self.iw_win = torch.full((n_iw, f), -1, dtype=torch.long, device=dev)
        self.iw_pos = torch.full((n_iw, f), -1, dtype=torch.int32, device=dev)
        self.iw_snip = torch.zeros((n_iw, f, w), device=dev)
        # The uncertain entries (latent, key, activation, window, position, snippet), one flat list per
        # latent chunk, keyed (first latent, chunk size): an update touches only its own chunk's list.
        # Key None: entries loaded from a checkpoint, handed to their chunk by its first update.
        self._u: dict[tuple[int, int] | None, Uncertain] = {}
        self.gen = torch.Generator(device=dev).manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return self.top_val.device

    @property
    def counted(self) -> int:
        return int(self._counted)

    def _empty_uncertain(self) -> Uncertain:
        dev = self.device
        return (torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, device=dev), torch.zeros(0, device=dev),
                torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.int32, device=dev),
                torch.zeros((0, self.width), device=dev))

    def _uncertain(self) -> Uncertain:
        """Every uncertain entry, as one flat list."""
        parts = list(self._u.values())
        if not parts:
            return self._empty_uncertain()
        return tuple(torch.cat(cols) for cols in zip(*parts, strict=True))  # type: ignore[return-value]

    @property
    def u_lat(self) -> torch.Tensor:
        return self._uncertain()[0]

    _STATE = ("n_firings", "max_act", "top_val", "top_win", "top_pos", "top_snip", "iw_key", "iw_val", "iw_win",
              "iw_pos", "iw_snip")
    _UNCERTAIN = ("u_lat", "u_key", "u_val", "u_win", "u_pos", "u_snip")

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k).cpu() for k in self._STATE}
        d.update({k: x.cpu() for k, x in zip(self._UNCERTAIN, self._uncertain(), strict=True)})
        d.update(counted=self.counted, gen=self.gen.get_state())
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k in self._STATE:
            getattr(self, k).copy_(d[k])
        loaded = tuple(d[k].to(self.device) for k in self._UNCERTAIN)
        self._u = {None: loaded} if loaded[0].numel() else {}  # type: ignore[dict-item]
        self._counted.fill_(int(d["counted"]))
        self.gen.set_state(d["gen"])

    def _chunk_uncertain(self, lo: int, fc: int) -> Uncertain:
        """The uncertain list of latents ``lo:lo+fc``, taking over its entries loaded from a checkpoint."""
        mine = self._u.pop((lo, fc), None) or self._empty_uncertain()
        loaded = self._u.pop(None, None)
        if loaded is not None:  # only in the first batch after a resume
            inside = (loaded[0] >= lo) & (loaded[0] < lo + fc)
            mine = tuple(torch.cat([a, b[inside]]) for a, b in zip(mine, loaded, strict=True))  # type: ignore[assignment]
            if not bool(inside.all()):
                self._u[None] = tuple(x[~inside] for x in loaded)  # type: ignore[assignment]
        return mine

    @torch.inference_mode()
    def update(self, acts: torch.Tensor, counted: torch.Tensor, window_offset: int, latent_offset: int = 0) -> None:
        """Add a batch: ``acts`` [B, T, Fc] for latents ``latent_offset:+Fc`` of windows
        ``window_offset:+B``; ``counted`` [B, T] marks positions that count (others are ignored).
        Call with ``latent_offset == 0`` exactly once per batch (it counts the tokens)."""
        b, t, fc = acts.shape
        dev = acts.device
        counted = counted.to(dev).bool()
        lat = slice(latent_offset, latent_offset + fc)
        with record_function("collect.firing"):
            if latent_offset == 0:
                self._counted += counted.sum()
            # SAE codes are sparse: one nonzero finds the positive entries that count, and the rest
            # works on those (flat [row, latent] positions; 1-D indexing is several times faster).
            flat = acts.reshape(b * t, fc)
            mask = flat > 0
            mask &= counted.reshape(-1, 1)
            nz = mask.view(-1).nonzero().squeeze(1)  # sync 1
            row, fi = torch.div(nz, fc, rounding_mode="floor"), nz % fc
            val = (flat.view(-1)[nz] if flat.is_contiguous() else flat[row, fi]).float()
            self.n_firings[lat].index_add_(0, fi, torch.ones_like(fi))
            chunk_max = torch.zeros(fc, device=dev).scatter_reduce_(0, fi, val, "amax")
            self.max_act[lat] = torch.maximum(self.max_act[lat], chunk_max)
        # positions within `buffer` of either end of the context can never be peaks
        in_ctx = torch.arange(t, device=dev)
        peak_rows = counted & (in_ctx >= self.buffer) & (in_ctx < t - self.buffer)  # [B, T]
        peak_entry = peak_rows.view(-1)[row]
        offsets = torch.arange(-self.buffer, self.buffer + 1, device=dev)

        def snippets(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            """Activations of chunk latent ``c`` over the tokens around flat row ``r`` ([E, width])."""
            rows = r[:, None] + offsets
            return flat[rows, c[:, None]].float() * counted.view(-1)[rows]

        with record_function("collect.top"):
            self._update_top(acts, row, fi, val, peak_entry, window_offset, latent_offset, snippets)
        with record_function("collect.reservoir"):
            self._update_iw(row, fi, val, peak_entry, t, fc, window_offset, latent_offset, snippets)

    def _update_top(self, acts: torch.Tensor, row: torch.Tensor, fi: torch.Tensor, val: torch.Tensor,
                    peak_entry: torch.Tensor, window_offset: int, latent_offset: int,
                    snippets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Each (context, latent)'s own greedy peaks that beat the running k-th best, merged in."""
        b, t, fc = acts.shape
        k, buf = self.n_top, self.buffer
        if t <= 2 * buf:
            return
        dev = acts.device
        theta = self.top_val[k - 1, latent_offset:latent_offset + fc].clamp(min=0.0)
        pair = torch.div(row, t, rounding_mode="floor") * fc + fi  # (context, latent), flat
        # Entries below the threshold are dropped before the greedy: they come after every entry
        # above it in their context, so they could not have suppressed any of those.
        above = peak_entry & (val > theta[fi])
        if b > k:  # a pair whose largest peak is not among its latent's k largest of the batch cannot enter
            first = torch.zeros(b * fc, device=dev).scatter_reduce_(0, pair, torch.where(above, val, 0.0), "amax")
            kth = first.view(b, fc).topk(k, dim=0).values[-1]
            above &= first[pair] >= kth[fi]
        idx = above.nonzero().squeeze(1)  # sync 2
        n = int(idx.numel())  # (no early return at 0: the sync count stays the same)
        pair, fi, val = pair[idx], fi[idx], val[idx]
        pos = row[idx] % t
        # compact pair ids (0 .. n-1), so each round's per-pair arrays have the size of the entries
        order = pair.argsort()
        step = torch.ones(n, dtype=torch.long, device=dev)
        step[1:] = pair[order[1:]] != pair[order[:-1]]
        gid = torch.empty_like(pair)
        gid[order] = step.cumsum(0) - 1

        def greedy_round(v: torch.Tensor, p: torch.Tensor, g: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
            """Each pair's next greedy peak among entries ``v, p, g`` (value, position, pair id):
            its largest alive entry, the lowest index on a tie. Entries within ``buffer`` of it die."""
            ent = torch.arange(v.numel(), device=dev)
            live = torch.where(alive, v, 0.0)
            best = torch.zeros(n, device=dev).scatter_reduce_(0, g, live, "amax")
            at_best = alive & (live == best[g])
            first_ent = torch.full((n,), n, device=dev).scatter_reduce_(0, g, torch.where(at_best, ent, n), "amin")
            pick = at_best & (first_ent[g] == ent)
            pick_pos = torch.full((n,), -t - buf - 1, device=dev).scatter_reduce_(
                0, g, torch.where(pick, p, -t - buf - 1), "amax")
            alive &= (p - pick_pos[g]).abs() > buf
            return pick

        # Round 1 over every candidate entry; the entries still alive after it (usually few: most
        # pairs have one or two entries above theta) go on alone, found with one more sync.
        alive = torch.ones(n, dtype=torch.bool, device=dev)
        picked = greedy_round(val, pos, gid, alive)
        rest = alive.nonzero().squeeze(1)  # sync 3
        r_val, r_pos, r_gid = val[rest], pos[rest], gid[rest]
        r_alive = torch.ones(rest.numel(), dtype=torch.bool, device=dev)
        r_picked = torch.zeros(rest.numel(), dtype=torch.bool, device=dev)
        # picks of one context are more than `buffer` apart: at most this many rounds find any
        for _ in range(min(k, -(-(t - 2 * buf) // (buf + 1))) - 1):
            r_picked |= greedy_round(r_val, r_pos, r_gid, r_alive)
        picked[rest] = r_picked
        ctx = torch.div(pair, fc, rounding_mode="floor")
        with record_function("collect.merge"):
            self._merge(k, latent_offset, fc, fi + latent_offset, picked, [
                (self.top_val, val, NEG_INF), (self.top_win, window_offset + ctx, -1), (self.top_pos, pos.int(), -1),
                (self.top_snip, lambda o: snippets(row[idx[o]], fi[o]), 0.0)])

    def _update_iw(self, row: torch.Tensor, fi: torch.Tensor, val: torch.Tensor, peak_entry: torch.Tensor, t: int,
                   fc: int, window_offset: int, latent_offset: int,
                   snippets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        lo = latent_offset
        old = self._chunk_uncertain(lo, fc)
        u = torch.rand(val.shape, generator=self.gen, device=val.device)
        key = torch.log(u) / (val * val)
        # A key below the reservoir's n_iw-th can never be sampled, certain or not.
        si = (peak_entry & (key > self.iw_key[self.n_iw - 1, lo:lo + fc][fi])).nonzero().squeeze(1)  # sync 4
        n_old, n_new = int(old[0].numel()), int(si.numel())
        if n_old + n_new == 0:
            return
        row_n, fi_n = row[si], fi[si]
        f = torch.cat([old[0], fi_n + lo])
        key_a, val_a = torch.cat([old[1], key[si]]), torch.cat([old[2], val[si]])
        win = torch.cat([old[3], window_offset + torch.div(row_n, t, rounding_mode="floor")])
        pos = torch.cat([old[4], (row_n % t).int()])

        def snip(o: torch.Tensor) -> torch.Tensor:
            """Snippets of entries ``o``: kept ones from the list, new ones gathered from this batch
            (only for the entries a merge or the list keeps)."""
            if n_new == 0:
                return old[5][o]
            j = (o - n_old).clamp(min=0)
            new = snippets(row_n[j], fi_n[j])
            if n_old == 0:
                return new
            return torch.where((o < n_old)[:, None], old[5][o.clamp(max=n_old - 1)], new)

        self._settle(self.top_val[self.n_top - 1, lo:lo + fc], lo, fc, (f, key_a, val_a, win, pos, snip))

    def _settle(self, theta: torch.Tensor, lo: int, n: int,
                entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor | Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """Uncertain ``entries`` of latents ``lo:lo+n`` now below their latent's ``theta`` join the
        reservoir; the others become the chunk's uncertain list (minus those whose key the reservoir
        now beats)."""
        f, key, val, win, pos, snip = entries
        sure = val < theta[f - lo]
        with record_function("collect.merge"):
            self._merge(self.n_iw, lo, n, f, sure, [(self.iw_key, key, NEG_INF), (self.iw_val, val, 0.0),
                                                     (self.iw_win, win, -1), (self.iw_pos, pos, -1),
                                                     (self.iw_snip, snip, 0.0)])
        keep = (~sure & (key > self.iw_key[self.n_iw - 1, lo:lo + n][f - lo])).nonzero().squeeze(1)  # sync 5
        if keep.numel():
            self._u[(lo, n)] = (f[keep], key[keep], val[keep], win[keep], pos[keep],
                                snip(keep) if callable(snip) else snip[keep])

    @staticmethod
    def _merge(r: int, lo: int, n: int, f: torch.Tensor, valid: torch.Tensor, fields: Fields) -> None:
        """Keep, per latent of ``lo:lo+n``, the ``r`` highest-score rows among the state and the
        ``valid`` new entries (``f``: their latents). ``fields`` are (state [r, F, ...], new values
        [E, ...], fill); the first is the score. New values may be a function of entry indices,
        called only for the entries that compete (or for every entry, when they are fewer).

        Fixed shapes throughout: entries sorted by latent and descending score, ranked inside their
        latent with ``searchsorted``, the first ``r`` of each scattered into a dense [r, n] block (the
        others, and invalid entries, into a spare column), which ``topk`` merges with the state."""
        e = int(f.numel())
        if e == 0:
            return
        dev = f.device
        dest = torch.where(valid, f - lo, n)
        order = _group_order(dest, fields[0][1])  # type: ignore[arg-type]
        d = dest[order]
        rank = torch.arange(e, device=dev) - torch.searchsorted(d, d)
        keep = rank < r
        slot = torch.full((r, n + 1), -1, dtype=torch.long, device=dev)
        slot[torch.where(keep, rank, 0), torch.where(keep, d, n)] = torch.where(keep, order, -1)
        slot = slot[:, :n]
        has = slot >= 0
        src = slot.clamp(min=0)
        per_entry = e <= r * n
        stacked = []
        for state, new, fill in fields:
            if callable(new):
                vals = new(torch.arange(e, device=dev))[src] if per_entry else new(src.view(-1)).view(r, n, -1)
            else:
                vals = new[src]
            mask = has.view(r, n, *([1] * (vals.dim() - 2)))
            dense = torch.where(mask, vals.to(state.dtype), torch.as_tensor(fill, dtype=state.dtype, device=dev))
            stacked.append(torch.cat([state[:, lo:lo + n], dense]))
        _, idx = stacked[0].topk(r, dim=0)
        for (state, _, _), both in zip(fields, stacked, strict=True):
            gather = idx.view(*idx.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
            state[:, lo:lo + n] = both.gather(0, gather)

    def result(self) -> PassResult:
        found = self.top_win >= 0
        # The weakest top peak found (the k-th, or fewer when the latent has fewer peaks).
        weakest = torch.where(found, self.top_val, torch.inf).amin(0)
        for chunk in list(self._u):
            entries = self._u.pop(chunk)
            if chunk is not None:
                self._settle(weakest[chunk[0]:chunk[0] + chunk[1]], *chunk, entries)
                continue
            step = 4096  # loaded from a checkpoint and never updated since: settle it a block at a time
            for lo in range(0, self.n_latents, step):
                n = min(step, self.n_latents - lo)
                inside = (entries[0] >= lo) & (entries[0] < lo + n)
                self._settle(weakest[lo:lo + n], lo, n, tuple(x[inside] for x in entries))  # type: ignore[arg-type]
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
