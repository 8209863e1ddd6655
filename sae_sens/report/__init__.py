"""Reports over the artifact store: DuckDB views, summaries, comparisons, plots, HTML, a SQL shell.

Names are imported on first use (PEP 562), so ``sae_sens.report.keys`` and the CLI's help do not
pay for duckdb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .html import render_html, write_html
    from .plot import write_plots
    from .shell import sql_shell
    from .summary import Comparison, bootstrap_mean_ci, compare, summarize
    from .views import connect, parse_sae_name, query, require_results, write_snapshot_sql

_WHERE = {
    "render_html": "html",
    "write_html": "html",
    "write_plots": "plot",
    "sql_shell": "shell",
    "Comparison": "summary",
    "bootstrap_mean_ci": "summary",
    "compare": "summary",
    "summarize": "summary",
    "connect": "views",
    "parse_sae_name": "views",
    "query": "views",
    "require_results": "views",
    "write_snapshot_sql": "views",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Comparison",
    "bootstrap_mean_ci",
    "compare",
    "connect",
    "parse_sae_name",
    "query",
    "render_html",
    "require_results",
    "sql_shell",
    "summarize",
    "write_html",
    "write_snapshot_sql",
    "write_plots",
]
