"""Tables in, tables out: the ``scores`` rows of a run × SAE's examples and generations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, MissingTableError
from ..model import HookedLM
from ..progress import NULL_PROGRESS, ProgressSink
from ..sae import Sae
from ..schemas import make_table
from .config import ScoreConfig
from .encode import Checkpoint, Trace, score_sequences
from .stats import _column, feature_stats
from .texts import decode_each, original_builder_text, original_text, strip_marks, window_ids


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
    from ..collect import token_strings_many  # the same per-token decoding as the examples' tokens

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
