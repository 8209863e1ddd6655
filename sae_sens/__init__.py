"""sae_sens: measure how sensitive sparse-autoencoder features are.

Python API, one function per stage (tables and configs in, tables out)::

    from sae_sens import Store
    from sae_sens.collect import CollectConfig, run_collect, run_collect_many  # many: one pass per model
    from sae_sens.generate import GenerateConfig, run_generate
    from sae_sens.score import ScoreConfig, run_score
    from sae_sens.report import connect, summarize
    from sae_sens.pipeline import run_pipeline  # all three stages for many SAEs
"""

__version__ = "0.1.0"

from .store import Store  # noqa: E402

__all__ = ["Store", "__version__"]
