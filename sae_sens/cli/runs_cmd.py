"""`sae-sens runs` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("runs")
def runs_command() -> None:
    """Not implemented yet."""
    raise UsageError("`runs` is not implemented yet")
