"""`sae-sens score`: run generated samples and original examples back through model + SAE."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UsageError
from .base import RichProgress, app
from .executor_options import AddressOpt, ExecutorOpt, GpusPerTaskOpt, SaesPerTaskOpt
from .options import (
    BatchSizeOpt,
    CheckpointEveryOpt,
    DeviceOpt,
    DtypeOpt,
    ForceOpt,
    GeneratorOpt,
    HookOpt,
    MaxLengthOpt,
    ModelOpt,
    RunOpt,
    StoredSaeOpt,
    StoreOpt,
    ThresholdOpt,
    WaitOpt,
    check_unstored_sae_names,
)

# summary key -> column header
COLUMNS = {"generator": "generator", "features": "features", "generated_sensitivity": "generated sens.",
           "original_sensitivity": "original sens.", "original_sensitivity_window": "original (window)",
           "samples": "samples", "truncated": "truncated", "empty": "empty"}


def parse_fractions(text: str) -> tuple[float, ...]:
    """``0.01,0.1,0.5`` -> (0.01, 0.1, 0.5); one clear line for anything else."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--relative-thresholds {text!r} is not a comma-separated list of numbers",
                         "e.g. --relative-thresholds 0.01,0.1,0.5") from None
    return tuple(sorted(set(values)))


@app.command("score")
def score_command(
    sae: StoredSaeOpt,
    run: RunOpt = "default",
    store: StoreOpt = None,
    model: ModelOpt = None,
    hook: HookOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    batch_size: BatchSizeOpt = 32,
    checkpoint_every: CheckpointEveryOpt = None,
    threshold: ThresholdOpt = 1e-6,
    max_length: MaxLengthOpt = 128,
    generator: GeneratorOpt = None,
    force: ForceOpt = False,
    wait: WaitOpt = True,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = 1.0,
    saes_per_task: SaesPerTaskOpt = 0,
    relative_thresholds: Annotated[str, typer.Option(
        "--relative-thresholds", help="Fractions of each feature's top activation at which sensitivity is "
        "also computed (feature_stats.sensitivity_relative), comma-separated.")] = "0.01,0.1,0.5",
) -> None:
    """Score each SAE's generated samples (every generator, or only --generator) and original examples.

    A text is active when its feature's max activation over the text's tokens is above --threshold;
    sensitivity is the share of a feature's generated samples that are active. Writes the `scores` and
    `feature_stats` tables.

    Example: sae-sens score --sae py_4k_topk_s0 --sae py_4k_relu_s0 --run pilot --batch-size 64
    """
    check_unstored_sae_names(store, sae)  # before torch: a typo is named at once
    from ..score import ScoreConfig, run_score, summarize
    from ..stages import ModelOptions
    from ..store import Store
    from .executor_options import make_executor
    from .output import emit

    st = Store(store, wait=wait)
    opts = ModelOptions(model=model, hook=hook, device=device, dtype=dtype, batch_size=batch_size,
                        checkpoint_every=checkpoint_every)
    cfg = ScoreConfig(threshold=threshold, max_length=max_length, generator=generator,
                      relative_thresholds=parse_fractions(relative_thresholds))
    runner = make_executor(executor, address, gpus_per_task, saes_per_task)
    if runner.name != "local":  # every SAE first (one task per model and hook), then the tables
        from ..executors import Work
        from ..pipeline import run_work

        with RichProgress() as progress:
            run_work(st, Work(run, tuple(sae), ("score",), opts, score_cfg=cfg, force=force), runner, progress)
    for name in sae:
        if runner.name == "local":
            with RichProgress() as progress:
                run_score(st, run, name, cfg, opts, force=force, progress=progress)
        summary = summarize(st.read_table(run, name, "scores"), st.read_table(run, name, "feature_stats"))
        emit(list(COLUMNS.values()), [[row[c] for c in COLUMNS] for row in summary], title=f"{run} / {name}")
