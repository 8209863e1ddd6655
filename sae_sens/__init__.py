"""sae_sens: measure how sensitive sparse-autoencoder features are.

Python API, one function per stage (tables and configs in, tables out)::

    from sae_sens import Store, collect, generate, score, report
"""

__version__ = "0.1.0"

from .store import Store  # noqa: E402

__all__ = ["Store", "__version__"]
