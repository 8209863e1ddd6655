"""Options shared by several commands, defined once (``Annotated`` aliases, as the ``hf`` CLI does)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

StoreOpt = Annotated[
    Optional[Path],
    typer.Option("--store", envvar="SAE_SENS_STORE", help="Artifact store folder (default ./evals).", show_default=False),
]
RunOpt = Annotated[str, typer.Option("--run", "-r", envvar="SAE_SENS_RUN", help="Run name inside the store.")]
SaeOpt = Annotated[
    list[str],
    typer.Option("--sae", "-s", help="SAE name or folder; repeat for several (e.g. py_4k_topk_s0).", show_default=False),
]
OptionalSaeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--sae", "-s", help="Limit to these SAEs (default: all in the run).", show_default=False),
]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Rerun even when config and inputs are unchanged.")]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Hugging Face model id or local folder (default: inferred from the SAE).",
                 show_default=False),
]
HookOpt = Annotated[
    Optional[str],
    typer.Option("--hook", help="Hook point, e.g. blocks.8.hook_resid_post (default: the SAE's).", show_default=False),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cuda, mps, cpu or auto.")]
DtypeOpt = Annotated[
    Optional[str], typer.Option("--dtype", help="float32, bfloat16 or float16 (default: per model).", show_default=False)
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.", min=1)]
FormatOpt = Annotated[str, typer.Option("--format", help="table, csv, json or markdown.")]
GeneratorOpt = Annotated[
    Optional[str],
    typer.Option("--generator", "-g", help="Generator label, e.g. openai:gpt-4.1-mini, hf:<model>, table:<file>.",
                 show_default=False),
]
