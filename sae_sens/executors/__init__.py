"""Where a pipeline's work runs: ``local`` (this process, the default) or ``ray`` (a Ray cluster).

``get_executor`` is the one entry point; the Ray executor is imported only when asked for, so Ray
stays an optional dependency (``pip install 'sae-sens[ray]'``).
"""

from __future__ import annotations

from ..errors import UsageError
from .base import STAGES, Executor, Group, SaeResult, Work, plan_groups
from .local import LocalExecutor

EXECUTORS = ("local", "ray")

__all__ = ["EXECUTORS", "STAGES", "Executor", "Group", "LocalExecutor", "SaeResult", "Work", "get_executor",
           "plan_groups"]


def get_executor(name: str = "local", *, address: str | None = None, gpus_per_task: float = 1.0,
                 saes_per_task: int = 0) -> Executor:
    """The executor called ``name``; the other arguments are for ``ray``."""
    if name == "local":
        if address is not None or saes_per_task:
            raise UsageError("--address and --saes-per-task need --executor ray")
        return LocalExecutor()
    if name == "ray":
        try:
            from .ray_executor import RayExecutor
        except ImportError as e:
            if e.name is not None and e.name.split(".")[0] != "ray":
                raise
            raise UsageError("--executor ray needs Ray, which is not installed",
                             "pip install 'sae-sens[ray]'") from None
        return RayExecutor(address=address, gpus_per_task=gpus_per_task, saes_per_task=saes_per_task)
    raise UsageError(f"unknown executor {name!r}", f"use one of: {', '.join(EXECUTORS)}")
