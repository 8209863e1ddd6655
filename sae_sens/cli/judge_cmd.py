"""`sae-sens judge`: an LLM checks generated texts (blind pairwise test and direct check)."""

from __future__ import annotations

from typing import Annotated

import typer

from .base import app
from .options import (
    BaseUrlOpt,
    BatchOpt,
    BatchPollOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    GeneratorOpt,
    MaxCostOpt,
    MaxRetriesOpt,
    MaxWorkersOpt,
    ModelOpt,
    PriceInOpt,
    PriceOutOpt,
    RunOpt,
    SaeOpt,
    StoreOpt,
    TemperatureOpt,
    TimeoutOpt,
    WaitOpt,
)


@app.command("judge")
def judge_command(
    sae: SaeOpt,
    store: StoreOpt = None,
    run: RunOpt = "default",
    judge: Annotated[str, typer.Option(
        "--judge", help="The judging LLM, any generator backend: openai:<model> or hf:<model>.")]
    = "openai:gpt-4.1-mini",
    generator: GeneratorOpt = None,
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="pair (blind pairwise test vs a held-out real example) and/or direct (does the text "
        "show the pattern?); repeat for both (default: both).", show_default=False)] = None,
    max_texts: Annotated[int | None, typer.Option(
        "--max-texts", help="Judge at most N generated texts per feature and generator (lowest sample "
        "indices first): a cost cap.", min=1, show_default=False)] = None,
    base_url: BaseUrlOpt = None,
    max_workers: MaxWorkersOpt = 10,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Completion tokens per answer.", min=1)] = 128,
    temperature: TemperatureOpt = 0.0,
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = 6,
    price_in: PriceInOpt = None,
    price_out: PriceOutOpt = None,
    max_cost: MaxCostOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show requests, estimated tokens and cost; send nothing.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the pair order and held-out assignment.")] = 42,
    model: ModelOpt = None,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    batch: BatchOpt = False,
    batch_poll: BatchPollOpt = 60.0,
    force: ForceOpt = False,
    wait: WaitOpt = True,
) -> None:
    """Ask an LLM whether each generated text is a fair instance of its feature's pattern.

    Pairwise: the judge sees the examples the generator saw, then the generated text and a held-out
    real example (drawn by collect, never shown to the generator) in random order, and picks the real
    one; the share it gets wrong is the indistinguishable rate (0.5 = cannot tell). Direct: yes/no and
    a one-line reason. Writes the `judgments` table; `sae-sens report --validity` reads it.

    Example: sae-sens judge --sae py_4k_topk_s0 --judge openai:gpt-4.1 --generator openai:gpt-4.1-mini --max-cost 1
    """
    from ..judge import JudgeConfig, plan_judge, run_judge
    from ..stages import ModelOptions
    from ..store import Store
    from .base import RichProgress
    from .output import console, emit, money

    cfg = JudgeConfig(
        judge=judge, generator=generator, tasks=tuple(dict.fromkeys(task)) if task else ("pair", "direct"),
        max_texts=max_texts,
        base_url=base_url, temperature=temperature, max_tokens=max_tokens, seed=seed, max_workers=max_workers,
        timeout=timeout, max_retries=max_retries, price_in=price_in, price_out=price_out, max_cost=max_cost,
        batch_size=batch_size, device=device, dtype=dtype, batch=batch, batch_wait=wait, batch_poll_s=batch_poll,
    )
    if batch and cfg.spec.kind != "openai":
        from ..errors import UsageError

        raise UsageError(f"--batch needs an openai: judge, not {cfg.spec.label!r}",
                         "drop --batch, or use --judge openai:<model>")
    st = Store(store, wait=wait)
    opts = ModelOptions(model=model, device=device, dtype=dtype)
    if dry_run:
        with RichProgress() as progress:
            plans = [plan_judge(st, run, s, cfg, opts, progress) for s in sae]
        cols = ["sae", "judge", "judgements", "pairs", "done", "requests", "est_prompt_tokens", "est_completion_tokens"]
        emit(cols + ["est_cost"], [[p[c] for c in cols] + [money(p["est_cost_usd"])] for p in plans],
             title="dry run: nothing sent")
        costs = [p["est_cost_usd"] for p in plans]
        total = "n/a (pass --price-in/--price-out)" if None in costs else f"${sum(costs):.4f}"
        console.print(f"{sum(p['requests'] for p in plans)} requests, estimated cost {total}", highlight=False)
        return
    rows = []
    with RichProgress() as progress:
        for s in sae:
            out = run_judge(st, run, s, cfg, opts, force=force, progress=progress)
            ex = out.extra
            rows.append([s, cfg.spec.label, "skipped (fresh)" if out.skipped else "done", ex.get("n_pairs"),
                         ex.get("n_direct"), ex.get("n_unparsed"), ex.get("n_requests"),
                         (ex.get("n_cached") or 0) + (ex.get("n_resumed") or 0), money(ex.get("cost_usd"))])
    emit(["sae", "judge", "status", "pairs", "direct", "unparsed", "requests", "reused", "cost"], rows,
         title=f"judge · run {run}")
