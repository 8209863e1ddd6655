"""The collect stage: one streaming pass over the corpus, then examples for any selection.

The pass (``collect_pass``) reads every token once, encodes it with the SAE and, for every latent,
keeps its firing count, its max activation, its top peaks and a weighted reservoir for the
importance-weighted samples. Nothing is stored densely over the corpus: memory is
O(latents x examples kept). Its outputs (``latents`` and ``candidates`` tables) hold every latent,
so a later ``collect`` with another selection only re-runs the few windows its examples come from.

Semantics follow SAEBench's autointerp collection (which the original tool uses):

- a peak is never within ``buffer`` tokens of the start or end of its context;
- top windows are the largest peaks with no two in the same context within ``buffer`` tokens of
  each other (greedy, descending, over the whole corpus); ``n_top_candidates`` are drawn;
- importance-weighted peaks are drawn without replacement with probability proportional to the
  squared activation, among peak positions whose activation is below the weakest top peak;
- a random ``n_top_ex_for_generation`` / ``n_iw_ex_for_generation`` of the candidates are kept;
- tokens above ``act_threshold_frac`` of the strongest top peak are marked ``{{like this}}``.

The package, one job per module, in the order data flows through it:

- ``config``: ``CollectConfig`` and the stage names;
- ``tracker``: ``PeakTracker``, the streaming per-latent statistics (pure tensor code), and ``PassResult``;
- ``passes``: the pass over a corpus's windows (model, SAE encodes, trackers, checkpoints);
- ``examples``: feature selection and the ``examples`` rows;
- ``stage``: the stage glue to the store (``run_collect``, ``run_collect_many``).
"""

from __future__ import annotations

from .config import ALIVE_RULES, PASS_STAGE, PASS_TASK, SELECT_STAGE, CollectConfig
from .examples import (
    WantedExample,
    _split_prefixes,
    alive_latents,
    build_examples,
    choose_examples,
    example_rows,
    features_table,
    mark_text,
    select_features,
    token_strings,
    token_strings_many,
)
from .passes import collect_pass, collect_pass_many, window_batch
from .stage import run_collect, run_collect_many
from .tracker import NEG_INF, PassResult, PeakTracker

__all__ = [
    "ALIVE_RULES", "NEG_INF", "PASS_STAGE", "PASS_TASK", "SELECT_STAGE", "CollectConfig", "PassResult", "PeakTracker",
    "WantedExample", "_split_prefixes", "alive_latents", "build_examples", "choose_examples", "collect_pass", "collect_pass_many",
    "example_rows", "features_table", "mark_text", "run_collect", "run_collect_many", "select_features",
    "token_strings", "token_strings_many", "window_batch",
]
