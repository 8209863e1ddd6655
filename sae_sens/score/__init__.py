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

The package: ``config``, ``texts`` (the text rules), ``encode`` (model + SAE), ``tables`` (scores
rows), ``stats`` (feature_stats), ``stage`` (the store glue).
"""

from .config import DEFAULT_RELATIVE_THRESHOLDS, ScoreConfig
from .encode import Checkpoint, Trace, _score_batch, score_sequences  # noqa: F401  (_score_batch: tests)
from .stage import run_score
from .stats import (
    DENSE_BASE_RATE,
    add_reference_stats,
    auroc,
    feature_stats,
    relative_sensitivities,
    summarize,
)
from .tables import score_tables
from .texts import (
    decode_each,
    original_builder_text,
    original_marked_text,
    original_text,
    strip_marks,
    window_ids,
)

__all__ = ['DEFAULT_RELATIVE_THRESHOLDS', 'ScoreConfig', 'strip_marks', 'original_text', 'original_marked_text', 'original_builder_text', 'decode_each', 'window_ids', 'Trace', 'Checkpoint', 'score_sequences', 'score_tables', 'relative_sensitivities', 'feature_stats', 'DENSE_BASE_RATE', 'auroc', 'add_reference_stats', 'summarize', 'run_score']
