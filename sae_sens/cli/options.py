"""Options shared by several commands, defined once (``Annotated`` aliases, as the ``hf`` CLI does).

SAE names, devices and dtypes are checked by option callbacks while the command line is parsed, so a
typo fails in well under a second, before the command imports torch or loads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DTYPES = ("float32", "bfloat16", "float16")


def check_sae_names(ctx: typer.Context, names: list[str] | None) -> list[str] | None:
    """Every ``--sae`` must resolve (SAEBench grid, GemmaScope, sae_lens, packaged, a folder); names.py is torch-free."""
    from ..names import resolve

    if ctx.resilient_parsing:  # shell completion: never fail
        return names
    for name in names or ():
        resolve(name)  # raises UnknownSaeError (exit 2) with the nearest names
    return names


def check_unstored_sae_names(store: Path | None, names: list[str]) -> None:
    """For a command that reads an SAE's tables first and then loads it (score): a name the store holds is
    checked by the stage itself (a damaged table, a missing one); any other must at least resolve,
    so a typo fails at once with the nearest names, before torch is imported."""
    from ..names import resolve
    from ..store import Store

    st = Store(store)
    runs = st.runs()
    for name in names:
        if not any(st.has_table(r, name, "examples") for r in runs):
            resolve(name)


def complete_sae_names(incomplete: str) -> list[str]:
    """Shell completion of ``--sae``: the SAEBench grid and packaged SAEs (GemmaScope names need an L0)."""
    from ..names import packaged_names, saebench_names

    return [n for n in saebench_names() + packaged_names() if n.startswith(incomplete)]


def check_device_option(ctx: typer.Context, device: str) -> str:
    from ..devices import check_device

    return device if ctx.resilient_parsing else check_device(device)


def check_dtype(ctx: typer.Context, dtype: str | None) -> str | None:
    if not ctx.resilient_parsing and dtype is not None and dtype != "auto" and dtype not in DTYPES:
        from ..errors import UsageError

        raise UsageError(f"--dtype {dtype!r} is not a dtype", f"use one of {', '.join(DTYPES)}")
    return dtype

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", envvar="SAE_SENS_STORE", help="Artifact store folder (default ./evals).", show_default=False),
]
RunOpt = Annotated[str, typer.Option("--run", "-r", envvar="SAE_SENS_RUN", help="Run name inside the store.")]
SaeOpt = Annotated[
    list[str],
    typer.Option("--sae", "-s", help="SAE name or folder; repeat for several (e.g. py_4k_topk_s0).", show_default=False,
                 callback=check_sae_names, autocompletion=complete_sae_names),
]
# for commands that start from the store's tables: generate never loads the SAE (a name the store
# lacks is "run collect first"); score checks the names it lacks with check_unstored_sae_names
StoredSaeOpt = Annotated[
    list[str],
    typer.Option("--sae", "-s", help="SAE name (as collected into the store); repeat for several.", show_default=False,
                 autocompletion=complete_sae_names),
]
OptionalSaeOpt = Annotated[
    list[str] | None,
    typer.Option("--sae", "-s", help="Limit to these SAEs (default: all in the run).", show_default=False),
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Rerun even when config and inputs are unchanged.")]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait/--no-wait", help="When another process is writing the same run × SAE: wait for it "
                 "(saying so), or refuse at once; with --batch, also wait for the batches, or submit and exit."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hugging Face model id or local folder (default: inferred from the SAE).",
                 show_default=False),
]
HookOpt = Annotated[
    str | None,
    typer.Option("--hook", help="Hook point, e.g. blocks.8.hook_resid_post (default: the SAE's).", show_default=False),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cuda, cuda:N, mps, cpu or auto.", callback=check_device_option)]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="float32, bfloat16 or float16 (default: per model).", show_default=False,
                             callback=check_dtype)
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.", min=1)]
CheckpointEveryOpt = Annotated[
    float | None,
    typer.Option("--checkpoint-every", help="Seconds between checkpoints of an interrupted pass or scoring "
                 "(default: collect 120, score 30).", min=0.1, show_default=False, metavar="SECONDS"),
]
FormatOpt = Annotated[str, typer.Option("--format", help="table, csv, json or markdown.")]
GeneratorOpt = Annotated[
    str | None,
    typer.Option("--generator", "-g", help="Generator label, e.g. openai:gpt-4.1-mini, hf:<model>, table:<file>.",
                 show_default=False),
]

BatchOpt = Annotated[bool, typer.Option(
    "--batch", help="Send the requests through the OpenAI Batch API: half the price, answers within 24 h. "
    "Journaled in the store: stop at any time (Ctrl-C, or --no-wait to submit and exit) and rerun the same "
    "command, even days later, to collect what finished; nothing is paid twice.")]
BatchPollOpt = Annotated[float, typer.Option(
    "--batch-poll", min=0.001, metavar="SECONDS", help="With --batch: seconds between status polls.")]

# ----- collect ---------------------------------------------------------------------------------
CorpusOpt = Annotated[
    str,
    typer.Option("--corpus", "--dataset-name", help="Hugging Face dataset name (streamed), local file or folder "
                 "(.txt/.jsonl/.csv/.parquet), pre-tokenized Parquet, or demo:wiki."),
]
SplitOpt = Annotated[str, typer.Option("--split", help="Dataset split.")]
TextColumnOpt = Annotated[str, typer.Option("--text-column", help="Column holding the text.")]
DeadMinFiringsOpt = Annotated[int, typer.Option("--dead-min-firings", min=0,
                                                 help="A feature is alive with more firings than this.")]
AliveRuleOpt = Annotated[str, typer.Option(
    "--alive-rule", metavar="original|count",
    help="original: firings / counted tokens x --total-tokens > --dead-min-firings (SAEBench's rule, which "
         "the original tool uses); count: firings > --dead-min-firings and a top window (earlier sae-sens "
         "versions).")]
CollectSeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the feature sample and example draws.")]
FromSaebenchOpt = Annotated[bool, typer.Option(
    "--from-saebench",
    help="Import SAEBench's published autointerp examples for this SAEBench SAE instead of a pass "
         "(downloaded from the adamkarvonen/sae_bench_results_0125 dataset).")]
SaebenchFileOpt = Annotated[Path | None, typer.Option(
    "--saebench-file", exists=True, dir_okay=False, show_default=False,
    help="A local SAEBench autointerp results JSON to import (implies --from-saebench).")]
TotalTokensOpt = Annotated[int, typer.Option("--total-tokens", min=1, help="Token budget of the pass.")]
ContextSizeOpt = Annotated[int, typer.Option("--context-size", min=2, help="Tokens per window (BOS included).")]
FeaturesOpt = Annotated[int, typer.Option(
    "--features", min=1, help="Sample this many alive features (seeded); added to a run's earlier selection.")]
FeatureIdsOpt = Annotated[
    str | None, typer.Option("--feature-ids", show_default=False,
                             help="These features, e.g. 3,17,42; added to a run's earlier selection.")
]
ReplaceOpt = Annotated[bool, typer.Option(
    "--replace", help="Start a new selection instead of adding to the run's earlier one (says what it drops).")]
NTopOpt = Annotated[int, typer.Option("--n-top-ex-for-generation", min=0, help="Top windows kept per feature.")]
NIwOpt = Annotated[
    int, typer.Option("--n-iw-ex-for-generation", min=0, help="Importance-weighted samples kept per feature.")
]

# ----- generate --------------------------------------------------------------------------------
LlmModelOpt = Annotated[
    str | None,
    typer.Option("--llm-model", help="OpenAI model name (same as --generator openai:<model>).", show_default=False),
]
FromTableOpt = Annotated[
    Path | None,
    typer.Option("--from-table", help="Import texts from a CSV/Parquet/JSONL file (feature_index, text[, sample_index]) "
                 "under the label --generator NAME.", show_default=False),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible server, e.g. "
                 "http://localhost:8000/v1 (vLLM, Ollama, llama.cpp, LM Studio).", show_default=False),
]
SamplesPerFeatureOpt = Annotated[
    int, typer.Option("--samples-per-feature", "-n", help="Texts kept per feature (one extra is asked for).", min=1)
]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Cap on tokens per answer.", min=1)]
# the LLM request options generate and judge share (each command keeps its own default)
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature.", min=0.0)]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds per request attempt.", min=0.001)]
MaxRetriesOpt = Annotated[int, typer.Option(
    "--max-retries", help="Retries of a failed request (5xx, 429, timeouts).", min=0)]
PriceInOpt = Annotated[float | None, typer.Option(
    "--price-in", help="USD per 1M prompt tokens (for models not in the price table).", show_default=False)]
PriceOutOpt = Annotated[float | None, typer.Option(
    "--price-out", help="USD per 1M completion tokens.", show_default=False)]
MaxWorkersOpt = Annotated[int, typer.Option("--max-workers", "-j", help="Requests in flight at once.", min=1)]
MaxCostOpt = Annotated[
    float | None,
    typer.Option("--max-cost", help="Stop before spending more than this many USD (all SAEs together).",
                 show_default=False),
]

# ----- score -----------------------------------------------------------------------------------
ThresholdOpt = Annotated[
    float, typer.Option("--threshold", help="A text is active when the feature's max activation is above this.")
]
MaxLengthOpt = Annotated[
    int, typer.Option("--max-length", help="Tokens per text, BOS included; longer texts are truncated and counted.",
                      min=2)
]
