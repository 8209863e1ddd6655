"""`sae-sens saes` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("saes")
def saes_command() -> None:
    """Not implemented yet."""
    raise UsageError("`saes` is not implemented yet")
