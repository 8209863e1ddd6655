"""The local executor: every stage in this process, stage-major (collect every SAE, then generate,
then score), so each model is loaded once and SAEs of one model and hook share one collect pass.
This is what ``sae-sens run`` did before executors existed, and still the default."""

from __future__ import annotations

from ..progress import ProgressSink
from ..store import Store
from .base import SaeResult, Work


class LocalExecutor:
    name = "local"

    def execute(self, store: Store, work: Work, progress: ProgressSink) -> list[SaeResult]:
        return run_stages_here(store, work, progress)


def run_stages_here(store: Store, work: Work, progress: ProgressSink) -> list[SaeResult]:
    """``work``'s stages for its SAEs, in this process; also the body of one Ray group task."""
    # looked up at call time (not at import) so the stage modules load only when work starts
    from ..collect import run_collect_many
    from ..generate import run_generate_many
    from ..score import run_score

    saes = list(dict.fromkeys(work.saes))
    results = [SaeResult(s) for s in saes]
    if "collect" in work.stages:
        outs = run_collect_many(store, work.run, saes, work.collect_cfg, work.opts,  # type: ignore[arg-type]
                                force=work.force, progress=progress)
        for r, o in zip(results, outs, strict=True):
            r.outcomes["collect"] = o
    if "generate" in work.stages:
        outs = run_generate_many(store, work.run, saes, work.generate_cfg,  # type: ignore[arg-type]
                                 force=work.force, progress=progress)
        for r, o in zip(results, outs, strict=True):
            r.outcomes["generate"] = o
    if "score" in work.stages:
        for r in results:
            r.outcomes["score"] = run_score(store, work.run, r.sae, work.score_cfg,  # type: ignore[arg-type]
                                            work.opts, force=work.force, progress=progress)
    return results
