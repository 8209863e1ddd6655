"""The streaming tracker: per-latent firing counts, top peaks and weighted reservoirs over batches of
SAE activations (pure tensor code, no I/O), and the ``PassResult`` it hands over."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.profiler import record_function

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
    # latents whose iw sample may miss a token: more peaks tied at the k-th value than shadow slots
    iw_tie_loss: np.ndarray | None = None

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


MASK32 = 0xFFFFFFFF
VALID = 1 << 32  # a slot key at or above this holds a peak (below: empty, or a round that found nothing)
LN2_32 = 32 * math.log(2)
SAMPLER = "hash-ares/1"  # how iw keys are drawn: part of the pass config, so passes drawn otherwise are redone


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, elementwise on int64 values below 2**32: two multiply-xorshift rounds.

    The multipliers are below 2**31, so every product stays inside int64 and a CPU and a GPU give the
    same bits; each step is a bijection of 32-bit values, so distinct inputs never collide."""
    x = (x * 0x7FEB352D).bitwise_and_(MASK32)
    x = x.bitwise_xor_(x >> 15)
    x = (x * 0x5BD1E995).bitwise_and_(MASK32)
    return x.bitwise_xor_(x >> 16)


def latent_salt(latents: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-latent salt of the iw hash, so that every latent draws its own, independent uniforms."""
    return mix32(mix32(latents.long()) ^ mix32(torch.full_like(latents.long(), seed & MASK32)))


def iw_keys(seed: int, latents: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The A-Res key ``log(u) / value**2`` of each (latent, token, value), float64.

    ``u`` is a counter-based function of (seed, latent, token index in the pass) and nothing else, so
    a latent's sample does not depend on batch size, latent chunk, resume point, the SAEs sharing a pass
    or the device. ``tokens`` = window * context + position, below 2**32. Non-positive values: -inf."""
    x = mix32(tokens.long() ^ latent_salt(latents, seed))
    log_u = x.double().add_(0.5).log_().sub_(LN2_32)
    return log_u.div_(values.double().square())


class PeakTracker:
    """Streaming top peaks (no-overlap rule) and weighted reservoirs, every latent at once, with shapes
    fixed in advance: no host synchronisation, and a few dozen to a hundred device operations per
    ``update`` whatever the data.

    Feed it activations ``[batch, context, latents]`` (``update``); ``result`` gives exactly the top
    peaks of SAEBench's greedy over the whole corpus (largest first; a tie goes to the earlier token),
    the exact A-Res weighted sample, and for each kept peak its activations over the ``2 * buffer + 1``
    tokens around it (its "snippet"), so examples can be built later without the model.

    Top peaks. Every comparison is on a composite key (value bits << 32 | 2**32 - 1 - token), value
    first and the earlier token on a tie, the order of the reference greedy. The global greedy only
    ever suppresses within a context, so its picks are the union of each context's own picks. Per
    batch and latent, a context whose best peak is not among the ``slots`` best of the batch has that
    many contexts with a larger peak, so none of its peaks can be kept: the greedy runs on those best
    contexts only (a fixed slab), in a fixed number of rounds (peaks of one context are more than
    ``buffer`` apart, so a context holds at most ``ceil(inner / (buffer + 1))``). The picks merge into
    ``slots = n_top + shadow`` kept slots with one ``topk``. Each slot keeps the activations and iw keys
    of the ``4 * buffer + 1`` tokens around its peak (its "wide" window).

    Importance-weighted peaks. Every token has a fixed key ``log(u) / act**2`` (``iw_keys``); the sample
    is the ``n_iw`` largest keys among positions below the final weakest top peak: A-Res, a weighted
    sample without replacement with p ~ act^2. The running k-th top value ``theta`` never decreases, so
    a batch's positions below its new ``theta`` are certain members and are offered to the reservoir
    at once. A position at or above ``theta`` is a kept peak or lies within ``buffer`` of one that
    suppressed it, so it is in a slot's wide window: when ``theta`` passes it, a later batch offers it
    from there (its key and snippet are in the window), and ``result`` offers what the final threshold
    admits. Each member is offered once (a token near two slots is offered twice and dropped once), so
    the reservoir holds exactly the ``n_iw`` largest keys. The one gap: more than ``shadow`` peaks tied
    at ``theta``'s exact value; ``result`` flags such latents (``iw_tie_loss``).
    """

    def __init__(self, n_latents: int, *, n_top: int = 12, n_iw: int = 7, buffer: int = 10, seed: int = 42,
                 device: torch.device | str = "cpu", shadow: int = 4) -> None:
        self.n_top, self.n_iw, self.buffer, self.seed = n_top, n_iw, buffer, seed
        self.n_latents = n_latents
        self.slots = n_top + shadow
        self.width = 2 * buffer + 1
        self.wide = 4 * buffer + 1
        dev = torch.device(device)
        f, s = n_latents, self.slots
        self.n_firings = torch.zeros(f, dtype=torch.long, device=dev)
        self.max_act = torch.zeros(f, device=dev)
        self._counted = torch.zeros((), dtype=torch.long, device=dev)  # read only at the end: no sync per batch
        self.top_key = torch.zeros((s, f), dtype=torch.long, device=dev)  # 0: empty
        self.top_wide = torch.zeros((s, self.wide, f), device=dev)
        self.top_wkey = torch.full((s, self.wide, f), NEG_INF, dtype=torch.float64, device=dev)
        self.iw_key = torch.full((n_iw, f), NEG_INF, dtype=torch.float64, device=dev)
        self.iw_g = torch.full((n_iw, f), -1, dtype=torch.long, device=dev)
        self.iw_snip = torch.zeros((n_iw, self.width, f), device=dev)
        self.tie_loss = torch.zeros(f, dtype=torch.bool, device=dev)
        self.context: int | None = None  # tokens per window, fixed by the first update
        self._salt = latent_salt(torch.arange(f, device=dev), seed)
        self._const: dict[tuple[Any, ...], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.top_key.device

    @property
    def counted(self) -> int:
        return int(self._counted)

    _STATE = ("n_firings", "max_act", "top_key", "top_wide", "top_wkey", "iw_key", "iw_g", "iw_snip", "tie_loss")

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k).cpu() for k in self._STATE}
        d.update(counted=self.counted, context=self.context, seed=self.seed)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("seed", self.seed) != self.seed:
            raise ValueError("checkpoint of a pass with another seed")
        for k in self._STATE:
            getattr(self, k).copy_(d[k])
        self._counted.fill_(int(d["counted"]))
        self.context = d["context"]

    def _c(self, name: str, *shape: int) -> torch.Tensor:
        """Constant tensors, built once per shape: building them per batch would be a launch each."""
        key = (name, *shape)
        if key not in self._const:
            dev, b = self.device, self.buffer
            if name == "band":  # [inner, inner]: 1 where two positions are more than `buffer` apart
                i = torch.arange(shape[0], device=dev)
                made = ((i[:, None] - i[None, :]).abs() > b).float()
            elif name == "ar":
                made = torch.arange(shape[0], device=dev).view(1, -1, 1)
            elif name == "zeros":
                made = torch.zeros(shape, device=dev)
            elif name == "neginf":
                made = torch.full(shape, NEG_INF, dtype=torch.float64, device=dev)
            elif name == "false":
                made = torch.zeros(shape, dtype=torch.bool, device=dev)
            elif name == "slot_rows":  # first row of each kept slot's wide window in the stacked source
                made = (torch.arange(self.slots, device=dev) * self.wide).view(-1, 1)
            elif name == "pick_rows":  # ... of a context's pick at inner position 0, minus `buffer`
                s_ctx, t = shape
                made = (self.slots * self.wide + torch.arange(s_ctx, device=dev) * t - b).view(1, -1, 1)
            elif name == "res_rows":  # snippet rows of reservoir entries, then of released ones
                n, w, wide = self.n_iw, self.width, self.wide
                res = torch.arange(n, device=dev) * w
                rel = n * w + (torch.arange(self.slots, device=dev)[:, None] * wide
                               + torch.arange(w, device=dev)[None, :]).view(-1)
                made = torch.cat([res, rel]).view(-1, 1)
            elif name == "tokens":  # token index inside a batch, inner positions: [B, inner, 1]
                n_b, t = shape
                made = (torch.arange(n_b, device=dev)[:, None] * t
                        + torch.arange(b, t - b, device=dev)[None, :]).view(n_b, t - 2 * b, 1)
            else:
                raise KeyError(name)
            self._const[key] = made
        return self._const[key]

    def _put(self, name: str, lat: slice, value: torch.Tensor) -> None:
        """Store ``value`` as the latents ``lat`` of a state tensor (latents last): a rebind when it is
        all of them (no copy), else a copy into the slice."""
        state = getattr(self, name)
        if lat.start == 0 and lat.stop == state.shape[-1]:
            setattr(self, name, value)
        else:
            state[..., lat] = value

    @torch.inference_mode()
    def update(self, acts: torch.Tensor, counted: torch.Tensor, window_offset: int, latent_offset: int = 0) -> None:
        """Add a batch: ``acts`` [B, T, Fc] for latents ``latent_offset:+Fc`` of windows
        ``window_offset:+B``; ``counted`` [B, T] (bool, on the device) marks positions that count.
        Call with ``latent_offset == 0`` exactly once per batch (it counts the tokens)."""
        n_b, t, fc = acts.shape
        buf, k, s, n, w, wide = self.buffer, self.n_top, self.slots, self.n_iw, self.width, self.wide
        if self.context is None:
            self.context = t
        if t != self.context:
            raise ValueError(f"windows of {t} tokens in a pass of {self.context}-token windows")
        if (window_offset + n_b) * t > MASK32:
            raise ValueError("a pass over more than 2**32 tokens: split the corpus into several runs")
        lat = slice(latent_offset, latent_offset + fc)
        counted = counted.to(acts.device)
        with record_function("collect.firing"):
            # codes below zero count as zero (SAE codes are non-negative; the keys need it)
            a = acts.float().clamp(min=0.0).mul_(counted[..., None])
            if latent_offset == 0:
                self._counted += counted.sum()
            self.n_firings[lat].add_((a > 0).sum((0, 1)))
            mx = self.max_act[lat]
            torch.maximum(mx, a.amax((0, 1)), out=mx)
        inner_t = t - 2 * buf
        if inner_t <= 0:  # no position can be a peak
            return
        inner = a[:, buf:t - buf]
        with record_function("collect.keys"):
            # every inner token's iw key; -inf at the buffer positions (never sampled) and at zeros
            x = mix32((self._c("tokens", n_b, t) + window_offset * t) ^ self._salt[lat])
            keys = x.double().add_(0.5).log_().sub_(LN2_32).div_(inner.double().square())
            keys = torch.nn.functional.pad(keys, (0, 0, buf, buf), value=NEG_INF)
        with record_function("collect.top"):
            n_ctx = min(s, n_b)
            rounds = min(s, -(-inner_t // (buf + 1)))
            # the contexts with the best first peaks (a tie to the earlier window: a stable sort)
            ctx = inner.amax(1).sort(dim=0, descending=True, stable=True).indices[:n_ctx]
            pick_at = ctx[:, None, :].expand(n_ctx, t, fc)
            slab = a.gather(0, pick_at)
            live = slab[:, buf:t - buf].clone()
            band = self._c("band", inner_t)
            val = torch.empty((rounds, n_ctx, fc), device=a.device)
            pos = torch.empty((rounds, n_ctx, fc), dtype=torch.long, device=a.device)
            for r in range(rounds):  # the greedy: largest live entry (the first on a tie), then kill around it
                torch.max(live, dim=1, out=(val[r], pos[r]))
                if r + 1 < rounds:
                    live.mul_(band[pos[r]].transpose(1, 2))
            # composite keys: value bits, then 2**32 - 1 - token (inner position pos is token buf + pos)
            neg_token = ctx.mul(-t).add_(MASK32 - window_offset * t - buf)
            pick_key = (val.view(torch.int32).long() << 32).add_(neg_token).sub_(pos)
            old_key = self.top_key[:, lat]
            new_key, src = torch.cat([old_key, pick_key.view(rounds * n_ctx, fc)]).topk(s, dim=0)
            # each new slot's wide window: rows of a stacked source (old windows, then the slab)
            base = torch.cat([self._c("slot_rows").expand(s, fc), (pos + self._c("pick_rows", n_ctx, t)).view(-1, fc)])
            rows = (base.gather(0, src)[:, None, :] + self._c("ar", wide)).view(s * wide, fc)
            old_wide, old_wkey = self.top_wide[:, :, lat], self.top_wkey[:, :, lat]
            new_wide = torch.cat([old_wide.reshape(s * wide, fc), slab.view(n_ctx * t, fc),
                                  self._c("zeros", buf, fc)]).gather(0, rows).view(s, wide, fc)
            new_wkey = torch.cat([old_wkey.reshape(s * wide, fc), keys.gather(0, pick_at).view(n_ctx * t, fc),
                                  self._c("neginf", buf, fc)]).gather(0, rows).view(s, wide, fc)
            hi_old, hi_new = old_key[k - 1] >> 32, new_key[k - 1] >> 32
            theta_old, theta_new = hi_old.int().view(torch.float32), hi_new.int().view(torch.float32)
            # more than `shadow` peaks tied at theta: one pushed out may hide a sampleable neighbour
            self.tie_loss[lat].logical_or_((new_key[s - 1] >> 32 == hi_new) & (hi_new > 0))
        with record_function("collect.reservoir"):
            batch_key = torch.where(a < theta_new, keys, NEG_INF)
            bk, bi = batch_key.view(n_b * t, fc).topk(n, dim=0)
            self._offer(lat, old_key, old_wide, old_wkey, theta_old, theta_new,
                        (bk, bi, a.view(n_b * t, fc), window_offset * t))
            self._put("top_key", lat, new_key)
            self._put("top_wide", lat, new_wide)
            self._put("top_wkey", lat, new_wkey)

    def _offer(self, lat: slice, slot_key: torch.Tensor, wide: torch.Tensor, wkey: torch.Tensor, lo: torch.Tensor,
               hi: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None,
               store: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Merge into the reservoir of latents ``lat`` the tokens within ``buffer`` of the slots
        (``slot_key``, their ``wide`` windows and keys ``wkey``) with ``lo <= act < hi``, and the
        ``batch`` candidates (keys, flat rows, the batch's activations [rows, Fc], first token).
        Returns the merged reservoir (keys, tokens, snippets), and stores it unless ``store`` is False."""
        buf, n, w, wide_n = self.buffer, self.n_iw, self.width, self.wide
        s, fc = slot_key.shape
        near = wide[:, buf:3 * buf + 1]  # the tokens within `buffer` of each slot's peak
        ok = (near >= lo) & (near < hi) & (slot_key >= VALID)[:, None]
        rel_key = torch.where(ok, wkey[:, buf:3 * buf + 1], NEG_INF).view(s * w, fc)
        slot_token = MASK32 - (slot_key & MASK32)
        rel_token = (slot_token[:, None, :] + (self._c("ar", w) - buf)).view(s * w, fc)
        res_key, res_token, res_snip = self.iw_key[:, lat], self.iw_g[:, lat], self.iw_snip[:, :, lat]
        key_parts, token_parts = [res_key, rel_key], [res_token, rel_token]
        snip_parts = [res_snip.reshape(n * w, fc), wide.reshape(s * wide_n, fc)]
        row_parts = [self._c("res_rows").expand(n + s * w, fc)]
        if batch is not None:
            bk, bi, flat, first = batch
            key_parts.append(bk)
            token_parts.append(bi + first)
            snip_parts += [flat, self._c("zeros", buf, fc)]
            row_parts.append(bi + (n * w + s * wide_n - buf))
        # the 2n best, then each key only once (a token near two slots is offered twice), then the n best
        top2, at2 = torch.cat(key_parts).topk(2 * n, dim=0)
        dup = torch.cat([self._c("false", 1, fc), top2[1:] == top2[:-1]])
        new_key, at = torch.where(dup, NEG_INF, top2).topk(n, dim=0)
        at = at2.gather(0, at)
        new_token = torch.cat(token_parts).gather(0, at)
        rows = (torch.cat(row_parts).gather(0, at)[:, None, :] + self._c("ar", w)).view(n * w, fc)
        new_snip = torch.cat(snip_parts).gather(0, rows).view(n, w, fc)
        if store:
            self._put("iw_key", lat, new_key)
            self._put("iw_g", lat, new_token)
            self._put("iw_snip", lat, new_snip)
        return new_key, new_token, new_snip

    def result(self) -> PassResult:
        """What the pass found; the reservoir with the last members offered (tokens near a slot, below
        the final weakest top peak). The state is left as it was: the pass can go on."""
        k, t, buf = self.n_top, self.context or 1, self.buffer
        top = self.top_key[:k]
        found = top >= VALID
        val = (top >> 32).int().view(torch.float32)
        # the weakest top peak found (the k-th, or fewer when the latent has fewer peaks)
        weakest = torch.where(found, val, torch.inf).amin(0)
        weakest = torch.where(torch.isinf(weakest), 0.0, weakest)
        with torch.inference_mode():
            iw_key, iw_g, iw_snip = self._offer(slice(0, self.n_latents), self.top_key, self.top_wide, self.top_wkey,
                                                val[k - 1], weakest, None, store=False)
        token = MASK32 - (top & MASK32)
        kept = iw_key > NEG_INF

        def masked(x: torch.Tensor, mask: torch.Tensor, fill: float) -> np.ndarray:
            return torch.where(mask, x, torch.as_tensor(fill, dtype=x.dtype)).cpu().numpy()

        snip_top = self.top_wide[:k, buf:3 * buf + 1].permute(0, 2, 1)
        return PassResult(
            n_firings=self.n_firings.cpu().numpy(),
            max_activation=self.max_act.double().cpu().numpy(),
            counted_tokens=self.counted,
            top_activation=masked(val.double(), found, np.nan),
            top_window=masked(token // t, found, -1),
            top_position=masked((token % t).int(), found, -1),
            top_snippet=masked(snip_top, found[..., None], np.nan),
            iw_activation=masked(iw_snip[:, buf].double(), kept, np.nan),
            iw_window=masked(iw_g // t, kept, -1),
            iw_position=masked((iw_g % t).int(), kept, -1),
            iw_key=masked(iw_key, kept, np.nan),
            iw_snippet=masked(iw_snip.permute(0, 2, 1), kept[..., None], np.nan),
            iw_tie_loss=self.tie_loss.cpu().numpy(),
        )
