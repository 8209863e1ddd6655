"""`sae-sens run`: collect, generate and score for one or many SAEs, then the summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from .base import app
from .executor_options import AddressOpt, ExecutorOpt, GpusPerTaskOpt, SaesPerTaskOpt
from .options import (
    AliveRuleOpt,
    BaseUrlOpt,
    BatchOpt,
    BatchPollOpt,
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
    FromTableOpt,
    GeneratorOpt,
    HookOpt,
    LlmModelOpt,
    MaxCostOpt,
    MaxLengthOpt,
    MaxTokensOpt,
    MaxWorkersOpt,
    ModelOpt,
    NIwOpt,
    NTopOpt,
    ReplaceOpt,
    RunOpt,
    SaebenchFileOpt,
    SaeOpt,
    SamplesPerFeatureOpt,
    SplitOpt,
    StoreOpt,
    TextColumnOpt,
    ThresholdOpt,
    TotalTokensOpt,
    WaitOpt,
)

if TYPE_CHECKING:
    from ..collect import CollectConfig
    from ..generate import GenerateConfig
    from ..store import Store

SUMMARY_COLUMNS = ("sae", "generator", "features", "sensitivity", "ci_low", "ci_high", "original_sensitivity",
                   "original_sensitivity_window", "share_below_half")


@app.command("run")
def run_command(
    sae: SaeOpt,
    store: StoreOpt = None,
    run: RunOpt = "default",
    model: ModelOpt = None,
    hook: HookOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = 32,
    checkpoint_every: CheckpointEveryOpt = None,
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
    generator: GeneratorOpt = None,
    llm_model: LlmModelOpt = None,
    from_table: FromTableOpt = None,
    base_url: BaseUrlOpt = None,
    samples_per_feature: SamplesPerFeatureOpt = 10,
    max_workers: MaxWorkersOpt = 10,
    max_cost: MaxCostOpt = None,
    max_tokens: MaxTokensOpt = 2000,
    batch: BatchOpt = False,
    batch_poll: BatchPollOpt = 60.0,
    threshold: ThresholdOpt = 1e-6,
    max_length: MaxLengthOpt = 128,
    force: ForceOpt = False,
    wait: WaitOpt = True,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = 1.0,
    saes_per_task: SaesPerTaskOpt = 0,
    output_path: Annotated[Path | None, typer.Option(
        "--output-path", file_okay=False, show_default=False,
        help="Also write the results in the original tool's layout: DIR/<sae>/ with its six CSVs "
             "(as `sae-sens export --format original`).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="A line when each step starts and ends.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show per SAE whether collect would run and what generate would send and cost "
        "(estimated before collect); run nothing, send nothing.")] = False,
) -> None:
    """Run every stage (collect -> generate -> score) for one or many SAEs, then print the summary.

    Fresh stages are skipped, so rerunning after an interruption only does what is missing.

    Example (the original tool's run.py):

        sae-sens run --model EleutherAI/pythia-160m-deduped --sae py_4k_btopk_s0 --sae py_4k_gated_s0 --features 50

    Example (offline, the demo model as generator):

        sae-sens run --sae smol_1152_topk --corpus demo:wiki --total-tokens 100000 --features 5 --generator hf:demo:smollm2

    Example (the original tool's command line, read as it is; a note names each sae-sens spelling):

        sae-sens run --model pythia-160m-deduped --sae-names py_4k_btopk_s0 py_4k_gated_s0 --features 50 --output-path evals/mine

    Example (one Ray task per model and hook, on the cluster `ray start --head` made):

        sae-sens run --sae py_4k_topk_s0 --sae gem_4k_topk_s0 --executor ray --address auto --gpus-per-task 1

    Example (what it would send and cost, nothing run):

        sae-sens run --sae py_4k_topk_s0 --features 100 --generator openai:gpt-4.1-mini --dry-run
    """
    from ..generate import GenerateConfig
    from .generate_cmd import resolve_generator

    # checked before collect runs (and before torch is imported): a typo must not cost a corpus pass
    generate_cfg = GenerateConfig(
        generator=resolve_generator(generator, llm_model, from_table), from_table=from_table, base_url=base_url,
        samples_per_feature=samples_per_feature, max_workers=max_workers, max_cost=max_cost, max_tokens=max_tokens,
        n_top=n_top, n_iw=n_iw, device=device, dtype=dtype, batch_size=batch_size,  # hf: prompts per generate() call
        batch=batch, batch_wait=wait, batch_poll_s=batch_poll,
    )
    if batch and generate_cfg.spec.kind != "openai":
        raise UsageError(f"--batch needs an openai: generator, not {generate_cfg.spec.label!r}",
                         "drop --batch, or use --generator openai:<model>")
    generate_cfg.spec  # noqa: B018  (parsing the generator raises UsageError on an unknown one)

    from ..collect import CollectConfig
    from ..pipeline import run_pipeline
    from ..report import connect, summarize
    from ..score import ScoreConfig
    from ..stages import ModelOptions
    from ..store import Store
    from .base import RichProgress
    from .collect_cmd import selection
    from .executor_options import make_executor
    from .output import emit

    collect_cfg = CollectConfig(
        corpus=corpus, split=split, text_column=text_column, total_tokens=total_tokens, context_size=context_size,
        **selection(features, feature_ids), n_top_ex_for_generation=n_top, n_iw_ex_for_generation=n_iw, replace=replace,
        dead_min_firings=dead_min_firings, alive_rule=alive_rule, seed=seed,
    )
    score_cfg = ScoreConfig(threshold=threshold, max_length=max_length)
    opts = ModelOptions(model=model, hook=hook, device=device, dtype=dtype, batch_size=batch_size,
                        checkpoint_every=checkpoint_every)
    st = Store(store, wait=wait)
    if dry_run:
        _dry_run(st, run, list(sae), collect_cfg, generate_cfg)
        return
    runner = make_executor(executor, address, gpus_per_task, saes_per_task)
    imported = bool(from_saebench or saebench_file)
    if imported and runner.name != "local":
        raise UsageError("--from-saebench imports files and runs no collect pass", "drop --executor")
    with RichProgress(verbose=verbose) as progress:
        if imported:  # SAEBench's published examples replace the collect pass
            from ..collect.saebench import HUB, run_saebench_import
            from ..executors import Work
            from ..pipeline import run_work

            source = str(saebench_file) if saebench_file else HUB
            collected = {name: run_saebench_import(st, run, name, source, collect_cfg, force=force, progress=progress)
                         for name in dict.fromkeys(sae)}
            results = run_work(st, Work(run, tuple(sae), ("generate", "score"), opts, collect_cfg, generate_cfg,
                                        score_cfg, force), runner, progress)
            for r in results:
                r.outcomes = {"collect": collected[r.sae], **r.outcomes}
        else:
            results = run_pipeline(st, run, list(sae), collect_cfg, generate_cfg, score_cfg, opts, force=force,
                                   progress=progress, executor=runner)
        if output_path is not None:
            from ..report.original_export import export_original

            progress.log(f"writing the original tool's layout to {output_path}")
            export_original(st, output_path, [run], list(sae), [generate_cfg.spec.label], flat=True)
    stage_rows = [[r.sae] + ["up to date" if o.skipped else "ran" for o in (r.collect, r.generate, r.score) if o]
                  for r in results]
    emit(["sae", "collect", "generate", "score"], stage_rows, title=f"run {run}")
    summary = summarize(connect(st, runs=[run], saes=list(sae), status=False),
                        generators=[generate_cfg.spec.label])
    cols = [c for c in SUMMARY_COLUMNS if c in summary.column_names]
    emit(cols, [list(r) for r in zip(*(summary[c].to_pylist() for c in cols), strict=True)],
         title="sensitivity (sae-sens report for more)")


def _dry_run(st: Store, run: str, saes: list[str], collect_cfg: CollectConfig, generate_cfg: GenerateConfig) -> None:
    from ..pipeline import plan_run
    from .output import console, emit, money

    plans = plan_run(st, run, saes, collect_cfg, generate_cfg)
    cols = ["sae", "collect", "features", "done", "requests", "est_prompt_tokens", "est_completion_tokens"]
    emit(cols + ["est_cost"], [[p[c] for c in cols] + [money(p["est_cost_usd"])] for p in plans],
         title="dry run: nothing run, nothing sent")
    costs = [p["est_cost_usd"] for p in plans]
    total = None if None in costs else sum(float(str(c)) for c in costs)
    line = f"{sum(int(str(p['requests'])) for p in plans)} requests to {generate_cfg.spec.label}, estimated cost " + (
        "n/a (pass --price-in/--price-out)" if total is None else f"${total:.4f}")
    if any(p.get("estimate") for p in plans):
        line += "; before collect, prompts are estimated from examples of the window's length"
    if generate_cfg.max_cost is not None and total is not None and total > generate_cfg.max_cost:
        line += f"; more than --max-cost {generate_cfg.max_cost:g}: the run would stop before sending"
    console.print(line, highlight=False)  # wrapped at the terminal's width, between words
