"""``run_score``: the score stage against the store (freshness, inputs, records, checkpoint)."""

from __future__ import annotations

import shutil

import pyarrow as pa

from ..hashing import hash_config
from ..progress import NULL_PROGRESS, ProgressSink, warn
from ..stages import (
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
from ..store import Store
from .config import ScoreConfig
from .encode import Checkpoint
from .tables import score_tables


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
