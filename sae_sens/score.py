"""The score stage: run generated samples and original examples back through model + SAE.

A text is *active* for a feature when the feature's maximum activation over the text's counted
tokens (``HookedLM.count_mask``: never position 0, BOS, EOS or pad) is above ``threshold``
(1e-6 by default, as in the original tool). A feature's sensitivity is the share of its
non-empty generated samples that are active.

Original examples are scored two ways, both kept in ``scores`` (column ``variant``):

* ``window``: the exact token ids of the collected window, with a fresh BOS as position 0. No
  re-tokenisation, so every token the collector saw is scored as the same token; only the context
  to the left of the window (up to the start of its corpus context) is lost.
* ``text``: what the original tool does. The marked text has its ``{{ }}`` marks stripped and
  newlines written as ``↵``, and is re-tokenised after a fresh BOS. Besides losing the left
  context, this can tokenise differently: the window's first token may have been a word piece
  whose merge depended on the text before it, ``↵`` is not the newline token the model saw, and
  decoding then re-encoding is not an identity for every byte-level BPE. A feature can therefore
  look less (or more) sensitive on its own examples than it is.

``feature_stats.original_sensitivity`` uses ``text`` (the original tool's number) and
``original_sensitivity_window`` uses ``window``.

Speed: every distinct token sequence is run once whatever the number of (feature, sample) rows
that share it; sequences are sorted by length and batched; the model stops at the hook layer; and
the SAE computes only the latents needed by the sequences of each batch (``Sae.encode_latents``,
chunked over tokens so TopK-style SAEs, which need every pre-activation, stay in bounded memory).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .errors import ConfigError, MissingTableError
from .model import HookedLM
from .progress import NULL_PROGRESS, ProgressSink
from .sae import Sae
from .schemas import make_table
from .stages import (
    ModelOptions,
    StageOutcome,
    model_inputs,
    open_model,
    open_sae,
    record_sae_info,
    run_stage,
    table_inputs,
)
from .store import Store

_MARK_RE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


@dataclass(frozen=True)
class ScoreConfig:
    threshold: float = 1e-6
    max_length: int = 128  # tokens per scored text, BOS included; longer texts are truncated
    generator: str | None = None  # score only this generator's samples (default: all)
    chunk_tokens: int = 4096  # tokens per SAE encode call: bounds memory, never changes results

    def stage_config(self) -> dict[str, Any]:
        """What the results depend on (recorded in the manifest; chunking is not part of it)."""
        return {"threshold": self.threshold, "max_length": self.max_length, "generator": self.generator}

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length} leaves no token to score", "use at least 2 (BOS + 1)")
        if self.chunk_tokens < 1:
            raise ConfigError(f"chunk_tokens must be positive, got {self.chunk_tokens}")


@dataclass(frozen=True)
class Trace:
    """One feature's activations on one token sequence (positions after position 0)."""

    max_activation: float | None  # None when no position counts
    max_position: int | None  # index into ``activations``
    activations: np.ndarray  # float32, non-counted positions are 0


def original_text(marked: str) -> str:
    """An example's text as the original tool re-scores it: marks stripped, newlines as ``↵``."""
    return _MARK_RE.sub(r"\1", marked).replace("\n", "↵")


def window_ids(token_ids: Sequence[int], bos_id: int | None, max_length: int) -> tuple[list[int], bool]:
    """A collected window as model input: BOS + its exact tokens, truncated at ``max_length``."""
    ids = list(token_ids)
    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids = [bos_id, *ids]
    return ids[:max_length], len(ids) > max_length


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
) -> list[dict[int, Trace]]:
    """For each sequence (already starting with BOS), the traces of the latents it needs.

    Sequences run longest first in batches of ``batch_size`` (little padding, and an out-of-memory
    batch shows up at once); a batch's SAE call computes the union of its sequences' latents on
    its counted tokens only.
    """
    out: list[dict[int, Trace]] = [{} for _ in sequences]
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    progress.start(task, total=len(order))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        union = sorted({int(f) for i in batch for f in latents[i]})
        if union:
            ids, mask = lm.pad([sequences[i] for i in batch])
            keep = lm.count_mask(ids, mask)
            hidden = lm.hidden(ids, mask)
            keep_dev = keep.to(hidden.device)
            lat = torch.as_tensor(union, dtype=torch.long, device=sae.device)
            acts = sae.encode_latents(hidden[keep_dev], lat, chunk_tokens).float()
            dense = torch.zeros((*keep.shape, len(union)), dtype=torch.float32, device=acts.device)
            dense[keep_dev.to(acts.device)] = acts
            dense_np = dense.cpu().numpy()
            keep_np = keep.numpy()
            col = {f: c for c, f in enumerate(union)}
            for row, i in enumerate(batch):
                n = len(sequences[i])
                counted = keep_np[row, 1:n]
                for f in latents[i]:
                    a = np.ascontiguousarray(dense_np[row, 1:n, col[int(f)]])
                    if counted.any():
                        masked = np.where(counted, a, -np.inf)
                        pos = int(masked.argmax())
                        out[i][int(f)] = Trace(float(masked[pos]), pos, a)
                    else:
                        out[i][int(f)] = Trace(None, None, a)
        progress.advance(task, len(batch), f"{len(union)} latents")
    progress.finish(task)
    return out


@dataclass
class _Row:
    feature_index: int
    source: str
    variant: str
    generator: str
    sample_index: int
    kind: str | None
    text: str
    seq: int  # index into the distinct sequences, -1 when empty
    n_tokens: int
    truncated: bool


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def _generators(generations: pa.Table, only: str | None) -> list[str]:
    present = sorted(set(_column(generations, "generator")))
    if not present:
        raise MissingTableError("the generations table is empty", "run `sae-sens generate` for this SAE first")
    if only is None:
        return present
    if only not in present:
        raise ConfigError(f"no generations from generator {only!r}", f"generators in this run: {', '.join(present)}")
    return [only]


def score_tables(
    lm: HookedLM,
    sae: Sae,
    examples: pa.Table,
    generations: pa.Table,
    features: pa.Table,
    cfg: ScoreConfig,
    *,
    batch_size: int = 32,
    progress: ProgressSink = NULL_PROGRESS,
) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """Tables in, ``{"scores", "feature_stats"}`` out, plus counts for the stage record."""
    cfg.validate()
    generators = _generators(generations, cfg.generator)
    gens = generations.filter(pc.is_in(generations["generator"], pa.array(generators, pa.string())))

    seq_index: dict[tuple[int, ...], int] = {}
    sequences: list[tuple[int, ...]] = []
    needs: list[set[int]] = []
    rows: list[_Row] = []

    def add(feature: int, ids: list[int], truncated: bool, text: str, **kw: Any) -> None:
        # empty = nothing to read: blank text, or no token after position 0
        empty = not text.strip() or len(ids) < 2
        seq = -1
        if not empty:
            key = tuple(ids)
            seq = seq_index.setdefault(key, len(sequences))
            if seq == len(sequences):
                sequences.append(key)
                needs.append(set())
            needs[seq].add(feature)
        rows.append(_Row(feature, text=text, seq=seq, n_tokens=max(len(ids) - 1, 0), truncated=truncated, **kw))

    # re-tokenise each distinct text once
    gen_texts = [t or "" for t in _column(gens, "text")]
    texts = gen_texts + [original_text(t or "") for t in _column(examples, "text")]
    distinct = sorted(set(texts))
    encoded = dict(zip(distinct, lm.encode_texts(distinct, cfg.max_length), strict=True)) if distinct else {}

    for f, g, s, t in zip(*(_column(gens, c) for c in ("feature_index", "generator", "sample_index")), gen_texts, strict=True):
        ids, trunc = encoded[t]
        add(int(f), ids, trunc, t, source="generated", variant="generated", generator=g, sample_index=int(s), kind=None)
    cols = ("feature_index", "example_index", "kind", "text", "token_ids")
    for f, e, k, t, tok in zip(*(_column(examples, c) for c in cols), strict=True):
        common = dict(source="original", generator="", sample_index=int(e), kind=k)
        ids, trunc = window_ids(tok or [], lm.bos_id, cfg.max_length)
        add(int(f), ids, trunc, t or "", variant="window", **common)  # type: ignore[arg-type]
        plain = original_text(t or "")
        ids, trunc = encoded[plain]
        add(int(f), ids, trunc, plain, variant="text", **common)  # type: ignore[arg-type]

    traces = score_sequences(
        lm, sae, sequences, [sorted(n) for n in needs],
        batch_size=batch_size, chunk_tokens=cfg.chunk_tokens, progress=progress, task=f"score {sae.spec.name}",
    )
    top = dict(zip(_column(features, "feature_index"), _column(features, "top_activation"), strict=True))
    scores = _scores_table(rows, traces, top, cfg.threshold)
    stats = feature_stats(scores, generators, top, cfg.threshold)
    counts = {
        "n_rows": len(rows),
        "n_sequences": len(sequences),
        "n_truncated": sum(r.truncated for r in rows),
        "n_empty": sum(r.seq < 0 for r in rows),
    }
    return {"scores": scores, "feature_stats": stats}, counts


def _scores_table(rows: list[_Row], traces: list[dict[int, Trace]], top: dict[int, Any], threshold: float) -> pa.Table:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "feature_index", "source", "variant", "generator", "sample_index", "kind", "text", "n_tokens", "truncated",
        "empty", "max_activation", "max_position", "active", "frac_of_top", "activations")}
    for r in rows:
        tr = traces[r.seq].get(r.feature_index) if r.seq >= 0 else None
        m = tr.max_activation if tr is not None else None
        t = top.get(r.feature_index)
        for k in ("feature_index", "source", "variant", "generator", "sample_index", "kind", "text", "n_tokens",
                  "truncated"):
            cols[k].append(getattr(r, k))
        cols["empty"].append(m is None)
        cols["max_activation"].append(m)
        cols["max_position"].append(tr.max_position if tr is not None else None)
        cols["active"].append(None if m is None else m > threshold)
        cols["frac_of_top"].append(m / t if m is not None and t is not None and t > 0 else None)
        cols["activations"].append(tr.activations if tr is not None else None)
    return make_table("scores", cols)


def feature_stats(scores: pa.Table, generators: Sequence[str], top: dict[int, Any], threshold: float) -> pa.Table:
    """Per feature × generator: sensitivities (empty texts are left out of every denominator),
    sample counts and the generated samples' mean and median max activation."""
    cols = {c: _column(scores, c) for c in ("feature_index", "source", "variant", "generator", "active",
                                            "max_activation", "truncated")}
    originals: dict[tuple[int, str], list[bool]] = {}
    generated: dict[tuple[int, str], list[tuple[bool, float]]] = {}
    empty: dict[tuple[int, str], int] = {}
    truncated: dict[tuple[int, str], int] = {}
    for f, src, var, g, act, m, tr in zip(*cols.values(), strict=True):
        if src == "original":
            if act is not None:
                originals.setdefault((f, var), []).append(act)
            continue
        truncated[(f, g)] = truncated.get((f, g), 0) + int(tr)
        if act is None:
            empty[(f, g)] = empty.get((f, g), 0) + 1
        else:
            generated.setdefault((f, g), []).append((act, m))

    def share(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    feats = sorted({f for f, _ in originals} | {f for f, _ in generated} | {f for f, _ in empty})
    out: list[dict[str, Any]] = []
    for g in generators:
        for f in feats:
            gen = generated.get((f, g), [])
            maxes = np.array([m for _, m in gen], dtype=np.float64)
            out.append({
                "feature_index": f,
                "generator": g,
                "generated_sensitivity": share([a for a, _ in gen]),
                "original_sensitivity": share(originals.get((f, "text"), [])),
                "original_sensitivity_window": share(originals.get((f, "window"), [])),
                "n_generated": len(gen),
                "n_original": len(originals.get((f, "text"), [])),
                "n_empty": empty.get((f, g), 0),
                "n_truncated": truncated.get((f, g), 0),
                "mean_max_activation": float(maxes.mean()) if len(maxes) else None,
                "median_max_activation": float(np.median(maxes)) if len(maxes) else None,
                "top_activation": top.get(f),
                "threshold": threshold,
            })
    return make_table("feature_stats", out)


def run_score(
    store: Store,
    run: str,
    sae_name: str,
    cfg: ScoreConfig,
    opts: ModelOptions,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> StageOutcome:
    """Score one SAE's generated samples and original examples; skipped when nothing changed."""
    cfg.validate()
    # upstream tables first: a missing one is a clear error before any model is loaded
    tables = table_inputs(store, run, sae_name, ["examples", "generations", "features"])
    sae = open_sae(sae_name, opts)
    lm = open_model(sae, opts)
    record_sae_info(store, run, sae_name, sae)
    counts: dict[str, int] = {}

    def compute() -> dict[str, pa.Table]:
        result, c = score_tables(
            lm, sae,
            store.read_table(run, sae_name, "examples"),
            store.read_table(run, sae_name, "generations"),
            store.read_table(run, sae_name, "features"),
            cfg, batch_size=opts.batch_size, progress=progress,
        )
        counts.update(c)
        progress.log(
            f"score {sae_name}: {c['n_rows']} rows from {c['n_sequences']} distinct texts; "
            f"{c['n_truncated']} truncated at {cfg.max_length} tokens, {c['n_empty']} empty"
        )
        return result

    return run_stage(
        store, run, sae_name, "score",
        config=cfg.stage_config(),
        inputs={**tables, **model_inputs(sae, lm)},
        compute=compute,
        force=force,
        extra=lambda: dict(counts),
        progress=progress,
    )


def summarize(scores: pa.Table, stats: pa.Table) -> list[dict[str, Any]]:
    """Per generator: features, mean sensitivities over features, and truncated/empty sample counts."""
    out = []
    gens = _column(stats, "generator")
    for g in sorted(set(gens)):
        sub = stats.filter(pc.equal(stats["generator"], g))
        mine = scores.filter(pc.equal(scores["generator"], g))

        means = {c: pc.mean(sub[c]).as_py() for c in
                 ("generated_sensitivity", "original_sensitivity", "original_sensitivity_window")}
        out.append({
            "generator": g,
            "features": sub.num_rows,
            **means,
            "samples": mine.num_rows,
            "truncated": int(pc.sum(mine["truncated"]).as_py() or 0),
            "empty": int(pc.sum(mine["empty"]).as_py() or 0),
        })
    return out
