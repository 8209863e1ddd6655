"""`sae-sens collect` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("collect")
def collect_command() -> None:
    """Not implemented yet."""
    raise UsageError("`collect` is not implemented yet")
