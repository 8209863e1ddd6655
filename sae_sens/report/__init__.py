"""Reports over the artifact store: DuckDB views, summaries, comparisons, plots, HTML, a SQL shell."""

from .summary import Comparison, bootstrap_mean_ci, compare, summarize
from .views import connect, parse_sae_name, query, require_results, write_init_sql

__all__ = [
    "Comparison",
    "bootstrap_mean_ci",
    "compare",
    "connect",
    "parse_sae_name",
    "query",
    "require_results",
    "summarize",
    "write_init_sql",
]
