"""`sae-sens collect`: one pass over a corpus per model (shared by its SAEs), then examples for the selected features."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .base import app
from .executor_options import AddressOpt, ExecutorOpt, GpusPerTaskOpt, SaesPerTaskOpt
from .options import (
    AliveRuleOpt,
    BatchSizeOpt,
    CheckpointEveryOpt,
    CollectSeedOpt,
    ContextSizeOpt,
    CorpusOpt,
    DeadMinFiringsOpt,
    DeviceOpt,
    DtypeOpt,
    FeatureIdsOpt,
    FeaturesOpt,
    ForceOpt,
    FromSaebenchOpt,
    HookOpt,
    ModelOpt,
    NIwOpt,
    NTopOpt,
    ReplaceOpt,
    RunOpt,
    SaebenchFileOpt,
    SaeOpt,
    SplitOpt,
    StoreOpt,
    TextColumnOpt,
    TotalTokensOpt,
    WaitOpt,
)


def parse_feature_ids(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UsageError(f"--feature-ids {text!r} is not a list of integers", "write them like 3,17,42") from None
    if not ids:
        raise UsageError("--feature-ids is empty", "write them like 3,17,42")
    return ids


def selection(features: int, feature_ids: str | None) -> dict[str, Any]:
    """``--feature-ids`` wins over ``--features``: the CollectConfig fields for either choice."""
    if feature_ids:
        return {"features": None, "feature_ids": parse_feature_ids(feature_ids)}
    return {"features": features, "feature_ids": None}


@app.command("collect")
def collect_command(
    sae: SaeOpt,
    corpus: CorpusOpt = "monology/pile-uncopyrighted",
    split: SplitOpt = "train",
    text_column: TextColumnOpt = "text",
    total_tokens: TotalTokensOpt = 2_000_000,
    context_size: ContextSizeOpt = 128,
    features: FeaturesOpt = 50,
    feature_ids: FeatureIdsOpt = None,
    replace: ReplaceOpt = False,
    n_top: NTopOpt = 10,
    n_iw: NIwOpt = 5,
    dead_min_firings: DeadMinFiringsOpt = 15,
    alive_rule: AliveRuleOpt = "original",
    seed: CollectSeedOpt = 42,
    from_saebench: FromSaebenchOpt = False,
    saebench_file: SaebenchFileOpt = None,
    store: StoreOpt = None,
    run: RunOpt = "default",
    model: ModelOpt = None,
    hook: HookOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = 32,
    checkpoint_every: CheckpointEveryOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = True,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = 1.0,
    saes_per_task: SaesPerTaskOpt = 0,
) -> None:
    """Find each feature's top activating windows and importance-weighted samples.

    One pass over the corpus records every latent's statistics; a later selection (--features / --feature-ids) reuses it without running the model over the corpus again. Several --sae of one model and hook share that pass: the model runs over the corpus once for all of them.

    Example:

        sae-sens collect --sae py_4k_topk_s0 --corpus monology/pile-uncopyrighted --features 50

        sae-sens collect --sae ./my_sae --corpus ./texts/ --total-tokens 200000 --feature-ids 3,17

        sae-sens collect --sae py_4k_topk_s0 --from-saebench --features 20
    """
    from ..collect import CollectConfig, run_collect_many
    from ..collect.saebench import HUB, run_saebench_import
    from ..stages import ModelOptions
    from ..store import Store
    from .base import RichProgress
    from .executor_options import make_executor
    from .output import emit

    if not sae:
        raise UsageError("no SAE given", "pass --sae NAME (repeat for several)")
    cfg = CollectConfig(
        corpus=corpus, split=split, text_column=text_column, total_tokens=total_tokens, context_size=context_size,
        **selection(features, feature_ids), n_top_ex_for_generation=n_top, n_iw_ex_for_generation=n_iw, dead_min_firings=dead_min_firings,
        alive_rule=alive_rule, seed=seed, replace=replace,
    )
    opts = ModelOptions(model=model, hook=hook, device=device, dtype=dtype, batch_size=batch_size,
                        checkpoint_every=checkpoint_every)
    st = Store(store, wait=wait)
    runner = make_executor(executor, address, gpus_per_task, saes_per_task)
    if (from_saebench or saebench_file) and runner.name != "local":
        raise UsageError("--from-saebench imports files and runs no model", "drop --executor")
    rows = []
    with RichProgress() as progress:
        if from_saebench or saebench_file:
            source = str(saebench_file) if saebench_file else HUB
            outcomes = [(run_saebench_import(st, run, name, source, cfg, force=force, progress=progress), "saebench")
                        for name in sae]
        else:
            # SAEs of one model and hook share a single pass over the corpus
            if runner.name == "local":
                done = run_collect_many(st, run, sae, cfg, opts, force=force, progress=progress)
            else:
                from ..executors import Work
                from ..pipeline import run_work

                by_sae = {r.sae: r.collect for r in run_work(
                    st, Work(run, tuple(sae), ("collect",), opts, collect_cfg=cfg, force=force), runner, progress)}
                done = [by_sae[name] for name in sae]  # type: ignore[misc]  # collect ran for each
            outcomes = [(out, "reused" if out.extra.get("pass_skipped") else "ran") for out in done]
        for name, (out, how) in zip(sae, outcomes, strict=True):
            if out.skipped:
                how = "up to date"
            ex = out.extra
            rows.append([name, ex.get("n_latents"), ex.get("n_alive"), ex.get("n_selected"),
                         ex.get("n_examples", out.rows.get("examples")), how])
    emit(["sae", "latents", "alive", "selected", "examples", "pass"], rows, title=f"collect · run {run}")
