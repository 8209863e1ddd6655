"""Reports over the artifact store: DuckDB views, summaries, comparisons, plots, HTML, a SQL shell."""

from .html import render_html, write_html
from .plot import write_plots
from .shell import sql_shell
from .summary import Comparison, bootstrap_mean_ci, compare, summarize
from .views import connect, parse_sae_name, query, require_results, write_init_sql

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
    "write_init_sql",
    "write_plots",
]
