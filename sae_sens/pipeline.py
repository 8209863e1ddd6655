"""All four stages for one or many SAEs, as the original tool's ``run.py`` does.

Stages run stage-major (collect every SAE, then generate, then score) so that each model is
loaded once: the subject model for collect and score, the generator model for ``hf:`` generation.
SAEs of one model and hook share a single collect pass over the corpus.
Every stage skips work that is already fresh, so rerunning an interrupted or finished ``run`` is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .progress import NULL_PROGRESS, ProgressSink
from .stages import ModelOptions, StageOutcome
from .store import Store

if TYPE_CHECKING:  # the stage modules import torch; load them only when a run starts
    from .collect import CollectConfig
    from .generate import GenerateConfig
    from .score import ScoreConfig


@dataclass
class PipelineResult:
    sae: str
    collect: StageOutcome
    generate: StageOutcome
    score: StageOutcome


def run_pipeline(
    store: Store,
    run: str,
    saes: list[str],
    collect_cfg: CollectConfig,
    generate_cfg: GenerateConfig,
    score_cfg: ScoreConfig,
    opts: ModelOptions,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> list[PipelineResult]:
    from .collect import run_collect_many
    from .generate import run_generate_many
    from .score import run_score

    collected = run_collect_many(store, run, saes, collect_cfg, opts, force=force, progress=progress)
    generated = run_generate_many(store, run, saes, generate_cfg, force=force, progress=progress)
    scored = [run_score(store, run, s, score_cfg, opts, force=force, progress=progress) for s in saes]
    return [PipelineResult(*row) for row in zip(saes, collected, generated, scored, strict=True)]
