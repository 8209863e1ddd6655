"""The score stage: run generated samples and original examples back through model + SAE.

A text is *active* for a feature when the feature's maximum activation over the text's counted
tokens (``HookedLM.count_mask``: never position 0, BOS, EOS or pad) is above ``threshold``
(1e-6 by default, as in the original tool). A feature's sensitivity is the share of its
non-empty generated samples that are active.

Original examples are scored two ways, both kept in ``scores`` (column ``variant``):

* ``window``: the exact token ids of the collected window, with a fresh BOS as position 0. No
  re-tokenisation, so every token the collector saw is scored as the same token; only the context
  to the left of the window (up to the start of its corpus context) is lost.
* ``text``: what the original tool does, byte for byte (``original_builder_text``). Its example
  builder decodes each token of the window on its own, wraps active tokens in ``{{ }}``, drops
  U+FFFD (so the pieces of a multi-byte character split across tokens vanish: ``ἀτμός`` can become
  ``τμός``), writes newlines as ``↵``; its scoring step strips the marks and re-tokenises after a
  fresh BOS. Besides losing the left context, this can tokenise differently: the window's first
  token may have been a word piece whose merge depended on the text before it, ``↵`` is not the
  newline token the model saw, and dropped characters are gone. A feature can therefore look less
  (or more) sensitive on its own examples than it is. Examples that carry no token ids (imported
  from SAEBench) have their marked text stripped instead.

Generated and imported texts have their ``{{ }}`` marks stripped before scoring, as the original
does (LLMs and texts exported from the original's tables often copy them): ``scores.text`` is the
text as scored, ``scores.marks_stripped`` says which rows had marks, and the stage logs a count.

``feature_stats.original_sensitivity`` uses ``text`` (the original tool's number) and
``original_sensitivity_window`` uses ``window``.

Speed: every distinct token sequence is run once whatever the number of (feature, sample) rows
that share it; sequences are sorted by length and batched; the model stops at the hook layer; and
the SAE computes only the latents needed by the sequences of each batch (``Sae.encode_latents``,
chunked over tokens so TopK-style SAEs, which need every pre-activation, stay in bounded memory).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from .errors import ConfigError, MissingTableError
from .hashing import hash_bytes, hash_config
from .model import HookedLM, to_device
from .progress import NULL_PROGRESS, ProgressSink, warn
from .sae import Sae
from .schemas import NEGATIVES_PREFIX, make_table, role_of
from .stages import (
    ModelOptions,
    StageOutcome,
    model_inputs,
    model_options,
    open_model,
    open_sae,
    record_sae_info,
    run_stage,
    table_inputs,
)
from .store import Store, atomic_write_json, atomic_write_parquet

DEFAULT_RELATIVE_THRESHOLDS = (0.01, 0.1, 0.5)


@dataclass(frozen=True)
class ScoreConfig:
    threshold: float = 1e-6
    max_length: int = 128  # tokens per scored text, BOS included; longer texts are truncated
    generator: str | None = None  # score only this generator's samples (default: all)
    chunk_tokens: int = 4096  # tokens per SAE encode call: bounds memory, never changes results
    # thresholds as fractions of the feature's top activation: a text counts at level r when its max
    # activation is above r * top_activation (1e-6 alone lets noise-level activations count)
    relative_thresholds: tuple[float, ...] = DEFAULT_RELATIVE_THRESHOLDS

    def stage_config(self) -> dict[str, Any]:
        """What the results depend on (recorded in the manifest; chunking is not part of it)."""
        return {"threshold": self.threshold, "max_length": self.max_length, "generator": self.generator,
                "relative_thresholds": list(self.relative_thresholds)}

    def validate(self) -> None:
        bad = [r for r in self.relative_thresholds if not 0 < r <= 1]
        if bad:
            raise ConfigError(f"relative thresholds must be fractions of the top activation in (0, 1], got {bad}",
                              "e.g. --relative-thresholds 0.01,0.1,0.5")
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


def strip_marks(text: str) -> str:
    """The original's mark stripping before scoring: every ``{{`` removed, then every ``}}``."""
    return text.replace("{{", "").replace("}}", "")


def original_text(marked: str) -> str:
    """A marked text without token ids (a SAEBench import) as the original re-scores it: marks
    stripped, newlines as ``↵``."""
    return strip_marks(marked.replace("\n", "↵"))


def original_marked_text(str_tokens: Sequence[str], activations: Sequence[float] | None, threshold: float) -> str:
    """An example as the original tool's builder writes it (``Example.to_str(mark_toks=True)``, its
    ``Sequence`` column): tokens decoded one by one, each one with activation > ``threshold``
    wrapped in its own ``{{ }}``, every U+FFFD dropped, newlines as ``↵``."""
    acts = activations if activations is not None and len(activations) == len(str_tokens) else None
    marked = "".join("{{" + tok + "}}" if acts is not None and acts[i] > threshold else tok
                     for i, tok in enumerate(str_tokens))
    return marked.replace("\ufffd", "").replace("\n", "↵")


def original_builder_text(str_tokens: Sequence[str], activations: Sequence[float] | None, threshold: float) -> str:
    """The text the original tool scores for an example, byte for byte: its builder's marked text
    (``original_marked_text``) after its scoring step's mark stripping. The marks matter only where
    tokens hold braces."""
    return strip_marks(original_marked_text(str_tokens, activations, threshold))


def decode_each(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> list[list[str]]:
    """Every token decoded on its own, as TransformerLens's ``to_str_tokens`` (which the original
    builder uses): a piece of a multi-byte character decodes to U+FFFD."""
    unique = sorted({int(t) for s in seqs for t in s})
    strs = tokenizer.batch_decode([[t] for t in unique], clean_up_tokenization_spaces=False) if unique else []
    of = dict(zip(unique, strs, strict=True))
    return [[of[int(t)] for t in s] for s in seqs]


def window_ids(token_ids: Sequence[int], bos_id: int | None, max_length: int) -> tuple[list[int], bool]:
    """A collected window as model input: BOS + its exact tokens, truncated at ``max_length``."""
    ids = list(token_ids)
    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids = [bos_id, *ids]
    return ids[:max_length], len(ids) > max_length


def _seq_key(ids: Sequence[int]) -> str:
    return hash_bytes(np.asarray(ids, dtype=np.int64).tobytes())


class Checkpoint:
    """Finished traces of an interrupted scoring run, as Parquet parts in ``folder``.

    ``key`` names everything a trace depends on besides its token ids and latent (model, SAE
    weights, hook, dtype, device); parts written under another key are discarded.
    """

    def __init__(self, folder: Path, key: str, every_s: float = 30.0) -> None:
        self.folder, self.key, self.every_s = folder, key, every_s
        self._pending: list[tuple[str, int, Trace]] = []
        self._last = time.monotonic()

    def load(self) -> dict[tuple[str, int], Trace]:
        key_file = self.folder / "key.json"
        if not key_file.exists() or json.loads(key_file.read_text()) != self.key:
            self.clear()
            atomic_write_json(key_file, self.key)
            return {}
        done = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            for r in pq.read_table(part).to_pylist():
                acts = np.asarray(r["activations"], dtype=np.float32)
                done[(r["seq"], r["latent"])] = Trace(r["max_activation"], r["max_position"], acts)
        return done

    def add(self, seq: str, latent: int, trace: Trace) -> None:
        self._pending.append((seq, latent, trace))
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            table = pa.table({
                "seq": [s for s, _, _ in self._pending],
                "latent": pa.array([f for _, f, _ in self._pending], pa.int64()),
                "max_activation": pa.array([t.max_activation for _, _, t in self._pending], pa.float64()),
                "max_position": pa.array([t.max_position for _, _, t in self._pending], pa.int32()),
                "activations": pa.array([t.activations for _, _, t in self._pending], pa.list_(pa.float32())),
            })
            n = len(list(self.folder.glob("part-*.parquet")))
            atomic_write_parquet(self.folder / f"part-{n:06d}.parquet", table)
            self._pending = []
        self._last = time.monotonic()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)


def _score_batch(
    lm: HookedLM, sae: Sae, seqs: Sequence[Sequence[int]], wanted: Sequence[Sequence[int]], chunk_tokens: int,
    encode_all: bool | None = None,
) -> list[dict[int, Trace]]:
    """One forward pass; the SAE computes the union of the wanted latents.

    On a CPU only the counted tokens are encoded (a boolean index). On a GPU (or with ``encode_all``)
    every position is encoded and the uncounted ones zeroed instead: a boolean index would make the
    host wait for the device, and the host's one read per batch is the result."""
    union = sorted({f for w in wanted for f in w})
    col = {f: c for c, f in enumerate(union)}
    ids, mask = lm.pad(seqs)
    keep = lm.count_mask(ids, mask)  # on the host
    hidden = lm.hidden(to_device(ids, lm.device), to_device(mask, lm.device))
    lat = to_device(torch.tensor(union, dtype=torch.long), sae.device)
    if encode_all is None:
        encode_all = hidden.device.type == "cuda"
    if encode_all:
        dense = sae.encode_latents(hidden, lat, chunk_tokens).float()
        dense = dense * to_device(keep, dense.device)[..., None]
    else:
        acts = sae.encode_latents(hidden[keep.to(hidden.device)], lat, chunk_tokens).float()
        dense = torch.zeros((*keep.shape, len(union)), dtype=torch.float32, device=acts.device)
        dense[keep.to(acts.device)] = acts
    dense_np, keep_np = dense.cpu().numpy(), keep.numpy()
    out: list[dict[int, Trace]] = []
    for row, (seq, fs) in enumerate(zip(seqs, wanted, strict=True)):
        counted = keep_np[row, 1 : len(seq)]
        traces = {}
        for f in fs:
            a = np.ascontiguousarray(dense_np[row, 1 : len(seq), col[f]])
            if counted.any():
                masked = np.where(counted, a, -np.inf)
                pos = int(masked.argmax())
                traces[f] = Trace(float(masked[pos]), pos, a)
            else:
                traces[f] = Trace(None, None, a)
        out.append(traces)
    return out


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
    checkpoint: Checkpoint | None = None,
) -> list[dict[int, Trace]]:
    """For each sequence (already starting with BOS), the traces of the latents it needs.

    Sequences run longest first in batches of ``batch_size`` (little padding, and an out-of-memory
    batch shows up at once). With a ``checkpoint``, traces it holds are reused and new ones saved.
    """
    keys = [_seq_key(s) for s in sequences]
    done = checkpoint.load() if checkpoint is not None else {}
    if done:
        progress.log(f"{task}: resuming from its checkpoint: {len(done):,} traces already computed")
    out = [{int(f): done[(k, int(f))] for f in fs if (k, int(f)) in done} for k, fs in zip(keys, latents, strict=True)]
    todo = [[int(f) for f in fs if int(f) not in o] for fs, o in zip(latents, out, strict=True)]
    order = sorted((i for i in range(len(sequences)) if todo[i]), key=lambda i: -len(sequences[i]))
    progress.start(task, total=len(order))
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            traces = _score_batch(lm, sae, [sequences[i] for i in batch], [todo[i] for i in batch], chunk_tokens)
            for i, tr in zip(batch, traces, strict=True):
                out[i].update(tr)
                if checkpoint is not None:
                    for f, t in tr.items():
                        checkpoint.add(keys[i], f, t)
            progress.advance(task, len(batch), f"{len({f for i in batch for f in todo[i]})} latents")
    finally:  # keep what finished, even when interrupted
        if checkpoint is not None:
            checkpoint.flush()
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
    marks_stripped: bool | None = None  # generated rows: the text had {{ }} marks


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
    checkpoint: Checkpoint | None = None,
    act_threshold_frac: float = 0.01,
) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """Tables in, ``{"scores", "feature_stats"}`` out, plus counts for the stage record.

    ``act_threshold_frac`` is collect's: it decides which tokens the original's builder marks
    (see ``original_builder_text``)."""
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

    top = dict(zip(_column(features, "feature_index"), _column(features, "top_activation"), strict=True))

    def ex_column(name: str) -> list[Any]:
        return _column(examples, name) if name in examples.column_names else [None] * examples.num_rows

    # the text variant: the original's builder over the window's tokens (its marked text when none)
    ex_ids = [list(t or []) for t in ex_column("token_ids")]
    str_toks = decode_each(lm.tokenizer, ex_ids)
    plains = [
        original_builder_text(st, a, act_threshold_frac * float(top.get(f) or 0.0)) if ids else original_text(t or "")
        for f, t, ids, st, a in zip(ex_column("feature_index"), ex_column("text"), ex_ids, str_toks,
                                    ex_column("activations"), strict=True)
    ]

    # re-tokenise each distinct text once; generated texts lose their marks first
    raw_texts = [t or "" for t in _column(gens, "text")]
    gen_texts = [strip_marks(t) for t in raw_texts]
    texts = gen_texts + plains
    distinct = sorted(set(texts))
    encoded = dict(zip(distinct, lm.encode_texts(distinct, cfg.max_length), strict=True)) if distinct else {}

    gen_cols = (_column(gens, c) for c in ("feature_index", "generator", "sample_index"))
    for f, g, s, t, raw in zip(*gen_cols, gen_texts, raw_texts, strict=True):
        ids, trunc = encoded[t]
        add(int(f), ids, trunc, t, source="generated", variant="generated", generator=g, sample_index=int(s), kind=None,
            marks_stripped=t != raw)
    cols = ("feature_index", "example_index", "kind", "text")
    for f, e, k, t, tok, plain in zip(*(ex_column(c) for c in cols), ex_ids, plains, strict=True):
        common = dict(source="original", generator="", sample_index=int(e), kind=k)
        ids, trunc = window_ids(tok, lm.bos_id, cfg.max_length)
        add(int(f), ids, trunc, t or "", variant="window", **common)  # type: ignore[arg-type]
        ids, trunc = encoded[plain]
        add(int(f), ids, trunc, plain, variant="text", **common)  # type: ignore[arg-type]

    traces = score_sequences(
        lm, sae, sequences, [sorted(n) for n in needs],
        batch_size=batch_size, chunk_tokens=cfg.chunk_tokens, progress=progress, task=f"score {sae.spec.name}",
        checkpoint=checkpoint,
    )
    from .collect import token_strings_many  # the same per-token decoding as the examples' tokens

    # the tokens after the BOS, so a report can highlight each one by its activation
    seq_tokens = token_strings_many(lm.tokenizer, [s[1:] for s in sequences])
    scores = _scores_table(rows, traces, top, cfg.threshold, seq_tokens)
    stats = feature_stats(scores, generators, top, cfg.threshold, cfg.relative_thresholds)
    counts = {
        "n_rows": len(rows),
        "n_sequences": len(sequences),
        "n_truncated": sum(r.truncated for r in rows),
        "n_empty": sum(r.seq < 0 for r in rows),
        "n_marks_stripped": sum(bool(r.marks_stripped) for r in rows),
    }
    return {"scores": scores, "feature_stats": stats}, counts


def _scores_table(rows: list[_Row], traces: list[dict[int, Trace]], top: dict[int, Any], threshold: float,
                  seq_tokens: Sequence[list[str]]) -> pa.Table:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "feature_index", "source", "variant", "generator", "sample_index", "kind", "text", "n_tokens", "truncated",
        "empty", "max_activation", "max_position", "active", "frac_of_top", "activations", "marks_stripped", "tokens")}
    for r in rows:
        tr = traces[r.seq].get(r.feature_index) if r.seq >= 0 else None
        m = tr.max_activation if tr is not None else None
        t = top.get(r.feature_index)
        for k in ("feature_index", "source", "variant", "generator", "sample_index", "kind", "text", "n_tokens",
                  "truncated", "marks_stripped"):
            cols[k].append(getattr(r, k))
        cols["empty"].append(m is None)
        cols["max_activation"].append(m)
        cols["max_position"].append(tr.max_position if tr is not None else None)
        cols["active"].append(None if m is None else m > threshold)
        cols["frac_of_top"].append(m / t if m is not None and t is not None and t > 0 else None)
        cols["activations"].append(tr.activations if tr is not None else None)
        cols["tokens"].append(seq_tokens[r.seq] if r.seq >= 0 else None)
    return make_table("scores", cols)


def relative_sensitivities(maxes: Sequence[float] | np.ndarray, top: float | None, levels: Sequence[float]) -> list[float | None]:
    """Share of ``maxes`` above ``level * top`` for each level; None without samples or a positive top."""
    if not len(maxes) or top is None or not top > 0:
        return [None] * len(levels)
    m = np.asarray(maxes, dtype=np.float64)
    return [float((m > r * top).mean()) for r in levels]


def feature_stats(scores: pa.Table, generators: Sequence[str], top: dict[int, Any], threshold: float,
                  relative: Sequence[float] = DEFAULT_RELATIVE_THRESHOLDS) -> pa.Table:
    """Per feature × generator: sensitivities (empty texts are left out of every denominator),
    sample counts, the generated samples' mean and median max activation, and sensitivities at
    thresholds relative to the feature's top activation."""
    cols = {c: _column(scores, c) for c in ("feature_index", "source", "variant", "generator", "active",
                                            "max_activation", "truncated")}
    originals: dict[tuple[int, str], list[bool]] = {}
    original_max: dict[int, list[float]] = {}  # text variant, as original_sensitivity
    generated: dict[tuple[int, str], list[tuple[bool, float]]] = {}
    empty: dict[tuple[int, str], int] = {}
    truncated: dict[tuple[int, str], int] = {}
    for f, src, var, g, act, m, tr in zip(*cols.values(), strict=True):
        if src == "original":
            if act is not None:
                originals.setdefault((f, var), []).append(act)
                if var == "text":
                    original_max.setdefault(f, []).append(m)
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
                "mean_frac_of_top": float(maxes.mean() / t) if len(maxes) and (t := top.get(f)) else None,
                "relative_thresholds": list(relative),
                "sensitivity_relative": relative_sensitivities(maxes, top.get(f), relative),
                "original_sensitivity_relative": relative_sensitivities(original_max.get(f, []), top.get(f), relative),
            })
    add_reference_stats(out, generated)
    return make_table("feature_stats", out)


DENSE_BASE_RATE = 0.5  # fires on at least half of random passages: its sensitivity cannot tell it from noise


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a positive's max activation > a negative's), ties counted 1/2 (the Mann-Whitney U / (m n))."""
    p = np.sort(np.asarray(positives, dtype=np.float64))
    n = np.sort(np.asarray(negatives, dtype=np.float64))
    if not p.size or not n.size:
        return None
    below = np.searchsorted(n, p, side="left")  # negatives strictly below each positive
    ties = np.searchsorted(n, p, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (p.size * n.size))


def add_reference_stats(rows: list[dict[str, Any]], generated: dict[tuple[int, str], list[tuple[bool, float]]]) -> None:
    """Fill each feature_stats row's role and its specificity-side evidence from the same scored texts:
    base rate (``baseline:`` passages, pooled if several), injection rate (``inject:``), specificity
    against the generator's own near-miss negatives (``negatives:<generator>``) and AUROC (positives
    against those negatives, else against the base passages)."""
    def pooled(role: str) -> dict[int, list[tuple[bool, float]]]:
        out: dict[int, list[tuple[bool, float]]] = {}
        for (f, g), xs in generated.items():
            if role_of(g) == role:
                out.setdefault(f, []).extend(xs)
        return out

    def share(xs: list[tuple[bool, float]]) -> float | None:
        return sum(a for a, _ in xs) / len(xs) if xs else None

    base, injected = pooled("base"), pooled("injection")
    for row in rows:
        f, g = row["feature_index"], row["generator"]
        role = role_of(g)
        b, i = base.get(f, []), injected.get(f, [])
        base_rate = share(b)
        row.update(role=role, base_rate=base_rate, n_base=len(b), injection_rate=share(i), n_injected=len(i),
                   dense=None if base_rate is None else base_rate >= DENSE_BASE_RATE)
        if role not in ("positive", "control"):
            continue
        gs = row["generated_sensitivity"]
        row["lift"] = gs - base_rate if gs is not None and base_rate is not None else None
        neg = generated.get((f, NEGATIVES_PREFIX + g), [])
        fired = share(neg)
        row.update(n_negative=len(neg), specificity=None if fired is None else 1.0 - fired)
        pos = [m for _, m in generated.get((f, g), [])]
        row["auroc"] = auroc(pos, [m for _, m in (neg or b)])


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
    sae = open_sae(sae_name, opts, progress)
    lm = open_model(sae, opts, progress)
    record_sae_info(store, run, sae_name, sae)
    counts: dict[str, int] = {}
    inputs = {**tables, **model_inputs(sae, lm)}
    # an interrupted run resumes from the traces it finished (Ctrl-C, crash, preemption)
    key = hash_config({**model_inputs(sae, lm), "dtype": str(lm.dtype), "device": lm.device.type})
    checkpoint = Checkpoint(store.checkpoint_dir(run, sae_name, "score"), key,
                            every_s=opts.checkpoint_every if opts.checkpoint_every is not None else 30.0)
    collected = store.manifest(run, sae_name).stage("collect")
    frac = float((collected.config if collected is not None else {}).get("act_threshold_frac", 0.01))

    def compute() -> dict[str, pa.Table]:
        result, c = score_tables(
            lm, sae,
            store.read_table(run, sae_name, "examples"),
            store.read_table(run, sae_name, "generations"),
            store.read_table(run, sae_name, "features"),
            cfg, batch_size=opts.batch_size, progress=progress, checkpoint=checkpoint, act_threshold_frac=frac,
        )
        counts.update(c)
        if c["n_marks_stripped"]:
            warn(progress, f"score {sae_name}: {c['n_marks_stripped']} generated texts had {{{{ }}}} marks; "
                         "stripped before scoring, as the original does (scores.marks_stripped)")
        progress.log(
            f"score {sae_name}: {c['n_rows']} rows from {c['n_sequences']} distinct texts; "
            f"{c['n_truncated']} truncated at {cfg.max_length} tokens, {c['n_empty']} empty"
        )
        return result

    outcome = run_stage(
        store, run, sae_name, "score",
        config=cfg.stage_config(),
        inputs=inputs,
        compute=compute,
        force=force,
        extra=lambda: {**counts, **({"model_options": model_options(opts)} if model_options(opts) else {})},
        progress=progress,
    )
    shutil.rmtree(checkpoint.folder, ignore_errors=True)
    return outcome


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
