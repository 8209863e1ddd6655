"""Held-out real examples: candidates collect drew for a feature but did not show the generator.

``collect`` draws ``n_top_candidates`` (12) top and ``n_iw_candidates`` (7) importance-weighted
candidate peaks per latent and keeps a seeded random ``n_top_ex_for_generation`` (10) and
``n_iw_ex_for_generation`` (5) of them as the feature's ``examples``: the generator sees only those
(or fewer, with ``generate --n-top/--n-iw``). The other candidates (by default 2 top + 2
importance-weighted per feature) are real text on which the feature fires that no generator saw:
the blind pairwise test puts one of them beside each generated text.

They exist only as (window, position) in ``candidates``, so their text is rebuilt here exactly as
collect builds examples: the same cached corpus windows, tokenizer, marking threshold and
``example_rows``. A feature has none when it had no more candidates than examples shown (a rare
latent), or when its examples were imported (``--from-saebench``: no ``candidates`` table).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pyarrow as pa

from ..progress import NULL_PROGRESS, ProgressSink
from ..stages import ModelOptions, split_model_ref
from ..store import Store

HELD_OUT_COLUMNS = ("feature_index", "pool", "rank", "window_index", "position", "text")


def held_out_candidates(candidates: pa.Table, examples: pa.Table) -> list[dict[str, Any]]:
    """Candidate rows of the examples' features whose peak is not one of the examples' peaks."""
    shown = {(int(f), int(w), int(p)) for f, w, p in zip(
        examples["feature_index"].to_pylist(), examples["window_index"].to_pylist(),
        examples["context_position"].to_pylist(), strict=True) if w is not None and p is not None}
    features = {int(f) for f in examples["feature_index"].to_pylist()}
    mask = pa.compute.is_in(candidates["feature_index"], pa.array(sorted(features), pa.int64()))
    cols = [c for c in ("feature_index", "pool", "rank", "window_index", "position", "activations")
            if c in candidates.column_names]
    rows = [r for r in candidates.filter(mask).select(cols).to_pylist()
            if (int(r["feature_index"]), int(r["window_index"]), int(r["position"])) not in shown]
    rows.sort(key=lambda r: (r["feature_index"], r["pool"] != "top", r["rank"]))
    return rows


def held_out_examples(store: Store, run: str, sae_name: str, opts: ModelOptions,
                      progress: ProgressSink = NULL_PROGRESS) -> pa.Table:
    """Per feature of ``examples``, its held-out candidates with their marked text (columns
    ``HELD_OUT_COLUMNS``); empty when there are none (no model is loaded then)."""
    empty = pa.table({"feature_index": pa.array([], pa.int64()), "pool": pa.array([], pa.string()),
                      "rank": pa.array([], pa.int32()), "window_index": pa.array([], pa.int64()),
                      "position": pa.array([], pa.int32()), "text": pa.array([], pa.string())})
    if not store.has_table(run, sae_name, "candidates"):
        return empty
    examples = store.read_table(run, sae_name, "examples")
    rows = held_out_candidates(store.read_table(run, sae_name, "candidates"), examples)
    if not rows:
        return empty
    from ..collect import CollectConfig, WantedExample, example_rows
    from ..corpus import load_windows, resolve_corpus
    from ..stages import open_model, open_sae

    manifest = store.manifest(run, sae_name)
    pass_rec, select_rec = manifest.stage("collect:pass"), manifest.stage("collect")
    known = set(CollectConfig.__dataclass_fields__)
    config = {k: v for k, v in {**(pass_rec.config if pass_rec else {}), **(select_rec.config if select_rec else {})}.items()
              if k in known and k not in ("feature_ids", "features")}
    cfg = CollectConfig(**config)
    if opts.model is None and pass_rec is not None and pass_rec.inputs.get("model"):
        # the model collect ran (it may have been a --model override): its tokenizer made the windows
        opts = replace(opts, model=split_model_ref(pass_rec.inputs["model"])[0])
    sae = open_sae(sae_name, opts, progress)
    lm = open_model(sae, opts)
    source = resolve_corpus(cfg.corpus, split=cfg.split, text_column=cfg.text_column)
    windows = load_windows(source, lm.tokenizer, bos_id=lm.bos_id, total_tokens=cfg.total_tokens,
                           context_size=cfg.context_size, cache_dir=store.cache_dir, progress=progress)
    features = store.read_table(run, sae_name, "features")
    top = dict(zip(features["feature_index"].to_pylist(), features["top_activation"].to_pylist(), strict=True))
    wanted = []
    for r in rows:
        snippet = r.get("activations")
        if snippet is None or len(snippet) != 2 * cfg.buffer + 1 or any(x != x for x in snippet):
            continue  # no complete activation snippet (candidates from before snippets were kept): left out
        wanted.append(WantedExample(int(r["feature_index"]), r["pool"], int(r["rank"]), int(r["window_index"]),
                                    int(r["position"]), list(snippet)))
    if not wanted:
        return empty
    thresholds = [cfg.act_threshold_frac * float(top.get(w.feature) or 0.0) for w in wanted]
    built = example_rows(lm.tokenizer, windows, wanted, thresholds, cfg.buffer)
    return pa.table({
        "feature_index": pa.array([w.feature for w in wanted], pa.int64()),
        "pool": pa.array([w.kind for w in wanted], pa.string()),
        "rank": pa.array([w.example_index for w in wanted], pa.int32()),
        "window_index": pa.array([w.window for w in wanted], pa.int64()),
        "position": pa.array([w.position for w in wanted], pa.int32()),
        "text": pa.array([b["text"] for b in built], pa.string()),
    })
