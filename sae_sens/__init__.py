"""sae_sens: measure how sensitive sparse-autoencoder features are.

Python API, one function per stage (tables and configs in, tables out)::

    from sae_sens import Store
    from sae_sens.collect import CollectConfig, run_collect, run_collect_many  # many: one pass per model
    from sae_sens.generate import GenerateConfig, run_generate
    from sae_sens.score import ScoreConfig, run_score
    from sae_sens.report import connect, summarize
    from sae_sens.pipeline import run_pipeline  # all three stages for many SAEs
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .store import Store


def __getattr__(name: str) -> Any:
    # imported on first use, so `import sae_sens` (and the CLI's --help) stays free of pyarrow
    if name == "Store":
        from .store import Store

        return Store
    raise AttributeError(f"module 'sae_sens' has no attribute {name!r}")


__all__ = ["Store", "__version__"]
