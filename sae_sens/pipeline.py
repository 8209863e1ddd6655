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


def plan_run(store: Store, run: str, saes: list[str], collect_cfg: CollectConfig,
             generate_cfg: GenerateConfig) -> list[dict[str, object]]:
    """``run --dry-run``: per SAE, whether collect would run and what generate would send and cost,
    computing nothing and sending nothing (no model is loaded). Over an SAE already collected with
    every requested feature, generate's own plan (exact prompts, the cache and journal counted);
    otherwise an estimate over the selection with stand-in examples of the window's length."""
    from .generate import plan_generate, plan_uncollected

    out: list[dict[str, object]] = []
    for sae in dict.fromkeys(saes):
        collected: set[int] = set()
        if store.has_table(run, sae, "examples") and store.manifest(run, sae).stage("collect") is not None:
            collected = set(store.read_table(run, sae, "examples")["feature_index"].to_pylist())
        wanted = set(collect_cfg.feature_ids) if collect_cfg.feature_ids is not None else None
        enough = bool(collected) and not collect_cfg.replace and (
            wanted <= collected if wanted is not None else len(collected) >= (collect_cfg.features or 0))
        if enough:
            plan = dict(plan_generate(store, run, sae, generate_cfg))
            collect = f"collected ({len(collected)} features)"
        else:
            features = sorted(wanted) if wanted is not None else list(range(collect_cfg.features or 0))
            plan = {"sae": sae, "generator": generate_cfg.spec.label, **plan_uncollected(
                features, collect_cfg.n_top_ex_for_generation, collect_cfg.n_iw_ex_for_generation,
                2 * collect_cfg.buffer + 1, generate_cfg), "estimate": True}
            collect = f"would run ({collect_cfg.total_tokens:,} tokens of {collect_cfg.corpus})"
        out.append({"collect": collect, **plan})
    return out
