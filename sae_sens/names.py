"""SAE names -> specs. Local paths for now; the SAEBench and GemmaScope grids extend ``resolve``."""

from __future__ import annotations

from pathlib import Path

from .errors import UnknownSaeError
from .sae import SaeSpec


def resolve(name: str) -> SaeSpec:
    path = Path(name).expanduser()
    if path.is_dir() and (path / "ae.pt").exists():
        return SaeSpec(name=name, source="local", format="dictionary_learning", path=str(path))
    raise UnknownSaeError(
        f"unknown SAE {name!r}",
        "give a SAEBench name such as py_16k_gated_s2, a GemmaScope name such as gscope_16k_l0_82, "
        "or a folder with ae.pt and config.json",
    )
