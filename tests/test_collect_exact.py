"""The tracker against brute force: the same top peaks (ties included, in order) and the very same
importance-weighted draws, whatever the batch size, the latent chunk or the resume point.

The iw keys are a fixed function of (seed, latent, token), so the exact sample is known in advance:
"the n_iw largest keys among positions below the final weakest top peak". The brute force computes
every key of the population with ``iw_keys`` and takes the largest; nothing here is a chi-square.
"""

from __future__ import annotations

import pytest
import torch

from sae_sens.collect import PeakTracker
from sae_sens.collect.tracker import iw_keys
from tests.support.collect_reference import greedy_top_peaks


def codes(kind: str, n: int, t: int, f: int, seed: int) -> torch.Tensor:
    """Activations [windows, context, latents] of three kinds: sparse continuous values, runs of
    tokens (a latent active over stretches, which fills contexts with peaks) and a four-level grid
    (many exact ties)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "sparse":
        vals = -torch.log(torch.rand((n, t, f), generator=g))
        return torch.where(torch.rand((n, t, f), generator=g) < 0.15, vals, 0.0)
    if kind == "runs":
        on = torch.rand((n, t // 8 + 1, f), generator=g) < 0.3
        on = on.repeat_interleave(8, dim=1)[:, :t]
        return torch.where(on, torch.rand((n, t, f), generator=g) * 5, 0.0)
    if kind == "ties":
        levels = torch.randint(0, 5, (n, t, f), generator=g).float()  # 0 (off) or 1..4
        return torch.where(torch.rand((n, t, f), generator=g) < 0.3, levels, 0.0)
    raise ValueError(kind)


def counted_mask(n: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    counted = torch.rand((n, t), generator=g) > 0.1
    counted[:, 0] = False
    return counted


def brute_force(acts: torch.Tensor, counted: torch.Tensor, k: int, n_iw: int, buffer: int,
                seed: int) -> tuple[list[list[tuple[int, int, float]]], list[list[tuple[int, int, float]]]]:
    """Per latent: the reference greedy's top peaks, and the n_iw largest keys of the population."""
    a = acts.clamp(min=0) * counted[..., None]
    n, t, f = a.shape
    tokens = torch.arange(n)[:, None] * t + torch.arange(buffer, t - buffer)[None, :]
    tops, iws = [], []
    for lat in range(f):
        top = greedy_top_peaks(a[..., lat], k, buffer)
        tops.append(top)
        vals = a[:, buffer:t - buffer, lat]
        weakest = min(v for *_, v in top) if top else 0.0
        member = (vals > 0) & (vals < weakest)
        keys = iw_keys(seed, torch.full((int(member.sum()),), lat), tokens[member], vals[member])
        order = keys.argsort(descending=True)[:n_iw]
        toks = tokens[member][order]
        iws.append([(int(tok) // t, int(tok) % t, float(key)) for tok, key in zip(toks, keys[order], strict=True)])
    return tops, iws


def run(acts: torch.Tensor, counted: torch.Tensor, *, batch: int, chunk: int, k: int, n_iw: int, buffer: int,
        seed: int, resume_at: int | None = None, shadow: int = 4) -> PeakTracker:
    def fresh() -> PeakTracker:
        return PeakTracker(acts.shape[2], n_top=k, n_iw=n_iw, buffer=buffer, seed=seed, shadow=shadow)

    tracker = fresh()
    for lo in range(0, acts.shape[0], batch):
        if resume_at is not None and lo == resume_at:  # stop here and go on from the saved state
            state = tracker.state_dict()
            tracker = fresh()
            tracker.load_state_dict(state)
        for f0 in range(0, acts.shape[2], chunk):
            tracker.update(acts[lo:lo + batch, :, f0:f0 + chunk], counted[lo:lo + batch], lo, f0)
    return tracker


def as_lists(tracker: PeakTracker) -> tuple[list[list[tuple[int, int, float]]], list[list[tuple[int, int, float]]]]:
    res = tracker.result()
    f = res.n_latents
    tops = [[(int(res.top_window[r, lat]), int(res.top_position[r, lat]), float(res.top_activation[r, lat]))
             for r in range(res.top_window.shape[0]) if res.top_window[r, lat] >= 0] for lat in range(f)]
    iws = [[(int(res.iw_window[r, lat]), int(res.iw_position[r, lat]), float(res.iw_key[r, lat]))
            for r in range(res.iw_window.shape[0]) if res.iw_window[r, lat] >= 0] for lat in range(f)]
    return tops, iws


SHAPES = [  # windows, context, latents, k, n_iw, buffer
    (24, 48, 7, 4, 3, 5),
    (20, 64, 5, 12, 7, 10),
]


@pytest.mark.parametrize("kind", ["sparse", "runs", "ties"])
@pytest.mark.parametrize("shape", SHAPES, ids=["small", "default-k"])
def test_top_and_iw_equal_brute_force(kind: str, shape: tuple[int, ...]) -> None:
    n, t, f, k, n_iw, buffer = shape
    for seed in (0, 1):
        acts, counted = codes(kind, n, t, f, seed), counted_mask(n, t, seed)
        want_top, want_iw = brute_force(acts, counted, k, n_iw, buffer, seed)
        # shadow slots enough for any tie here: the exact sample on every latent, never flagged
        tracker = run(acts, counted, batch=5, chunk=f, k=k, n_iw=n_iw, buffer=buffer, seed=seed, shadow=64)
        got_top, got_iw = as_lists(tracker)
        assert got_top == want_top
        assert got_iw == want_iw
        assert not tracker.result().iw_tie_loss.any()


@pytest.mark.parametrize("kind", ["sparse", "ties"])
def test_default_shadow_is_exact_or_flags_the_latent(kind: str) -> None:
    n, t, f, k, n_iw, buffer = SHAPES[0]
    acts, counted = codes(kind, n, t, f, 3), counted_mask(n, t, 3)
    want_top, want_iw = brute_force(acts, counted, k, n_iw, buffer, 3)
    tracker = run(acts, counted, batch=4, chunk=f, k=k, n_iw=n_iw, buffer=buffer, seed=3)
    got_top, got_iw = as_lists(tracker)
    flagged = tracker.result().iw_tie_loss
    assert got_top == want_top  # top peaks never depend on the shadow slots
    for lat in range(f):
        if not flagged[lat]:
            assert got_iw[lat] == want_iw[lat], lat
    if kind == "sparse":  # continuous values never tie
        assert not flagged.any()


@pytest.mark.parametrize("kind", ["sparse", "runs", "ties"])
def test_batch_size_chunk_and_resume_point_change_nothing(kind: str) -> None:
    n, t, f, k, n_iw, buffer = SHAPES[1]
    acts, counted = codes(kind, n, t, f, 5), counted_mask(n, t, 5)
    common = dict(k=k, n_iw=n_iw, buffer=buffer, seed=5)
    ref = run(acts, counted, batch=n, chunk=f, **common).result()  # the whole corpus in one batch
    for batch, chunk, resume_at in ((1, f, None), (3, 2, None), (8, 1, 8), (6, f, 12), (20, 3, None)):
        got = run(acts, counted, batch=batch, chunk=chunk, resume_at=resume_at, **common).result()
        for name in ("n_firings", "max_activation", "top_window", "top_position", "top_activation", "top_snippet",
                     "iw_window", "iw_position", "iw_key", "iw_activation", "iw_snippet", "iw_tie_loss"):
            assert torch.equal(torch.as_tensor(getattr(got, name)).nan_to_num(-7.0),
                               torch.as_tensor(getattr(ref, name)).nan_to_num(-7.0)), (name, batch, chunk, resume_at)
        assert got.counted_tokens == ref.counted_tokens == int(counted.sum())


def test_snippets_are_the_activations_around_each_peak() -> None:
    n, t, f, k, n_iw, buffer = SHAPES[0]
    acts, counted = codes("sparse", n, t, f, 9), counted_mask(n, t, 9)
    a = acts * counted[..., None]
    res = run(acts, counted, batch=7, chunk=3, k=k, n_iw=n_iw, buffer=buffer, seed=9).result()
    for pool in ("top", "iw"):
        win, pos, snip = (getattr(res, f"{pool}_{x}") for x in ("window", "position", "snippet"))
        for r, lat in zip(*(win >= 0).nonzero(), strict=True):
            w, p = int(win[r, lat]), int(pos[r, lat])
            assert torch.equal(torch.as_tensor(snip[r, lat]), a[w, p - buffer:p + buffer + 1, lat]), (pool, r, lat)


def test_iw_keys_differ_between_latents_and_seeds() -> None:
    tokens = torch.arange(1000)
    vals = torch.ones(1000)
    k0 = iw_keys(0, torch.zeros(1000, dtype=torch.long), tokens, vals)
    k1 = iw_keys(0, torch.ones(1000, dtype=torch.long), tokens, vals)
    k2 = iw_keys(1, torch.zeros(1000, dtype=torch.long), tokens, vals)
    assert k0.unique().numel() == 1000  # one token, one uniform: no collision inside a latent
    assert (k0 != k1).float().mean() > 0.99 and (k0 != k2).float().mean() > 0.99
    # the uniforms behind the keys: log2(u) = key * value^2, u evenly spread over (0, 1)
    u = torch.exp2(iw_keys(0, torch.zeros(100_000, dtype=torch.long), torch.arange(100_000), torch.ones(100_000)))
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert ((counts - 10_000).abs() < 500).all(), counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_result_with_no_sync() -> None:
    n, t, f, k, n_iw, buffer = SHAPES[1]
    acts, counted = codes("runs", n, t, f, 2), counted_mask(n, t, 2)
    cpu = run(acts, counted, batch=4, chunk=f, k=k, n_iw=n_iw, buffer=buffer, seed=2).result()
    tracker = PeakTracker(f, n_top=k, n_iw=n_iw, buffer=buffer, seed=2, device="cuda")
    dev_acts, dev_counted = acts.cuda(), counted.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for lo in range(0, n, 4):
            tracker.update(dev_acts[lo:lo + 4], dev_counted[lo:lo + 4], lo, 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gpu = tracker.result()
    for name in ("n_firings", "top_window", "top_position", "top_activation", "iw_window", "iw_position", "iw_key"):
        assert torch.equal(torch.as_tensor(getattr(gpu, name)).nan_to_num(-7.0),
                           torch.as_tensor(getattr(cpu, name)).nan_to_num(-7.0)), name
