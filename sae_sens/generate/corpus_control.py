"""``corpus:SOURCE``: a generator-free control. Instead of asking an LLM, retrieve real passages.

For each feature, the tokens at its examples' peaks are its *activating tokens*. The control scans
SOURCE (any corpus ``collect`` accepts, e.g. ``demo:wiki-heldout``) for documents collect did not
read and keeps, per feature, up to ``--samples-per-feature`` passages around an occurrence of one of
those tokens, one per document (so each is a new context), cut like collect's examples (``buffer``
tokens each side). Its sensitivity answers "does the feature fire on the same tokens elsewhere?"
with no generator in the loop, and sits beside the LLM generators in every report.

"Did not read" is by content: the documents behind collect's windows are re-read from collect's own
corpus and hashed, and any document of SOURCE with one of those hashes is skipped, so a passage never
comes from text collect saw, whether SOURCE is the same corpus or another that overlaps it. A feature
whose tokens the unread text lacks gets fewer passages (``queries.n_parsed``; a warning names the
features), never invented ones. The scan stops when every feature is full or after
``max_scan_tokens`` tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from ..hashing import hash_text
from ..progress import NULL_PROGRESS, ProgressSink, warn_all
from ..schemas import make_table
from ..store import Store

MAX_SCAN_TOKENS = 20_000_000
_DOC_BATCH = 64


def activating_tokens(examples: pa.Table) -> dict[int, set[int]]:
    """Per feature, the token ids at its examples' peaks."""
    out: dict[int, set[int]] = {}
    for f, ids, peak in zip(examples["feature_index"].to_pylist(), examples["token_ids"].to_pylist(),
                            examples["peak_offset"].to_pylist(), strict=True):
        if ids and peak is not None and 0 <= peak < len(ids):
            out.setdefault(int(f), set()).add(int(ids[peak]))
    return out


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        if d.strip():
            batch.append(d)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def retrieve_passages(
    docs: Iterable[str],
    tokenizer: Any,
    targets: dict[int, set[int]],
    n: int,
    *,
    skip: set[str],
    buffer: int = 10,
    max_scan_tokens: int = MAX_SCAN_TOKENS,
) -> tuple[dict[int, list[str]], dict[str, int]]:
    """Up to ``n`` passages per feature of ``targets`` (feature -> token ids) from ``docs``, skipping
    documents whose ``hash_text`` is in ``skip``; at most one passage per feature and document."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    by_token: dict[int, list[int]] = {}
    for f, toks in targets.items():
        for t in toks - special:
            by_token.setdefault(t, []).append(f)
    found: dict[int, list[str]] = {f: [] for f in targets}
    open_features = {f for f in targets if by_token and any(t in by_token for t in targets[f])}
    stats = {"docs_scanned": 0, "docs_skipped": 0, "tokens_scanned": 0}
    for batch in _batches(docs, _DOC_BATCH):
        if not open_features or stats["tokens_scanned"] >= max_scan_tokens:
            break
        fresh = []
        for d in batch:
            if hash_text(d) in skip:
                stats["docs_skipped"] += 1
            else:
                fresh.append(d)
        for ids in tokenizer(fresh, add_special_tokens=False)["input_ids"] if fresh else []:
            stats["docs_scanned"] += 1
            stats["tokens_scanned"] += len(ids)
            arr = np.asarray(ids, dtype=np.int64)
            hits = np.flatnonzero(np.isin(arr, list(by_token)))
            done_here: set[int] = set()
            for pos in hits:
                for f in by_token[int(arr[pos])]:
                    if f in done_here or f not in open_features:
                        continue
                    window = ids[max(0, pos - buffer): pos + buffer + 1]
                    found[f].append(tokenizer.decode(window))
                    done_here.add(f)
                    if len(found[f]) >= n:
                        open_features.discard(f)
    return found, stats


def collect_read_documents(store: Store, run: str, sae: str, tokenizer: Any, bos_id: int | None,
                           progress: ProgressSink = NULL_PROGRESS) -> tuple[set[str], Any]:
    """Hashes of every document behind collect's windows, and collect's config."""
    from ..collect import CollectConfig
    from ..corpus import iter_documents, load_windows, resolve_corpus

    rec = store.manifest(run, sae).stage("collect:pass")
    known = set(CollectConfig.__dataclass_fields__)
    cfg = CollectConfig(**{k: v for k, v in (rec.config if rec else {}).items() if k in known})
    source = resolve_corpus(cfg.corpus, split=cfg.split, text_column=cfg.text_column)
    windows = load_windows(source, tokenizer, bos_id=bos_id, total_tokens=cfg.total_tokens,
                           context_size=cfg.context_size, cache_dir=store.cache_dir, progress=progress)
    n_read = int(windows.doc_index.max()) + 1
    read: set[str] = set()
    for d in iter_documents(source):
        if len(read) >= n_read:
            break
        if d.strip():  # collect numbers non-blank documents only
            read.add(hash_text(d))
    return read, cfg


def corpus_generations(store: Store, run: str, sae: str, source_id: str, label: str, samples_per_feature: int,
                       *, device: str | None = None, progress: ProgressSink = NULL_PROGRESS,
                       max_scan_tokens: int = MAX_SCAN_TOKENS) -> tuple[pa.Table, pa.Table, dict[str, Any], list[str]]:
    """(queries, generations, stats, warnings) of the ``corpus:`` control for one run × SAE."""
    from ..corpus import iter_documents, resolve_corpus
    from ..stages import ModelOptions, open_model, open_sae, recorded_model

    examples = store.read_table(run, sae, "examples")
    model = recorded_model(store, run, sae)[0]
    opts = ModelOptions(model=model, device=device)
    lm = open_model(open_sae(sae, opts, progress), opts)
    read, cfg = collect_read_documents(store, run, sae, lm.tokenizer, lm.bos_id, progress)
    targets = activating_tokens(examples)
    source = resolve_corpus(source_id, split=cfg.split, text_column=cfg.text_column)
    progress.log(f"{label}: scanning {source_id} for the activating tokens of {len(targets)} features, "
                 f"skipping the {len(read):,} documents collect read")
    found, stats = retrieve_passages(iter_documents(source), lm.tokenizer, targets, samples_per_feature,
                                     skip=read, buffer=cfg.buffer, max_scan_tokens=max_scan_tokens)
    queries, generations = [], []
    for f in sorted(targets):
        toks = sorted(targets[f])
        queries.append({"feature_index": f, "generator": label, "system_prompt": "",
                        "user_prompt": "activating tokens: " + " ".join(repr(lm.tokenizer.decode([t])) for t in toks),
                        "response": "", "status": "ok", "attempts": 0, "n_parsed": len(found[f]),
                        "parse_method": "corpus"})
        generations += [{"feature_index": f, "generator": label, "sample_index": i, "text": t}
                        for i, t in enumerate(found[f])]
    short = [f for f in sorted(targets) if len(found[f]) < samples_per_feature]
    warnings = []
    if short:
        warnings.append(f"{len(short)} features got fewer than {samples_per_feature} passages: {source_id} has too "
                        f"few unread documents with their tokens (see queries.n_parsed): "
                        f"{', '.join(f'{f} ({len(found[f])})' for f in short[:10])}{', ...' if len(short) > 10 else ''}")
    warn_all(progress, label, warnings)
    stats.update(n_features=len(targets), n_passages=len(generations), n_short=len(short), docs_read_by_collect=len(read))
    return make_table("queries", queries), make_table("generations", generations), stats, warnings
