"""``baseline:SOURCE`` and ``inject:SOURCE``: real held-out passages for the precision side of sensitivity.

Sensitivity is a recall: a feature that fires on everything, or on one token a generator always
copies, scores near 1. These two generators give the evidence that tells those apart, with no LLM,
scored by ``score`` like every other text:

* ``baseline:`` draws ``--passages`` random passages (default 200) from SOURCE's documents that
  collect did not read (by content hash, as the ``corpus:`` control skips them): a seeded reservoir
  over the first ``20 x passages`` unread documents, one window of ``2 x buffer + 1`` tokens (an
  example's length) at a seeded offset in each. The same passages serve every feature (the
  ``generations`` table lists them under each one; ``score`` runs each distinct passage once), so a
  feature's base rate is the share of random unread text it fires on.
* ``inject:`` takes, per feature, ``--samples-per-feature`` of those passages that contain none of
  its activating tokens (the tokens at its examples' peaks, most frequent first) and puts one of them
  in at a seeded word boundary; a position where re-tokenising the text loses the token is replaced
  by another. The share that fires is the injection rate: near 1 says the feature detects the token,
  whatever the generated texts show.

Both are deterministic for one seed, collect pass and SOURCE.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from ..errors import MissingTableError
from ..hashing import hash_text
from ..progress import NULL_PROGRESS, ProgressSink, some, warn_all
from ..schemas import make_table
from ..store import Store
from .config import GenerateConfig

SCAN_FACTOR = 20  # unread documents looked at per passage drawn
INSERT_TRIES = 8  # positions tried per injection before the next passage


def _unread(docs: Iterable[str], skip: set[str]) -> Iterator[str]:
    for d in docs:
        if d.strip() and hash_text(d) not in skip:
            yield d


def draw_passages(docs: Iterable[str], tokenizer: Any, n: int, length: int, *, skip: set[str], seed: int,
                  scan_docs: int | None = None) -> tuple[list[list[int]], dict[str, int]]:
    """``n`` random token windows of ``length`` tokens (shorter documents whole), one per document,
    from the first ``scan_docs`` documents not in ``skip``: a seeded reservoir, then a seeded offset."""
    scan = scan_docs if scan_docs is not None else SCAN_FACTOR * n
    rng = random.Random(seed)
    reservoir: list[str] = []
    seen = 0
    for d in _unread(docs, skip):
        if seen >= scan:
            break
        if len(reservoir) < n:
            reservoir.append(d)
        else:
            j = rng.randrange(seen + 1)
            if j < n:
                reservoir[j] = d
        seen += 1
    ids = tokenizer(reservoir, add_special_tokens=False)["input_ids"] if reservoir else []
    passages = []
    for doc_ids in ids:
        if not doc_ids:
            continue
        start = rng.randrange(max(len(doc_ids) - length, 0) + 1)
        passages.append(list(doc_ids[start:start + length]))
    return passages, {"docs_scanned": seen, "passages": len(passages)}


def _word_starts(tokenizer: Any, ids: list[int]) -> list[int]:
    """Positions before which a new word starts (the next token begins with a space), and the end."""
    strs = tokenizer.batch_decode([[t] for t in ids], clean_up_tokenization_spaces=False)
    return [i for i, s in enumerate(strs) if i == 0 or s[:1].isspace()] + [len(ids)]


def inject(tokenizer: Any, passage: list[int], token: int, rng: random.Random) -> str | None:
    """``passage`` with ``token`` put in at a random word boundary, as text; None when no tried
    position keeps the token through re-tokenisation."""
    spots = _word_starts(tokenizer, passage)
    rng.shuffle(spots)
    for pos in spots[:INSERT_TRIES]:
        text = tokenizer.decode(passage[:pos] + [token] + passage[pos:])
        if token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            return str(text)
    return None


def peak_tokens(examples: pa.Table, special: set[int]) -> dict[int, list[int]]:
    """Per feature, the token ids at its examples' peaks, most frequent first (ties by id)."""
    counts: dict[int, Counter[int]] = {}
    for f, ids, peak in zip(examples["feature_index"].to_pylist(), examples["token_ids"].to_pylist(),
                            examples["peak_offset"].to_pylist(), strict=True):
        if ids and peak is not None and 0 <= peak < len(ids) and int(ids[peak]) not in special:
            counts.setdefault(int(f), Counter())[int(ids[peak])] += 1
    return {f: [t for t, _ in sorted(c.items(), key=lambda x: (-x[1], x[0]))] for f, c in counts.items()}


def reference_generations(store: Store, run: str, sae: str, cfg: GenerateConfig, *,
                          progress: ProgressSink = NULL_PROGRESS) -> tuple[pa.Table, pa.Table, dict[str, Any], list[str]]:
    """(queries, generations, stats, warnings) of ``baseline:`` or ``inject:`` for one run × SAE."""
    from ..corpus import iter_documents, resolve_corpus
    from ..model import bos_id, load_tokenizer
    from ..stages import recorded_model
    from .corpus_control import collect_read_documents

    spec, label = cfg.spec, cfg.spec.label
    examples = store.read_table(run, sae, "examples")
    model_id, rev = recorded_model(store, run, sae)
    if model_id is None:
        raise MissingTableError(f"run {run!r}, SAE {sae!r} has no collect pass to draw passages for",
                                f"run `sae-sens collect --run {run} --sae {sae}` first")
    tokenizer = load_tokenizer(model_id, rev)
    read, ccfg = collect_read_documents(store, run, sae, tokenizer, bos_id(tokenizer), progress)
    source = resolve_corpus(spec.target, split=ccfg.split, text_column=ccfg.text_column)
    features = sorted(set(examples["feature_index"].to_pylist()))
    length = 2 * ccfg.buffer + 1
    # the injections draw from the same passages: a pool big enough to leave some without the tokens
    n_pool = cfg.n_passages if spec.kind == "baseline" else max(cfg.n_passages, 4 * cfg.samples_per_feature)
    progress.log(f"{label}: drawing {n_pool} random {length}-token passages from {spec.target}, "
                 f"skipping the {len(read):,} documents collect read")
    passages, stats = draw_passages(iter_documents(source), tokenizer, n_pool, length, skip=read, seed=cfg.seed)
    queries: list[dict[str, Any]] = []
    generations: list[dict[str, Any]] = []
    warnings: list[str] = []
    if spec.kind == "baseline":
        texts = tokenizer.batch_decode(passages, clean_up_tokenization_spaces=False)
        for f in features:
            queries.append({"feature_index": f, "generator": label, "system_prompt": "",
                            "user_prompt": f"{len(texts)} random held-out passages of {length} tokens (shared)",
                            "response": "", "status": "ok", "attempts": 0, "n_parsed": len(texts),
                            "parse_method": "baseline"})
            generations += [{"feature_index": f, "generator": label, "sample_index": i, "text": t}
                            for i, t in enumerate(texts)]
        if len(passages) < cfg.n_passages:
            warnings.append(f"{spec.target} has only {len(passages)} unread documents in reach: the base rate "
                            f"is over {len(passages)} passages, not {cfg.n_passages}")
    else:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        tokens = peak_tokens(examples, special)
        short = []
        for f in features:
            toks = tokens.get(f, [])
            rng = random.Random(cfg.seed * 1_000_003 + f)
            pool = [p for p in passages if not set(p) & set(toks)] if toks else []
            rng.shuffle(pool)
            made: list[str] = []
            for p in pool:
                if len(made) >= cfg.samples_per_feature:
                    break
                text = inject(tokenizer, p, toks[len(made) % len(toks)], rng)
                if text is not None:
                    made.append(text)
            if len(made) < cfg.samples_per_feature:
                short.append(f)
            queries.append({"feature_index": f, "generator": label, "system_prompt": "",
                            "user_prompt": "injected tokens: " + " ".join(repr(tokenizer.decode([t])) for t in toks),
                            "response": "", "status": "ok", "attempts": 0, "n_parsed": len(made),
                            "parse_method": "inject"})
            generations += [{"feature_index": f, "generator": label, "sample_index": i, "text": t}
                            for i, t in enumerate(made)]
        if short:
            warnings.append(f"{len(short)} features got fewer than {cfg.samples_per_feature} injected passages "
                            "(too few passages without their tokens, or the token did not survive re-tokenising; "
                            f"see queries.n_parsed): {some(short)}")
    warn_all(progress, label, warnings)
    stats.update(n_features=len(features), n_passages=len(generations), docs_read_by_collect=len(read))
    return make_table("queries", queries), make_table("generations", generations), stats, warnings
