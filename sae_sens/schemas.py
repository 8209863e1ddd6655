"""The columns of every table in the store (``run`` and ``sae`` are added by the store).

Stage code builds tables with ``make_table(name, rows_or_columns)`` so that types stay stable
across stages, runs and empty results (DuckDB globs over many files need identical schemas).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

# Generators whose label starts so are the corpus control (real held-out passages, no LLM). The control
# answers another question than a generator ("does the feature fire on its tokens in other real
# text?"), so no summary ever averages it with one: it is reported beside them, as its own figure.
CONTROL_PREFIX = "corpus:"
CONTROL_SQL = "starts_with(generator, 'corpus:')"  # the same test in DuckDB, on a ``generator`` column


def is_control(generator: str | None) -> bool:
    return bool(generator) and str(generator).startswith(CONTROL_PREFIX)


# What each generator's texts are for (``generations.role``, ``feature_stats.role``), by its label:
# positive: texts asked to show the pattern (every LLM generator, every import); negative: near misses
# (``negatives:<generator>``: same topic and vocabulary, without the pattern); control: real passages
# with the activating tokens (``corpus:``); base: random real passages shared by all features
# (``baseline:``, the base rate); injection: unrelated real passages with one activating token put in
# (``inject:``, the token-shortcut control). Only positive texts make a sensitivity; the others are
# evidence beside it and never averaged with it.
NEGATIVES_PREFIX = "negatives:"
ROLE_PREFIXES = {CONTROL_PREFIX: "control", "baseline:": "base", "inject:": "injection", NEGATIVES_PREFIX: "negative"}
ROLES = ("positive", "negative", "control", "base", "injection")
# the same rule in DuckDB, on a ``generator`` column
ROLE_SQL = "CASE " + " ".join(f"WHEN starts_with(generator, '{p}') THEN '{r}'" for p, r in ROLE_PREFIXES.items()) \
    + " ELSE 'positive' END"
# generators whose texts are neither positives nor the corpus control: the specificity-side evidence
REFERENCE_SQL = "(" + " OR ".join(f"starts_with(generator, '{p}')" for p, r in ROLE_PREFIXES.items()
                                  if r != "control") + ")"


def role_of(generator: str | None) -> str:
    g = str(generator or "")
    return next((r for p, r in ROLE_PREFIXES.items() if g.startswith(p)), "positive")


def is_reference(generator: str | None) -> bool:
    """A base-rate, injection or negatives generator: never a sensitivity, never the control."""
    return role_of(generator) in ("negative", "base", "injection")


SCHEMAS: dict[str, pa.Schema] = {
    # one row per SAE latent (all of them, not only selected ones)
    "features": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("frequency", pa.float64()),        # firings / counted tokens
        ("n_firings", pa.int64()),          # counted tokens with activation > 0
        ("max_activation", pa.float64()),   # over every counted token of the pass
        ("top_activation", pa.float64()),   # strongest top-window peak (marks use 1% of this)
        ("alive", pa.bool_()),              # n_firings / counted_tokens * total_tokens > 15 (--alive-rule original)
        ("selected", pa.bool_()),           # chosen for this run's examples
    ]),
    # per-latent statistics of the collect pass (every latent; `features` adds the selection)
    "latents": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("n_firings", pa.int64()),          # counted tokens with activation > 0
        ("max_activation", pa.float64()),   # over every counted token of the pass
        ("top_activation", pa.float64()),   # strongest top peak; NULL when the latent has none
        ("n_top", pa.int32()),              # top candidates kept (<= n_top_candidates)
        ("n_iw", pa.int32()),               # importance-weighted candidates kept
        ("counted_tokens", pa.int64()),     # tokens that counted in the pass (same on every row)
    ]),
    # candidate peaks kept by the one-pass collector, so other selections need no new pass
    "candidates": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("pool", pa.string()),              # top | iw
        ("rank", pa.int32()),               # rank inside its pool (0 = strongest top peak / largest reservoir key)
        ("window_index", pa.int64()),       # corpus context window the peak is in
        ("position", pa.int32()),           # token position of the peak inside its context window
        ("activation", pa.float64()),       # the peak's activation
        ("key", pa.float64()),              # weighted-reservoir key (iw pool), NaN for top
        ("activations", pa.list_(pa.float32())),  # the feature's activations on the 2*buffer+1 tokens around the peak
    ]),
    # per selected feature: top windows and importance-weighted samples
    "examples": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("example_index", pa.int32()),      # index among the feature's examples (top first, then iw)
        ("kind", pa.string()),              # top | iw
        ("max_activation", pa.float64()),   # the peak's activation in its full context
        ("text", pa.string()),              # activating tokens marked {{like this}}
        ("token_ids", pa.list_(pa.int32())),  # the window's token ids (no BOS), peak ± 10 tokens
        ("tokens", pa.list_(pa.string())),  # the same tokens decoded one by one (they concatenate to the text)
        ("activations", pa.list_(pa.float32())),  # the feature's activation per token, computed in the full context
        ("peak_offset", pa.int32()),        # index of the peak inside token_ids
        ("window_index", pa.int64()),       # corpus context window it came from
        ("context_position", pa.int32()),   # peak position inside that context
        ("doc_index", pa.int64()),          # source document of the peak token
        ("doc_token_position", pa.int64()), # peak's token offset inside its document
    ]),
    "queries": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("generator", pa.string()),         # generator label, e.g. openai:gpt-4.1-mini, hf:demo:smollm2, or an import's name
        ("system_prompt", pa.string()),     # system message sent
        ("user_prompt", pa.string()),       # user message sent (the marked examples)
        ("response", pa.string()),          # raw answer
        ("status", pa.string()),            # ok | error | imported
        ("attempts", pa.int32()),           # requests made (retries included)
        ("prompt_tokens", pa.int64()),      # usage reported by the server
        ("completion_tokens", pa.int64()),  # usage reported by the server
        ("latency_s", pa.float64()),        # seconds for the successful request
        ("n_parsed", pa.int32()),           # samples parsed from the answer
        ("parse_method", pa.string()),      # separator | blank_lines | numbered | single | table
        ("cost_usd", pa.float64()),         # from the price table (NULL when the price is unknown)
        ("query_hash", pa.string()),        # cache key: hash of generator, model, prompts, sampling settings, seed
        ("error", pa.string()),             # last error, when status = error
        ("batch_id", pa.string()),          # the Batch API batch that answered (--batch); NULL when sent one by one
    ]),
    "generations": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("generator", pa.string()),         # generator label
        ("sample_index", pa.int32()),       # sample number within the feature
        ("text", pa.string()),              # the generated (or imported) text
        ("role", pa.string()),              # positive | negative | control | base | injection (from the label)
    ]),
    "scores": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("source", pa.string()),            # generated | original
        ("variant", pa.string()),           # generated | window (exact tokens) | text (original method)
        ("generator", pa.string()),         # the generator for generated rows, '' for originals
        ("sample_index", pa.int32()),       # sample_index, or example_index for originals
        ("kind", pa.string()),              # top | iw for originals, NULL for generated
        ("text", pa.string()),              # as scored (window rows: the example's marked text)
        ("n_tokens", pa.int32()),           # tokens scored after the BOS (= len(activations))
        ("truncated", pa.bool_()),          # cut at max_length tokens (BOS included)
        ("empty", pa.bool_()),              # blank text / no token to read: not scored, NULL below
        ("max_activation", pa.float64()),   # over counted tokens; NULL when empty
        ("max_position", pa.int32()),       # index into activations (window rows: into token_ids)
        ("active", pa.bool_()),             # max_activation > threshold; NULL when empty
        ("frac_of_top", pa.float64()),      # max_activation / the feature's top_activation
        ("marks_stripped", pa.bool_()),     # generated text had {{ }} marks, removed before scoring; NULL for originals
        ("tokens", pa.list_(pa.string())),  # the scored tokens after the BOS, decoded one by one
        ("activations", pa.list_(pa.float32())),  # per token after the BOS; non-counted tokens are 0
    ]),
    "feature_stats": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("generator", pa.string()),         # generator label
        ("generated_sensitivity", pa.float64()),  # share of non-empty generated samples that are active
        ("original_sensitivity", pa.float64()),         # originals re-tokenised, as the original code
        ("original_sensitivity_window", pa.float64()),  # originals as their exact token windows
        ("n_generated", pa.int64()),        # non-empty generated samples (the sensitivity denominator)
        ("n_original", pa.int64()),         # non-empty originals, text variant
        ("n_empty", pa.int64()),            # empty generated samples (left out of n_generated)
        ("n_truncated", pa.int64()),        # generated samples cut at max_length
        ("mean_max_activation", pa.float64()),    # over non-empty generated samples
        ("median_max_activation", pa.float64()),  # over non-empty generated samples
        ("top_activation", pa.float64()),   # the feature's strongest top peak from collect
        ("threshold", pa.float64()),        # the --threshold used
        ("mean_frac_of_top", pa.float64()), # mean over non-empty generated samples of max_activation / top_activation
        ("relative_thresholds", pa.list_(pa.float64())),  # --relative-thresholds: fractions r of top_activation
        ("sensitivity_relative", pa.list_(pa.float64())),  # per r: share of non-empty generated samples with max_activation > r * top_activation
        ("original_sensitivity_relative", pa.list_(pa.float64())),  # per r: the same for the originals (text variant)
        ("role", pa.string()),              # the generator's role: positive | negative | control | base | injection
        ("base_rate", pa.float64()),        # share of the shared random held-out passages (baseline:) that fire
        ("lift", pa.float64()),             # generated_sensitivity - base_rate
        ("dense", pa.bool_()),              # base_rate >= 0.5: fires on most random text, sensitivity says little
        ("specificity", pa.float64()),      # share of this generator's near-miss negatives (negatives:<generator>) that do not fire
        ("injection_rate", pa.float64()),   # share of unrelated passages with one activating token put in (inject:) that fire
        ("auroc", pa.float64()),            # P(a positive's max activation > a negative's), ties 1/2; vs negatives, else base passages
        ("n_base", pa.int64()),             # base passages scored (the base_rate denominator)
        ("n_negative", pa.int64()),         # negatives scored (the specificity denominator)
        ("n_injected", pa.int64()),         # injected passages scored (the injection_rate denominator)
    ]),
    # sae-sens judge: an LLM's verdicts on generated texts (blind pairwise test and direct check)
    "judgments": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("generator", pa.string()),         # generator of the judged text
        ("judge", pa.string()),             # the judging LLM, e.g. openai:gpt-4.1-mini
        ("task", pa.string()),              # pair (blind pairwise test) | direct (does it show the pattern?)
        ("sample_index", pa.int32()),       # the judged text's sample_index in generations
        ("text", pa.string()),              # the generated text as shown (marks stripped)
        ("real_text", pa.string()),         # pair: the held-out real example it was paired with
        ("real_example", pa.string()),      # pair: that example's candidate, <pool>:<rank> in candidates
        ("real_position", pa.string()),     # pair: A | B, where the real example was shown (seeded)
        ("answer", pa.string()),            # A | B (pair), yes | no (direct); NULL when unparsed
        ("correct", pa.bool_()),            # pair: the judge picked the real example
        ("valid", pa.bool_()),              # direct: the judge says the text shows the pattern
        ("reason", pa.string()),            # direct: the judge's one-line reason
        ("response", pa.string()),          # raw answer
        ("status", pa.string()),            # ok | unparsed | error
        ("attempts", pa.int32()),           # requests made (retries included)
        ("prompt_tokens", pa.int64()),      # usage reported by the server
        ("completion_tokens", pa.int64()),  # usage reported by the server
        ("latency_s", pa.float64()),        # seconds for the successful request
        ("cost_usd", pa.float64()),         # from the price table (NULL when the price is unknown)
        ("query_hash", pa.string()),        # cache key: judge, model, server, prompts, sampling settings, seed
        ("error", pa.string()),             # last error, when status = error
    ]),
    # sae-sens label: human answers to the same blind pairs, one row per rater and pair, written at once
    "labels": pa.schema([
        ("feature_index", pa.int64()),      # SAE latent index
        ("generator", pa.string()),         # generator of the generated text in the pair
        ("sample_index", pa.int32()),       # its sample_index in generations
        ("rater", pa.string()),             # who answered (--rater, or ?rater= in the page's address)
        ("pair_id", pa.string()),           # the pair (same pairs as the judge's for the same --seed)
        ("real_example", pa.string()),      # the held-out example, <pool>:<rank> in candidates
        ("real_position", pa.string()),     # A | B, where the real example was shown
        ("answer", pa.string()),            # A | B | skip
        ("correct", pa.bool_()),            # the rater picked the real example; NULL for skip
        ("text", pa.string()),              # the generated text as shown
        ("real_text", pa.string()),         # the real example as shown
        ("seed", pa.int64()),               # the --seed that made the pairs
        ("answered_at", pa.string()),       # UTC time of the answer
    ]),
}


def make_table(name: str, data: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build table ``name`` from columns or row dicts; missing columns become NULL, extra ones are kept."""
    schema = SCHEMAS[name]
    if isinstance(data, Mapping):
        n = len(next(iter(data.values()))) if data else 0
        cols = dict(data)
    else:
        rows = list(data)
        n = len(rows)
        keys: list[str] = list(schema.names) + sorted({k for r in rows for k in r} - set(schema.names))
        cols = {k: [r.get(k) for r in rows] for k in keys}
    arrays, fields = [], []
    for field in schema:
        values = cols.get(field.name, [None] * n)
        arrays.append(pa.array(values, type=field.type) if not isinstance(values, pa.Array) else values.cast(field.type))
        fields.append(field)
    for k, values in cols.items():
        if k not in schema.names:
            arr = values if isinstance(values, pa.Array) else pa.array(values)
            arrays.append(arr)
            fields.append(pa.field(k, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def empty_table(name: str) -> pa.Table:
    return SCHEMAS[name].empty_table()


def markdown_reference() -> str:
    """The README's table reference, rendered from this file's column comments (a test keeps them equal)."""
    import inspect
    import re
    import sys

    comments: dict[tuple[str, str], str] = {}
    table = ""
    for line in inspect.getsource(sys.modules[__name__]).splitlines():
        if m := re.match(r'\s+"(\w+)": pa\.schema', line):
            table = m.group(1)
        elif m := re.match(r'\s+\("(\w+)", pa\..*#\s*(.*)$', line):
            comments[(table, m.group(1))] = m.group(2).strip()
    parts = []
    for name, schema in SCHEMAS.items():
        rows = ["| column | type | meaning |", "|---|---|---|", "| run, sae | string | where the row came from (added by the store) |"]
        for f in schema:
            meaning = comments.get((name, f.name), "").replace("|", "\\|")
            rows.append(f"| {f.name} | {str(f.type).replace('item: ', '')} | {meaning} |")
        parts.append(f"#### `{name}`\n\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"
