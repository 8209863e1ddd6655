"""`sae-sens generate` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("generate")
def generate_command() -> None:
    """Not implemented yet."""
    raise UsageError("`generate` is not implemented yet")
