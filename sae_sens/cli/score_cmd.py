"""`sae-sens score` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("score")
def score_command() -> None:
    """Not implemented yet."""
    raise UsageError("`score` is not implemented yet")
