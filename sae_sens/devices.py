"""Is the requested device usable here? Answered before any model or SAE is loaded.

A CPU-only build of torch is recognised from its ``torch/version.py`` without importing torch (which
takes seconds), so ``--device cuda`` on such a machine fails at once; otherwise torch is asked.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from .errors import UsageError

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_HINT = "use --device cpu (or auto, which picks CUDA, then MPS, then the CPU)"


def _torch_build_has_cuda() -> bool | None:
    """``False`` for a CPU-only torch build, read from its version file; None when that is unknown."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        text = version_file.read_text()
    except OSError:
        return None
    m = re.search(r"^cuda(?:: *\w[\w\[\], ]*)? *= *(.+)$", text, re.M)
    if m is None:
        return None
    return m.group(1).strip() != "None"


def check_device(requested: str | None) -> str:
    """Return ``requested`` (``auto`` when empty) if it can run here, else raise a ``UsageError`` saying why."""
    device = (requested or "auto").strip().lower()
    if not _DEVICE_RE.match(device):
        raise UsageError(f"unknown device {requested!r}", "use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if _torch_build_has_cuda() is False:
            raise UsageError(
                f"--device {device}: the installed torch is a CPU-only build",
                f"{_HINT}; for a GPU install the CUDA build (see the README's install line)",
            )
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: torch sees no CUDA device on this machine", _HINT)
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                "use --device cuda:0 .. cuda:" + str(torch.cuda.device_count() - 1),
            )
    elif device == "mps":
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: no Apple MPS device on this machine", _HINT)
    return device
