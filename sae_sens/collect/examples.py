"""Selection and examples: which latents to show, and their ``examples`` rows (tokens around each
kept peak, activations, ``{{ }}``-marked text) built from the pass's candidates."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import torch

from ..corpus import Windows
from ..errors import ConfigError
from ..model import HookedLM
from ..progress import NULL_PROGRESS, ProgressSink
from ..sae import Sae
from ..schemas import make_table
from .config import CollectConfig


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
