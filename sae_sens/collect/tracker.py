"""The streaming tracker: per-latent firing counts, top peaks and weighted reservoirs over batches of
SAE activations (pure tensor code, no I/O), and the ``PassResult`` it hands over."""

from __future__ import annotations

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
VALID = 1 << 32  # a slot key at or above this holds a peak
EMPTY = MASK32  # an empty slot: above every pick that found nothing (value bits 0), below every peak


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, elementwise on int64 values below 2**32 (a multiply, a xorshift, a multiply).

    The multipliers are below 2**31, so every product stays inside int64 and a CPU and a GPU give the
    same bits; every step is a bijection of 32-bit values, so distinct inputs never collide. The high
    bits, which ``iw_keys`` reads as a uniform, depend on every input bit."""
    x = (x * 0x7FEB352D).bitwise_and_(MASK32)
    x = x.bitwise_xor_(x >> 15)
    return (x * 0x5BD1E995).bitwise_and_(MASK32)


def latent_salt(latents: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-latent salt of the iw hash, so that every latent draws its own, independent uniforms."""
    x = mix32(latents.long() ^ (mix32(torch.full_like(latents.long(), seed & MASK32)) ^ 0x9E3779B9))
    return mix32(x.bitwise_xor_(x >> 16))


def log2_uniform(x: torch.Tensor) -> torch.Tensor:
    """log2(u) of the uniform u = x / 2**32 a hash ``x`` stands for (float64; -inf for x = 0)."""
    return x.double().log2_().sub_(32.0)


def iw_keys(seed: int, latents: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The A-Res key ``log2(u) / value**2`` of each (latent, token, float32 value), float64: the
    tracker's keys, for a reference to compare with.

    ``u`` is a counter-based function of (seed, latent, token index in the pass) and nothing else, so
    a latent's sample does not depend on batch size, latent chunk, resume point, the SAEs sharing a
    pass or the device. ``tokens`` = window * context + position, below 2**32. Zero values: -inf."""
    return log2_uniform(mix32(tokens.long() ^ latent_salt(latents, seed))).div_(values.float().square())


class PeakTracker:
    """Streaming top peaks (no-overlap rule) and weighted reservoirs for every latent at once, with
    shapes fixed in advance: no host synchronisation and about a hundred device operations per
    ``update``, whatever the data.

    Feed it activations ``[batch, context, latents]`` (``update``); ``result`` gives exactly the top
    peaks of SAEBench's greedy over the whole corpus (largest first; a tie goes to the earlier token),
    the exact A-Res weighted sample, and for each kept peak its activations over the ``2 * buffer + 1``
    tokens around it (its "snippet"), so examples can be built later without the model.

    Top peaks. Every comparison is on a composite key (value bits << 32 | 2**32 - 1 - token): value
    first, the earlier token on a tie, the order of the reference greedy. The global greedy only ever
    suppresses within a context, so its picks are the union of each context's own picks. Per batch
    and latent, a context whose best peak is not among the ``slots`` best of the batch has that many
    contexts with a larger peak, so none of its peaks can be kept: the greedy runs on those contexts
    only (a fixed slab), in a fixed number of rounds (peaks of one context are more than ``buffer``
    apart, so a context holds at most ``ceil(inner / (buffer + 1))``). The picks merge into ``slots =
    n_top + shadow`` kept slots with one ``topk``. Each slot keeps the activations and iw keys of the
    ``4 * buffer + 1`` tokens around its peak (its "wide" window).

    Importance-weighted peaks. Every token has a fixed key ``log2(u) / act**2`` (``iw_keys``): the
    sample is the ``n_iw`` largest keys among positions below the final weakest top peak, A-Res (a
    weighted sample without replacement, p ~ act^2). The running k-th top value ``theta`` never
    decreases, so a batch's positions below its new ``theta`` are certain members and are offered to
    the reservoir at once. A position at or above ``theta`` is a kept peak or lies within ``buffer`` of
    a kept peak that suppressed it, so it is in a slot's wide window, with its key: each batch offers
    the window positions below the new ``theta``, and ``result`` those below the final threshold.
    Offering a member twice is harmless: the copies have equal keys, and the merge keeps one. The
    one gap: more than ``shadow`` peaks tied at ``theta``'s exact value (one pushed out of the slots
    may hide a member); ``result`` flags such latents (``iw_tie_loss``).
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
        # each batch's counted tokens, summed only when read: no sync per batch, one launch
        self._counted: list[torch.Tensor] = []
        self.top_key = torch.full((s, f), EMPTY, dtype=torch.long, device=dev)
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
        return int(sum(int(c) for c in self._counted))

    _STATE = ("n_firings", "max_act", "top_key", "top_wide", "top_wkey", "iw_key", "iw_g", "iw_snip",
              "tie_loss")

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k).cpu() for k in self._STATE}
        d.update(counted=self.counted, context=self.context, seed=self.seed)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("seed", self.seed) != self.seed:
            raise ValueError("a checkpoint of a pass with another seed")
        for k in self._STATE:
            getattr(self, k).copy_(d[k])
        self._counted = [torch.tensor(int(d["counted"]), device=self.device)]
        self.context = d["context"]

    def _c(self, name: str, *shape: int) -> torch.Tensor:
        """Constant tensors, built once per shape (built per batch, each would be a launch)."""
        key = (name, *shape)
        if key not in self._const:
            dev, b, s, n, w, wide = self.device, self.buffer, self.slots, self.n_iw, self.width, self.wide
            if name == "ar":  # [1, m, 1]
                made = torch.arange(shape[0], device=dev).view(1, -1, 1)
            elif name == "ar_col":  # [m, 1]
                made = torch.arange(shape[0], device=dev).view(-1, 1)
            elif name == "ar_row":  # [1, m]
                made = torch.arange(shape[0], device=dev).view(1, -1)
            elif name == "zero":
                made = torch.zeros((), device=dev)
            elif name == "zeros":
                made = torch.zeros(shape, device=dev)
            elif name == "neginf":
                made = torch.full(shape, NEG_INF, dtype=torch.float64, device=dev)
            elif name == "live":  # the greedy's slab, zero-padded by `buffer` on each side
                made = torch.zeros(shape, device=dev)
            elif name == "keys":  # a batch's iw keys, -inf at the buffer positions
                made = torch.full(shape, NEG_INF, dtype=torch.float64, device=dev)
            elif name == "dup":  # the merge's duplicate marks; the first row is never one
                made = torch.zeros(shape, dtype=torch.bool, device=dev)
            elif name == "near_token":  # [1, w, 1]: 2**32 - 1 + offset of each token near a slot's peak
                made = (MASK32 + torch.arange(-b, b + 1, device=dev)).view(1, -1, 1)
            elif name == "slot_rows":  # [s, 1]: first row of each kept slot's wide window in a stacked source
                made = (torch.arange(s, device=dev) * wide).view(-1, 1)
            elif name == "res_rows":  # snippet rows of reservoir entries, then of the tokens near slots, after
                first = shape[0]  # `first` rows of the batch's activations
                rel = n * w + (torch.arange(s, device=dev)[:, None] * wide + torch.arange(w, device=dev)[None, :])
                made = first + torch.cat([torch.arange(n, device=dev) * w, rel.view(-1)]).view(-1, 1)
            elif name == "tokens":  # [B, inner, 1]: token index inside a batch of the inner positions
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
        buf, k, s, n, wide = self.buffer, self.n_top, self.slots, self.n_iw, self.wide
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
                self._counted.append(counted.sum())
            self.n_firings[lat].add_(torch.count_nonzero(a, dim=(0, 1)))
            mx = self.max_act[lat]
            torch.maximum(mx, a.amax((0, 1)), out=mx)
        inner_t = t - 2 * buf
        if inner_t <= 0:  # no position can be a peak
            return
        inner = a[:, buf:t - buf]
        with record_function("collect.keys"):
            # every inner token's iw key; -inf at the buffer positions (never sampled) and at zeros
            x = mix32((self._c("tokens", n_b, t) + window_offset * t) ^ self._salt[lat])
            keys = self._c("keys", n_b, t, fc)
            torch.div(log2_uniform(x), inner.square(), out=keys[:, buf:t - buf])
        with record_function("collect.top"):
            n_ctx = min(s, n_b)
            rounds = min(s, -(-inner_t // (buf + 1)))
            # the contexts with the best first peaks (a tie to the earlier window: a stable sort)
            ctx = inner.amax(1).sort(dim=0, descending=True, stable=True).indices[:n_ctx]
            live = self._c("live", n_ctx, t, fc)
            torch.gather(inner, 0, ctx[:, None, :].expand(n_ctx, inner_t, fc), out=live[:, buf:t - buf])
            # [ctx, inner, Fc, 2b+1]: the tokens within `buffer` of each (a view: zeroing one zeroes them all)
            st = live.stride()
            around = live.as_strided((n_ctx, inner_t, fc, 2 * buf + 1), (st[0], st[1], st[2], st[1]))
            at_ctx, at_lat = self._c("ar_col", n_ctx), self._c("ar_row", fc)
            val = torch.empty((rounds, n_ctx, fc), device=a.device)
            pos = torch.empty((rounds, n_ctx, fc), dtype=torch.long, device=a.device)
            for r in range(rounds):  # the greedy: the largest live token (the first on a tie), then zero around it
                torch.max(live[:, buf:buf + inner_t], dim=1, out=(val[r], pos[r]))
                if r + 1 < rounds:
                    around.index_put_((at_ctx, pos[r], at_lat), self._c("zero"))
            # row of each pick in the batch, less `buf`; composite key: value bits, then 2**32 - 1 - token
            row = pos.add(ctx, alpha=t)
            pick_key = torch.add(torch.sub(MASK32 - window_offset * t - buf, row), val.view(torch.int32), alpha=VALID)
            old_key, old_wide, old_wkey = self.top_key[:, lat], self.top_wide[:, :, lat], self.top_wkey[:, :, lat]
            new_key, src = torch.cat([old_key, pick_key.view(rounds * n_ctx, fc)]).topk(s, dim=0)
            # each new slot's wide window: rows of a stacked source (the old windows, then the batch)
            base = torch.cat([self._c("slot_rows").expand(s, fc), (row + (s * wide - buf)).view(-1, fc)])
            rows = (base.gather(0, src)[:, None, :] + self._c("ar", wide)).view(s * wide, fc)
            new_wide = torch.cat([old_wide.reshape(s * wide, fc), a.view(n_b * t, fc),
                                  self._c("zeros", 2 * buf, fc)]).gather(0, rows).view(s, wide, fc)
            new_wkey = torch.cat([old_wkey.reshape(s * wide, fc), keys.view(n_b * t, fc),
                                  self._c("neginf", 2 * buf, fc)]).gather(0, rows).view(s, wide, fc)
            # the new k-th value as float bits (then the last shadow slot's): activations are >= 0, so
            # comparing their bits as integers compares the values, with no decoding
            hi = (new_key[k - 1::s - k] if s > k else new_key[k - 1:k]) >> 32
            if s > k:  # more than `shadow` peaks tied at theta: one pushed out may hide a member
                self.tie_loss[lat].logical_or_(hi[1] >= hi[0].clamp(min=1))
            theta = hi[0]
        with record_function("collect.reservoir"):
            bk, bi = torch.where(a.view(torch.int32) < theta, keys, NEG_INF).view(n_b * t, fc).topk(n, dim=0)
            self._offer(lat, old_key, old_wide, old_wkey, theta, (bk, bi, a.view(n_b * t, fc), window_offset * t))
            self._put("top_key", lat, new_key)
            self._put("top_wide", lat, new_wide)
            self._put("top_wkey", lat, new_wkey)

    def _offer(self, lat: slice, slot_key: torch.Tensor, wide: torch.Tensor, wkey: torch.Tensor, hi: torch.Tensor,
               batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None,
               store: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Merge into the reservoir of latents ``lat`` the tokens within ``buffer`` of the slots
        (``slot_key``, their ``wide`` windows and keys ``wkey``) with activations below ``hi`` (float
        bits, int64), and the
        ``batch`` candidates (keys, rows, the batch's activations [rows, Fc], its first token).
        Returns the merged reservoir (keys, tokens, snippets); stores it unless ``store`` is False.

        Tokens near a slot below the old threshold were offered before: each is in the reservoir
        (its copies have the same key, and all but one are dropped) or was beaten by n keys that are
        still there. A key has at most three copies (the reservoir's, two slots'), so the n largest
        distinct keys lie among the 3n largest."""
        buf, n, w, wide_n = self.buffer, self.n_iw, self.width, self.wide
        s, fc = slot_key.shape
        near_act = wide[:, buf:3 * buf + 1].view(torch.int32)
        near = torch.where(near_act < hi, wkey[:, buf:3 * buf + 1], NEG_INF).view(s * w, fc)
        near_token = torch.sub(self._c("near_token"), (slot_key & MASK32)[:, None, :]).view(s * w, fc)
        key_parts, token_parts = [self.iw_key[:, lat], near], [self.iw_g[:, lat], near_token]
        # the snippet source: [the batch's activations between `buffer` zero rows,] reservoir, windows
        snip_parts = [self.iw_snip[:, :, lat].reshape(n * w, fc), wide.reshape(s * wide_n, fc)]
        first_row = 0
        row_parts: list[torch.Tensor] = []
        if batch is not None:
            bk, bi, flat, first = batch
            key_parts.append(bk)
            token_parts.append(bi + first)
            pad = self._c("zeros", buf, fc)
            snip_parts = [pad, flat, pad, *snip_parts]
            first_row = flat.shape[0] + 2 * buf
            row_parts.append(bi)  # a batch token's snippet starts `buffer` rows before it: at its own row here
        row_parts.insert(0, self._c("res_rows", first_row).expand(n + s * w, fc))
        top3, at3 = torch.cat(key_parts).topk(3 * n, dim=0)
        dup = self._c("dup", 3 * n, fc)
        torch.eq(top3[1:], top3[:-1], out=dup[1:])
        new_key, at = torch.where(dup, NEG_INF, top3).topk(n, dim=0)
        at = at3.gather(0, at)
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
        weakest = torch.where(torch.isinf(weakest), 0.0, weakest).view(torch.int32).long()
        with torch.inference_mode():
            iw_key, iw_g, iw_snip = self._offer(slice(0, self.n_latents), self.top_key, self.top_wide, self.top_wkey,
                                                weakest, None, store=False)
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
