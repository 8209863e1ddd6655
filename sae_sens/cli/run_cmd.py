"""`sae-sens run` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("run")
def run_command() -> None:
    """Not implemented yet."""
    raise UsageError("`run` is not implemented yet")
