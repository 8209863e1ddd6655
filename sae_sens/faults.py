"""Named fault points, for crash-consistency tests: every durable write passes one.

``SAE_SENS_FAULT=POINT:N`` kills the process with SIGKILL (what a crash, an OOM kill or a
preempted node does: no cleanup runs) the Nth time it reaches ``POINT``; ``SAE_SENS_FAULT_LOG=FILE``
appends each point reached to FILE, one name per line, so a test knows how many times a stage
passes each one. Both are read once per process; unset, a point costs one comparison.

Points: ``write:temp`` (a table, manifest or checkpoint is in its temp file, not yet renamed),
``write:renamed`` (renamed into place; whatever records it comes next), ``journal:appended`` (an
answer is in a generate or judge journal).
"""

from __future__ import annotations

import os
import signal

POINTS = ("write:temp", "write:renamed", "journal:appended")

_plan: tuple[str, int] | None = None
_log: str | None = None
_read = False
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Pass fault point ``name``: log it, and die here if this is the planned hit."""
    global _plan, _log, _read
    if not _read:
        spec = os.environ.get("SAE_SENS_FAULT", "")
        where, _, nth = spec.rpartition(":")
        _plan = (where, int(nth)) if where and nth.isdigit() else None
        _log = os.environ.get("SAE_SENS_FAULT_LOG") or None
        _read = True
    if _plan is None and _log is None:
        return
    if _log is not None:
        with open(_log, "a", encoding="utf-8") as f:
            f.write(name + "\n")
    if _plan is not None and name == _plan[0]:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] == _plan[1]:
            os.kill(os.getpid(), signal.SIGKILL)
