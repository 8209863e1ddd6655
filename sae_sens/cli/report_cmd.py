"""`sae-sens report` (placeholder until its stage lands)."""

from __future__ import annotations

from ..errors import UsageError
from .app import app


@app.command("report")
def report_command() -> None:
    """Not implemented yet."""
    raise UsageError("`report` is not implemented yet")
