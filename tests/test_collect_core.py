"""The streaming core (``PeakTracker``) on raw activation tensors whose answers the test knows."""

from __future__ import annotations

import pytest
import torch

from sae_sens.collect import PeakTracker
from tests.support.collect_reference import iw_sample

CHI2_999 = {4: 18.467, 5: 20.515, 6: 22.458}  # chi-square 0.999 quantiles by degrees of freedom


def brute_force_top(col: torch.Tensor, k: int, buffer: int) -> list[tuple[int, int, float]]:
    """All positive non-buffer positions sorted by value; greedily drop any within `buffer` of a pick."""
    n, t = col.shape
    cells = sorted(((float(col[w, p]), w, p) for w in range(n) for p in range(buffer, t - buffer)
                    if col[w, p] > 0), reverse=True)
    picks: list[tuple[int, int, float]] = []
    for v, w, p in cells:
        if all(not (w == w2 and abs(p - p2) <= buffer) for w2, p2, _ in picks):
            picks.append((w, p, v))
        if len(picks) == k:
            break
    return picks


def feed(tracker: PeakTracker, acts: torch.Tensor, counted: torch.Tensor, batch: int, chunk: int) -> None:
    for lo in range(0, acts.shape[0], batch):
        for f0 in range(0, acts.shape[2], chunk):
            tracker.update(acts[lo:lo + batch, :, f0:f0 + chunk], counted[lo:lo + batch], lo, f0)


def sparse_acts(n: int, t: int, f: int, seed: int, density: float = 0.15) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vals = torch.rand((n, t, f), generator=g) * 10
    return torch.where(torch.rand((n, t, f), generator=g) < density, vals, 0.0)


def test_top_peaks_are_the_k_largest_non_overlapping_peaks() -> None:
    acts = sparse_acts(23, 48, 9, seed=1)
    counted = torch.ones(23, 48, dtype=torch.bool)
    counted[:, 0] = False
    tracker = PeakTracker(9, n_top=12, n_iw=7, buffer=10, seed=0)
    feed(tracker, acts, counted, batch=5, chunk=4)
    res = tracker.result()
    for f in range(9):
        expected = brute_force_top(acts[..., f] * counted, 12, 10)
        got = [(int(res.top_window[r, f]), int(res.top_position[r, f]), float(res.top_activation[r, f]))
               for r in range(12) if res.top_window[r, f] >= 0]
        assert [(w, p) for w, p, _ in got] == [(w, p) for w, p, _ in expected]
        assert [round(v, 5) for *_, v in got] == [round(v, 5) for *_, v in expected]
        for _w, p, _ in got:  # never a buffer position
            assert 10 <= p < 48 - 10
    assert res.n_firings.tolist() == ((acts * counted[..., None]) > 0).sum((0, 1)).tolist()
    assert torch.allclose(torch.as_tensor(res.max_activation).float(), (acts * counted[..., None]).amax((0, 1)))
    assert res.counted_tokens == int(counted.sum())


def test_latents_with_few_peaks_keep_what_they_have() -> None:
    acts = torch.zeros(3, 40, 2)
    acts[1, 20, 0] = 5.0
    acts[1, 22, 0] = 4.0  # within the buffer of the first peak: not a second top peak
    acts[2, 3, 1] = 7.0  # inside the start buffer: never a peak
    tracker = PeakTracker(2, n_top=12, n_iw=7, buffer=10)
    feed(tracker, acts, torch.ones(3, 40, dtype=torch.bool), batch=2, chunk=2)
    res = tracker.result()
    assert (res.top_window[:, 0] >= 0).sum() == 1 and res.top_position[0, 0] == 20
    assert (res.top_window[:, 1] >= 0).sum() == 0 and res.n_firings[1] == 1 and res.max_activation[1] == 7.0
    # 4.0 is below the weakest (only) top peak: the one importance-weighted candidate
    assert (res.iw_window[:, 0] >= 0).sum() == 1 and res.iw_position[0, 0] == 22


def iw_population() -> tuple[torch.Tensor, dict[tuple[int, int], float]]:
    """Two contexts, top peaks 10.0 and 9.0 (n_top=2); the rest is the importance-weighted population."""
    acts = torch.zeros(2, 40)
    acts[0, 15], acts[1, 20] = 10.0, 9.0
    acts[0, 18] = 9.5  # above the weakest top peak: never sampled
    acts[0, 5] = 8.0  # in the start buffer: never sampled
    pop = {(0, 12): 1.0, (0, 25): 2.0, (0, 29): 3.0, (1, 10): 4.0, (1, 14): 5.0, (1, 28): 6.0}
    for (w, p), v in pop.items():
        acts[w, p] = v
    return acts, pop


def test_iw_samples_follow_squared_activation_and_exclude_the_top_set() -> None:
    acts, pop = iw_population()
    n_copies = 20000  # every latent sees the same activations and draws independently
    tracker = PeakTracker(n_copies, n_top=2, n_iw=3, buffer=10, seed=123)
    tracker.update(acts[..., None].expand(2, 40, n_copies), torch.ones(2, 40, dtype=torch.bool), 0)
    res = tracker.result()
    assert set(zip(res.top_window[:, 0].tolist(), res.top_position[:, 0].tolist(), strict=True)) == {(0, 15), (1, 20)}
    keys = list(pop)
    first = {k: 0 for k in keys}
    for f in range(n_copies):
        drawn = [(int(res.iw_window[r, f]), int(res.iw_position[r, f])) for r in range(3)]
        assert all(d in pop for d in drawn), drawn  # never a top peak, a buffer position or >= 9.0
        assert len(set(drawn)) == 3
        first[drawn[0]] += 1
    w2 = torch.tensor([pop[k] ** 2 for k in keys])
    expected = w2 / w2.sum() * n_copies
    observed = torch.tensor([first[k] for k in keys], dtype=torch.float)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_999[len(keys) - 1], (observed, expected)


@pytest.mark.slow  # thousands of draws for the frequencies
def test_iw_inclusion_frequencies_match_multinomial_without_replacement() -> None:
    acts, pop = iw_population()
    n_copies = 20000
    tracker = PeakTracker(n_copies, n_top=2, n_iw=3, buffer=10, seed=7)
    tracker.update(acts[..., None].expand(2, 40, n_copies), torch.ones(2, 40, dtype=torch.bool), 0)
    res = tracker.result()
    keys = list(pop)
    ours = {k: 0 for k in keys}
    for f in range(n_copies):
        for r in range(3):
            ours[(int(res.iw_window[r, f]), int(res.iw_position[r, f]))] += 1
    theirs = {k: 0 for k in keys}
    g = torch.Generator().manual_seed(11)
    for _ in range(n_copies):
        for w, p, _v in iw_sample(acts, 9.0, 3, 10, g):
            theirs[(w, p)] += 1
    a = torch.tensor([ours[k] for k in keys], dtype=torch.float)
    b = torch.tensor([theirs[k] for k in keys], dtype=torch.float)
    chi2 = float(((a - b) ** 2 / (a + b)).sum())  # two-sample chi-square, equal totals
    assert chi2 < CHI2_999[len(keys) - 1], (a, b)


def test_state_round_trip_resumes_identically() -> None:
    acts = sparse_acts(12, 40, 5, seed=3)
    counted = torch.ones(12, 40, dtype=torch.bool)
    whole = PeakTracker(5, n_top=4, n_iw=3, buffer=5, seed=9)
    feed(whole, acts, counted, batch=4, chunk=5)
    first = PeakTracker(5, n_top=4, n_iw=3, buffer=5, seed=9)
    feed(first, acts[:8], counted[:8], batch=4, chunk=5)
    second = PeakTracker(5, n_top=4, n_iw=3, buffer=5, seed=9)
    second.load_state_dict(first.state_dict())
    for lo in range(8, 12, 4):
        second.update(acts[lo:lo + 4], counted[lo:lo + 4], lo, 0)
    a, b = whole.result(), second.result()
    for name in ("top_window", "top_position", "iw_window", "iw_position", "n_firings"):
        assert (getattr(a, name) == getattr(b, name)).all(), name


def test_token_strings_concatenate_to_the_text_and_marks_wrap_runs() -> None:
    from sae_sens.collect import mark_text, token_strings
    from tests.support.testing import build_tokenizer

    tok = build_tokenizer(["plain words only here"] * 5)
    text = "naïve café 日本語 done"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_strings(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tok.decode(ids) == text
    assert mark_text(["a", "b", "c", "d", "e"], [0.0, 2.0, 3.0, 0.0, 5.0], 1.0) == "a{{bc}}d{{e}}"
    assert mark_text(["x", "y"], [0.5, 0.5], 1.0) == "xy"


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_token_strings_many_equals_decoding_each_prefix(which: str) -> None:
    """Example tokens decode many prefixes at once (Rust ``decode_batch`` when the tokenizer's Python
    wrapper adds nothing): same strings as decoding every prefix through ``batch_decode``, across
    chunk boundaries, multi-byte characters split over tokens and special tokens."""
    from sae_sens.collect import _split_prefixes, token_strings_many
    from tests.support.testing import build_tokenizer

    if which == "tiny":
        tok = build_tokenizer(["plain words only here"] * 5)
    else:
        from transformers import AutoTokenizer

        from sae_sens import assets

        tok = AutoTokenizer.from_pretrained(assets.resolve_model("demo:smollm2"))
    text = "naïve café 日本語 done. Ünïcödé → ✓ emoji 🙂 and tabs\tnew\nlines " * 3
    ids = tok(text, add_special_tokens=False)["input_ids"]
    special = tok.convert_tokens_to_ids(tok.eos_token)
    seqs = [ids[i:i + 21] for i in range(0, len(ids) - 21, 3)]
    seqs[4] = [special, *seqs[4][1:]]
    assert len(seqs) > 15
    for clean_up in (False, True):
        tok.clean_up_tokenization_spaces = clean_up
        expected = [_split_prefixes(tok, s, tok.batch_decode([s[:i + 1] for i in range(len(s))])) for s in seqs]
        got = token_strings_many(tok, seqs, chunk=7)
        assert got == expected
        assert all("".join(g) == tok.decode(s) for g, s in zip(got, seqs, strict=True))
