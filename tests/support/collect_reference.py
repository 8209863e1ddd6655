"""The two-pass collection the original tool does, kept as a baseline for tests and benchmarks.

Pass 1 counts firings of every latent; pass 2 runs the model again and holds the selected latents'
activations densely over the whole corpus ([windows, context, selected]), then picks top windows
with a global greedy and importance-weighted samples with ``torch.multinomial``, as SAEBench's
autointerp does. Memory grows with the corpus; ``sae_sens.collect`` does the same in one pass.

By default pass 2 computes only the selected latents into a float32 store (the exact baseline the
tests compare against). ``saebench=True, dense_dtype=torch.bfloat16`` runs SAEBench's own operations,
as the original tool calls them: pass 1 is ``get_feature_activation_sparsity`` (firing indicators cast
to float32, masked and summed; no maximum is kept) and pass 2 is ``collect_sae_activations``: every
latent is encoded and only then indexed, each batch is masked, cast and kept in a list, and the list is
concatenated at the end, so the store briefly exists twice, as it does there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sae_sens.collect import CollectConfig, window_batch
from sae_sens.corpus import Windows
from sae_sens.model import HookedLM
from sae_sens.sae import Sae

Peak = tuple[int, int, float]  # (window, position, activation)


def greedy_top_peaks(acts: torch.Tensor, k: int, buffer: int) -> list[Peak]:
    """The ``k`` largest positive peaks of ``acts`` [windows, context], skipping the first and last
    ``buffer`` positions, no two in the same window within ``buffer`` of each other (descending greedy)."""
    n, t = acts.shape
    inner = acts[:, buffer:t - buffer].flatten()
    order = inner.argsort(descending=True, stable=True)
    width = t - 2 * buffer
    taken: set[tuple[int, int]] = set()
    out: list[Peak] = []
    for flat, v in zip(order.tolist(), inner[order].tolist(), strict=True):
        if v <= 0 or len(out) == k:
            break
        w, p = divmod(flat, width)
        p += buffer
        if (w, p) in taken:
            continue
        out.append((w, p, v))
        taken.update((w, p + d) for d in range(-buffer, buffer + 1))
    return out


def iw_sample(acts: torch.Tensor, threshold: float, k: int, buffer: int, generator: torch.Generator) -> list[Peak]:
    """``k`` positions drawn without replacement, p ~ act^2, among non-buffer positions with
    0 < act < ``threshold`` (SAEBench's ``get_iw_sample_indices`` on thresholded activations)."""
    n, t = acts.shape
    inner = acts[:, buffer:t - buffer].float()
    w = torch.where((inner > 0) & (inner < threshold), inner.pow(2), 0.0).flatten()
    n_pos = int((w > 0).sum())
    if n_pos == 0:
        return []
    idx = torch.multinomial(w / w.sum(), min(k, n_pos), replacement=False, generator=generator)
    width = inner.shape[1]
    return [(i // width, i % width + buffer, float(inner.flatten()[i])) for i in idx.tolist()]


@dataclass
class ReferenceResult:
    n_firings: torch.Tensor  # [F]
    max_activation: torch.Tensor  # [F]
    counted_tokens: int
    top: dict[int, list[Peak]]
    iw: dict[int, list[Peak]]
    acts: torch.Tensor  # [windows, context, len(latents)]: the dense store of pass 2, in its dtype


def reference_collect(
    lm: HookedLM,
    sae: Sae,
    windows: Windows,
    latents: Sequence[int] | Callable[[torch.Tensor], Sequence[int]],
    cfg: CollectConfig,
    *,
    batch_size: int = 32,
    saebench: bool = False,
    dense_dtype: torch.dtype = torch.float32,
) -> ReferenceResult:
    """Two passes: firing statistics of every latent, then dense activations of ``latents``.

    ``latents`` may be a function of pass 1's firing counts ([F]), as the original picks alive latents
    between the passes. ``saebench``: SAEBench's operations in both passes (see the module docstring);
    ``max_activation`` is then NaN, since SAEBench's pass 1 does not compute it. Otherwise pass 1 also
    keeps each latent's maximum and pass 2 encodes only ``latents``, into a store allocated once.
    ``dense_dtype``: the store's dtype (SAEBench keeps bfloat16); peaks and samples are computed in
    float32 from it either way.
    """
    f = sae.d_sae
    n_firings = torch.zeros(f, dtype=torch.long)
    max_act = torch.full((f,), torch.nan) if saebench else torch.zeros(f)  # SAEBench keeps no maximum
    counted_tokens = 0
    for lo in range(0, len(windows), batch_size):
        ids, mask = window_batch(lm, windows, slice(lo, lo + batch_size))
        h = lm.hidden(ids, mask)
        counted = lm.count_mask(ids, mask).to(h.device)
        if saebench:
            fired = (sae.encode(h) > 0).to(torch.float32) * counted[..., None]
            n_firings += fired.sum((0, 1)).long().cpu()
        else:
            acts = sae.encode(h).float() * counted[..., None]
            n_firings += (acts > 0).sum((0, 1)).cpu()
            max_act = torch.maximum(max_act, acts.amax((0, 1)).cpu())
        counted_tokens += int(counted.sum())
    if callable(latents):
        latents = list(latents(n_firings))
    sel = torch.as_tensor(list(latents), dtype=torch.long, device=sae.device)
    parts: list[torch.Tensor] = []
    shape = (len(windows), windows.context_size, len(latents))
    dense = None if saebench else torch.zeros(shape, dtype=dense_dtype)
    for lo in range(0, len(windows), batch_size):
        ids, mask = window_batch(lm, windows, slice(lo, lo + batch_size))
        h = lm.hidden(ids, mask)
        counted = lm.count_mask(ids, mask).to(h.device)
        if dense is None:
            parts.append((sae.encode(h)[..., sel] * counted[..., None]).to(dense_dtype).cpu())
        else:
            acts = sae.encode_latents(h, sel).float() * counted[..., None]
            dense[lo:lo + ids.shape[0]] = acts.to(dense_dtype).cpu()
    if dense is None:
        dense = torch.cat(parts, dim=0) if parts else torch.zeros(shape, dtype=dense_dtype)
        del parts
    gen = torch.Generator().manual_seed(cfg.seed)
    top: dict[int, list[Peak]] = {}
    iw: dict[int, list[Peak]] = {}
    for j, latent in enumerate(latents):
        a = dense[..., j].float()
        top[latent] = greedy_top_peaks(a, cfg.n_top_candidates, cfg.buffer)
        threshold = min(v for _, _, v in top[latent]) if top[latent] else 0.0
        iw[latent] = iw_sample(a, threshold, cfg.n_iw_candidates, cfg.buffer, gen)
    return ReferenceResult(n_firings, max_act, counted_tokens, top, iw, dense)
