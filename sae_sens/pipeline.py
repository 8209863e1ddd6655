"""All four stages for one or many SAEs, as the original tool's ``run.py`` does, on an executor.

The local executor (default) runs stages stage-major (collect every SAE, then generate, then score)
so that each model is loaded once; the Ray executor runs each (model, hook) group of SAEs as one
task on a cluster. Either way SAEs of one model and hook share a single collect pass over the
corpus, and every stage skips work that is already fresh, so rerunning an interrupted or finished
``run`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .executors import Executor, LocalExecutor, SaeResult, Work
from .progress import NULL_PROGRESS, ProgressSink
from .stages import ModelOptions
from .store import Store

if TYPE_CHECKING:  # the stage modules import torch; load them only when a run starts
    from .collect import CollectConfig
    from .generate import GenerateConfig
    from .score import ScoreConfig

PipelineResult = SaeResult  # .sae, .collect, .generate, .score


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
    executor: Executor | None = None,
) -> list[PipelineResult]:
    """collect -> generate -> score for ``saes``; one result per SAE, in order."""
    work = Work(run, tuple(saes), ("collect", "generate", "score"), opts, collect_cfg, generate_cfg, score_cfg, force)
    return run_work(store, work, executor, progress)


def run_work(store: Store, work: Work, executor: Executor | None = None,
             progress: ProgressSink = NULL_PROGRESS) -> list[SaeResult]:
    """Any subset of the stages (``sae-sens collect`` / ``score`` with ``--executor``), in order.
    Results are per distinct SAE, in the order first given."""
    return (executor or LocalExecutor()).execute(store, work, progress)
