"""`sae-sens generate`: new texts per feature from an LLM (OpenAI-compatible or local) or an imported table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .base import app
from .options import (
    BaseUrlOpt,
    BatchOpt,
    BatchPollOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    FromTableOpt,
    GeneratorOpt,
    LlmModelOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    MaxTokensOpt,
    MaxWorkersOpt,
    PriceInOpt,
    PriceOutOpt,
    RunOpt,
    SamplesPerFeatureOpt,
    StoredSaeOpt,
    StoreOpt,
    TemperatureOpt,
    TimeoutOpt,
    WaitOpt,
)


def resolve_generator(generator: str | None, llm_model: str | None, from_table: Path | None) -> str | None:
    """``--llm-model`` (the original tool's flag) names the OpenAI model when --generator does not."""
    if llm_model is None or from_table is not None:
        return generator
    if generator in (None, "", "openai"):
        return f"openai:{llm_model}"
    if generator.startswith("openai:"):  # type: ignore[union-attr]
        if generator != f"openai:{llm_model}":
            raise UsageError(f"--generator {generator} and --llm-model {llm_model} disagree", "pass only one of them")
        return generator
    raise UsageError("--llm-model only applies to openai generators", f"drop it, or use --generator openai:{llm_model}")


@app.command("generate")
def generate_command(
    sae: StoredSaeOpt,
    store: StoreOpt = None,
    run: RunOpt = "default",
    generator: GeneratorOpt = None,
    llm_model: LlmModelOpt = None,
    from_table: FromTableOpt = None,
    base_url: BaseUrlOpt = None,
    samples_per_feature: SamplesPerFeatureOpt = 10,
    max_workers: MaxWorkersOpt = 10,
    temperature: TemperatureOpt = 1.0,
    max_tokens: MaxTokensOpt = 2000,
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 6,
    prompt_template: Annotated[Path | None, typer.Option(
        "--prompt-template", help="Template file with '=== system ===' and '=== user ===' sections "
        "(default: sae_sens/prompts/generate.txt).", show_default=False)] = None,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
    max_cost: MaxCostOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show requests, estimated tokens and cost; send nothing.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (change it to draw new texts).")] = 42,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    negatives: Annotated[bool, typer.Option(
        "--negatives", help="Ask for near misses instead: texts that share the examples' topic, register and "
        "vocabulary but not the pattern (label negatives:<generator>; score gives feature_stats.specificity).")] = False,
    passages: Annotated[int, typer.Option(
        "--passages", min=1, help="baseline:<corpus>: random held-out passages shared by every feature.")] = 200,
    batch: BatchOpt = False,
    batch_poll: BatchPollOpt = 60.0,
    force: ForceOpt = False,
    wait: WaitOpt = True,
) -> None:
    """Ask an LLM for new texts like each feature's examples (or import them), per SAE.

    Example: sae-sens generate --sae py_4k_topk_s0 --generator openai:gpt-4.1-mini --max-cost 2

    Local server: sae-sens generate --sae py_4k_topk_s0 --generator openai:qwen2.5 --base-url http://localhost:11434/v1

    Import: sae-sens generate --sae py_4k_topk_s0 --from-table outputs.csv --generator claude-opus

    Controls without an LLM, from documents collect did not read: corpus:<corpus> (real passages with the
    activating tokens), baseline:<corpus> (random passages: the base rate), inject:<corpus> (one
    activating token put into unrelated passages: is it a token detector?).

    Controls: sae-sens generate --sae py_4k_topk_s0 --generator baseline:demo:wiki-heldout

    Near misses: sae-sens generate --sae py_4k_topk_s0 --generator openai:gpt-4.1-mini --negatives

    Half price, through the Batch API (--no-wait submits and exits with status 75; the same command
    without it later collects the answers):

    sae-sens generate --sae py_4k_topk_s0 --generator openai:gpt-4.1-mini --batch --no-wait

    Answers are journaled as they arrive and cached by prompt: rerunning after a crash or Ctrl-C sends only what is missing, and nothing is ever paid for twice.
    """
    from ..generate import GenerateConfig, plan_generate, run_generate_many
    from ..generate.config import RETRIEVAL_KINDS
    from ..store import Store
    from .base import RichProgress
    from .output import console, emit, money

    label = resolve_generator(generator, llm_model, from_table)
    if negatives:
        from ..generate import parse_generator

        label = "negatives:" + parse_generator(label, from_table).label
    cfg = GenerateConfig(
        generator=label, n_passages=passages, batch=batch, batch_wait=wait, batch_poll_s=batch_poll,
        from_table=from_table, base_url=base_url, samples_per_feature=samples_per_feature, max_workers=max_workers,
        temperature=temperature, max_tokens=max_tokens, timeout=timeout, max_retries=max_retries,
        prompt_template=prompt_template, price_in=price_in, price_out=price_out, max_cost=max_cost, seed=seed,
        batch_size=batch_size, device=device, dtype=dtype,
    )
    if batch and cfg.spec.kind != "openai":  # an unknown generator is a usage error before anything is read
        raise UsageError(f"--batch needs an openai: generator, not {cfg.spec.label!r}",
                         "drop --batch, or use --generator openai:<model>")
    st = Store(store, wait=wait)
    if dry_run:
        plans = [plan_generate(st, run, s, cfg) for s in sae]
        if cfg.spec.kind == "table":
            emit(["sae", "generator", "features", "rows", "imported", "dropped"],
                 [[p[k] for k in ("sae", "generator", "features", "rows", "imported", "dropped")] for p in plans],
                 title="dry run: import")
            for p in plans:
                for w in p["warnings"]:
                    console.print(f"[yellow]warning[/]: {p['sae']}: {w}", highlight=False)
            return
        cols = ["sae", "generator", "features", "done", "requests", "est_prompt_tokens", "est_completion_tokens"]
        emit(cols + ["est_cost"], [[p[c] for c in cols] + [money(p["est_cost_usd"])] for p in plans],
             title="dry run: nothing sent")
        costs = [p["est_cost_usd"] for p in plans]
        total = "n/a (pass --price-in/--price-out)" if None in costs else f"${sum(costs):.4f}"
        console.print(f"{sum(p['requests'] for p in plans)} requests, estimated cost {total}", highlight=False)
        return
    with RichProgress() as progress:
        outcomes = run_generate_many(st, run, list(sae), cfg, force=force, progress=progress)
    rows, spent, unpriced = [], 0.0, False
    for s, out in zip(sae, outcomes, strict=True):
        ex = out.extra
        if not out.skipped:
            spent += ex.get("spent_usd") or 0.0
            unpriced |= ex.get("spent_usd") is None and cfg.spec.kind not in ("table", *RETRIEVAL_KINDS)
        sent = {"table": "imported", **dict.fromkeys(RETRIEVAL_KINDS, "retrieved")}.get(cfg.spec.kind,
                                                                                     ex.get("n_requests", 0))
        rows.append([s, cfg.spec.label, "skipped (fresh)" if out.skipped else "done", ex.get("n_features"),
                     out.rows.get("generations"), sent, ex.get("n_cached", 0) + ex.get("n_resumed", 0),
                     ex.get("n_retries", 0), money(ex.get("cost_usd"))])
    emit(["sae", "generator", "status", "features", "texts", "requests", "reused", "retries", "table cost"], rows,
         title=f"generate · run {run}")
    if cfg.spec.kind not in ("table", *RETRIEVAL_KINDS):
        console.print(f"spent this time: {'n/a (unknown price)' if unpriced else f'${spent:.4f}'}", highlight=False)
