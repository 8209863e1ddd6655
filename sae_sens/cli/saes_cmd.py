"""`sae-sens saes`: the SAEs known by name."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UnknownSaeError
from .base import app
from .output import AutoFormatOpt

FilterOpt = Annotated[
    str | None,
    typer.Option("--filter", help="Words that must all appear as whole parts of the name, model, architecture or "
                 "repo (topk is not btopk), or a glob on the name.",
                 show_default=False),
]


@app.command("saes")
def saes_command(filter: FilterOpt = None, fmt: AutoFormatOpt = None) -> None:
    """List the SAEs known by name: the SAEBench grid, GemmaScope and packaged SAEs.

    Any of these names (or a local folder, a params.npz, or saelens:<release>/<sae_id>) works as --sae.

    Example: sae-sens saes --filter "py 16k gated"
    """
    from ..names import known_names
    from .output import emit, resolve_format

    specs = known_names(filter)
    if not specs:
        raise UnknownSaeError(f"no known SAE matches {filter!r}", "try fewer words, e.g. --filter gated")
    columns = ["name", "model", "layer", "width", "architecture", "sparsity", "repo"]
    rows = [[s.name, s.model_id, s.layer, s.width, s.architecture, s.sparsity, s.repo_id or s.path] for s in specs]
    emit(columns, rows, resolve_format(fmt), title=f"{len(rows)} SAEs")
