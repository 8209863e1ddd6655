"""Results in the original tool's output folder: its six CSVs per run × SAE × generator.

The original (``src/run.py`` of nathanhu0/sae-sensitivity) writes ``evals/{eval_name}/{sae_name}/``
with ``feature_examples.csv``, ``generated_samples.csv``, ``generation_queries_with_responses.csv``,
``generated_samples_with_activations.csv``, ``original_examples_with_activations.csv`` and
``feature_stats.csv``. We write the same files, with its columns in its order and its value
conventions (pandas' ``to_csv``: an empty cell for NaN, lists as Python writes them), from the
store's tables; nothing sae-sens adds goes into them (every extra lives in the store, for SQL).
Column by column, and where we differ, in ``ORIGINAL_COLUMNS`` and the README ("Coming from the
original tool").

Two of its conventions need the model's tokenizer, which is loaded (weights excluded) from the
model the score stage ran: ``Sequence`` marks each active token on its own (``{{a}}{{b}}``, tokens
decoded one by one, U+FFFD dropped, ``↵`` for newlines) where the store's ``examples.text`` marks
runs, and ``tokenized_text`` lists the scored token ids.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import MissingTableError
from ..store import Store, atomic_write_bytes, sae_slug

# file -> its columns, in the original's order
ORIGINAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "feature_examples.csv": ("feature_index", "Top_act", "Sequence"),
    "generated_samples.csv": ("feature_index", "sample_index", "text"),
    "generation_queries_with_responses.csv": (
        "sae_name", "eval_name", "feature_index", "system_prompt", "user_prompt", "separator", "num_per_call",
        "llm_response", "status"),
    "generated_samples_with_activations.csv": (
        "feature_index", "sample_index", "text_annotated", "text_clean", "tokenized_text", "max_activation",
        "all_activations"),
    "original_examples_with_activations.csv": (
        "feature_index", "Top_act", "text_annotated", "text_clean", "tokenized_text", "max_activation",
        "all_activations"),
    "feature_stats.csv": ("feature_index", "generated_sensitivity", "original_sensitivity"),
}
ORIGINAL_FILES = tuple(ORIGINAL_COLUMNS)

TokenizerLoader = Callable[[str, "str | None"], Any]


def _cell(value: Any) -> str:
    """A value as pandas' ``to_csv`` writes it: NaN/None as an empty cell, floats by ``repr``,
    lists as ``str(list)``."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return str(value)
    return str(value)


def csv_bytes(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(v) for v in r])
    return buf.getvalue().encode("utf-8")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def generator_folder(generator: str) -> str:
    """The folder of one generator's results: its label made safe for a path (``openai-gpt-4.1-mini``)."""
    return _slug(generator)


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _model_of(store: Store, run: str, sae: str) -> tuple[str, str | None]:
    """The model the score stage ran (``model_id@revision`` in its inputs), else the SAE's."""
    from ..stages import recorded_model

    model_id, rev = recorded_model(store, run, sae, "score")
    if model_id:
        return model_id, rev
    model_id = str(store.manifest(run, sae).sae_info.get("model_id") or "")
    if not model_id:
        raise MissingTableError(f"run {run!r}, SAE {sae!r} records no model", "run `sae-sens score` first")
    return model_id, None


@dataclass
class _Sae:
    """One run × SAE's tables, read once for all its generators."""

    examples: list[dict[str, Any]]
    generations: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    stats: list[dict[str, Any]]
    top: dict[int, float | None]
    frac: float


def _read(store: Store, run: str, sae: str) -> _Sae:
    def table(name: str) -> list[dict[str, Any]]:
        return _rows(store.read_table(run, sae, name)) if store.has_table(run, sae, name) else []

    features = table("features")
    collected = store.manifest(run, sae).stage("collect")
    frac = float((collected.config if collected else {}).get("act_threshold_frac", 0.01))
    return _Sae(examples=table("examples"), generations=table("generations"), queries=table("queries"),
                scores=table("scores"), stats=table("feature_stats"),
                top={int(f["feature_index"]): f.get("top_activation") for f in features}, frac=frac)


def _top_act(example: dict[str, Any]) -> float | None:
    # the original's Top_act: max over the window's activations (SAEBench imports: its printed value)
    acts = example.get("activations")
    return float(max(acts)) if acts else example.get("max_activation")


def _sequence(example: dict[str, Any], str_tokens: list[str] | None, threshold: float) -> str:
    from ..score import original_marked_text

    if str_tokens:  # per-token marks, as the original's builder writes them
        return original_marked_text(str_tokens, example.get("activations"), threshold)
    return str(example.get("text") or "").replace("\n", "↵")  # a SAEBench import: its own marked text


def _activation_rows(scored: dict[Any, dict[str, Any]], keys: Sequence[Any], heads: Sequence[list[Any]],
                     annotated: Sequence[str], encoded: dict[str, list[int]]) -> list[list[Any]]:
    """``(..., text_annotated, text_clean, tokenized_text, max_activation, all_activations)`` rows: the
    activations are the scored ones after a 0.0 for the BOS (the original zeroes it)."""
    out = []
    for key, head, ann in zip(keys, heads, annotated, strict=True):
        s = scored.get(key)
        clean = s["text"] if s else ann.replace("{{", "").replace("}}", "")
        acts = s.get("activations") if s else None
        ids = encoded.get(clean)
        if s is None or s.get("empty") or acts is None:  # not scored (blank): NaN, as nothing was read
            out.append([*head, ann, clean, ids, None, None])
            continue
        out.append([*head, ann, clean, ids, s.get("max_activation"), [0.0, *acts]])
    return out


def original_files(store: Store, run: str, sae: str, generator: str, eval_name: str, tokenizer: Any,
                   data: _Sae | None = None, max_length: int | None = None) -> dict[str, bytes]:
    """The six CSVs of one run × SAE × generator, as ``{file name: bytes}``."""
    from ..model import encode_texts
    from ..score import decode_each

    d = data or _read(store, run, sae)
    score = store.manifest(run, sae).stage("score")
    max_len = int(max_length or (score.config.get("max_length") if score else None) or 128)
    gen_cfg = (store.manifest(run, sae).stage(f"generate:{generator}") or None)
    gcfg = gen_cfg.config if gen_cfg else {}

    # feature_examples.csv: every example, strongest first per feature
    examples = sorted(d.examples, key=lambda e: (int(e["feature_index"]), -(_top_act(e) or 0.0),
                                                 int(e.get("example_index") or 0)))
    str_toks = decode_each(tokenizer, [list(e.get("token_ids") or []) for e in examples])
    sequences = [_sequence(e, st, d.frac * float(d.top.get(int(e["feature_index"])) or 0.0))
                 for e, st in zip(examples, str_toks, strict=True)]
    files: dict[str, list[list[Any]]] = {
        "feature_examples.csv": [[e["feature_index"], _top_act(e), seq] for e, seq in zip(examples, sequences,
                                                                                         strict=True)]}

    # generated_samples.csv: one row per sample
    gens = sorted((g for g in d.generations if g["generator"] == generator),
                  key=lambda g: (int(g["feature_index"]), int(g["sample_index"])))
    files["generated_samples.csv"] = [[g["feature_index"], g["sample_index"], g["text"]] for g in gens]

    # generation_queries_with_responses.csv: one row per feature, its last prompt; the response as the
    # original writes it (its parsed samples joined by the separator), "Failed" without samples
    separator = str(gcfg.get("separator") or "<SAMPLE_SEPARATOR/>")
    n_request = (int(gcfg["samples_per_feature"]) + int(gcfg.get("extra_samples") or 0)
                 if gcfg.get("samples_per_feature") is not None else None)
    model = str(gcfg.get("model") or generator.split(":", 1)[-1])
    by_feature: dict[int, list[str]] = {}
    for g in gens:
        by_feature.setdefault(int(g["feature_index"]), []).append(g["text"])
    prompts: dict[int, dict[str, Any]] = {}
    for q in d.queries:
        if q["generator"] == generator:
            prompts[int(q["feature_index"])] = q
    query_rows = []
    for f in sorted(set(prompts) | set(by_feature)):
        q = prompts.get(f, {})
        texts = by_feature.get(f)
        query_rows.append([sae, eval_name, f, q.get("system_prompt"), q.get("user_prompt"), separator, n_request,
                           separator.join(texts) if texts else None,
                           f"Success with {model}" if texts else "Failed"])
    files["generation_queries_with_responses.csv"] = query_rows

    # the two activation files: the scored rows, keyed as the original's rows
    gen_scores = {(int(s["feature_index"]), int(s["sample_index"])): s for s in d.scores
                  if s["source"] == "generated" and s["generator"] == generator}
    orig_scores = {(int(s["feature_index"]), int(s["sample_index"])): s for s in d.scores
                   if s["source"] == "original" and s["variant"] == "text"}
    clean_texts = {s["text"] for s in gen_scores.values()} | {s["text"] for s in orig_scores.values()}
    distinct = sorted(t for t in clean_texts if t is not None)
    encoded = {t: ids for t, (ids, _) in zip(distinct, encode_texts(tokenizer, distinct, max_len), strict=True)}
    files["generated_samples_with_activations.csv"] = _activation_rows(
        gen_scores, [(int(g["feature_index"]), int(g["sample_index"])) for g in gens],
        [[g["feature_index"], g["sample_index"]] for g in gens], [g["text"] for g in gens], encoded)
    files["original_examples_with_activations.csv"] = _activation_rows(
        orig_scores, [(int(e["feature_index"]), int(e["example_index"])) for e in examples],
        [[e["feature_index"], _top_act(e)] for e in examples], sequences, encoded)

    # feature_stats.csv: every feature with a generated or an original score, NaN for the side it lacks
    stats = sorted((s for s in d.stats if s["generator"] == generator), key=lambda s: int(s["feature_index"]))
    files["feature_stats.csv"] = [[s["feature_index"], s["generated_sensitivity"], s["original_sensitivity"]]
                                  for s in stats]
    return {name: csv_bytes(ORIGINAL_COLUMNS[name], rows) for name, rows in files.items()}


def _default_tokenizer(model_id: str, revision: str | None) -> Any:
    from ..model import load_tokenizer

    return load_tokenizer(model_id, revision)


def export_original(store: Store, folder: Path, runs: Sequence[str] | None = None, saes: Sequence[str] | None = None,
                    generators: Sequence[str] | None = None, *, flat: bool = False, eval_name: str | None = None,
                    load_tokenizer: TokenizerLoader = _default_tokenizer) -> list[Path]:
    """Write the six CSVs per scored run × SAE × generator in scope; returns the folders written.

    Layout: ``<folder>/<run>/<generator>/<sae>/`` (so ``evals/{eval_name}`` of the original is
    ``<folder>/<run>/<generator>``); ``flat`` writes ``<folder>/<sae>/`` as the original's
    ``--output-path`` does, for one run and one generator."""
    targets: list[tuple[str, str, str]] = []
    for run in runs or store.runs():
        for sae in store.saes(run):
            if saes and sae not in saes:
                continue
            if not store.has_table(run, sae, "feature_stats"):
                continue
            scored = sorted(set(store.read_table(run, sae, "feature_stats")["generator"].to_pylist()))
            targets += [(run, sae, g) for g in scored if not generators or g in generators]
    if not targets:
        raise MissingTableError("nothing scored to export in this scope", "run `sae-sens score` first")
    if flat and len({(r, g) for r, _, g in targets}) > 1:
        raise MissingTableError("the original's layout holds one run and one generator",
                                "pass one --run and one --generator")
    tokenizers: dict[tuple[str, str | None], Any] = {}
    cache: dict[tuple[str, str], _Sae] = {}
    written = []
    for run, sae, generator in targets:
        model = _model_of(store, run, sae)
        if model not in tokenizers:
            tokenizers[model] = load_tokenizer(*model)
        where = folder / sae_slug(sae) if flat else folder / run / generator_folder(generator) / sae_slug(sae)
        name = eval_name or (str(folder) if flat else f"{run}/{generator_folder(generator)}")
        data = cache.setdefault((run, sae), _read(store, run, sae))
        for file, content in original_files(store, run, sae, generator, name, tokenizers[model], data).items():
            atomic_write_bytes(where / file, content)
        written.append(where)
    return written
