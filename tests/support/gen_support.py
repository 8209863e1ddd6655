"""Shared helpers for the generate tests: an examples table written through the real store."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from sae_sens.schemas import make_table
from sae_sens.store import Store


def examples_table(features: list[int], n_top: int = 3, n_iw: int = 2) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for f in features:
        for i in range(n_top + n_iw):
            kind = "top" if i < n_top else "iw"
            rows.append({"feature_index": f, "example_index": i, "kind": kind, "max_activation": 2.0 - i / 10,
                         "text": f"feature {f} {kind} {i}: the {{{{cat}}}} sat on the mat"})
    return make_table("examples", rows)


def write_examples(store: Store, run: str, sae: str, features: list[int], **kw: Any) -> pa.Table:
    table = examples_table(features, **kw)
    store.write_table(run, sae, "examples", table)
    return table


def plain(table: pa.Table, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows without run/sae, sorted, for comparing tables across stores."""
    cols = columns or [c for c in table.column_names if c not in ("run", "sae")]
    rows = table.select(cols).to_pylist()
    return sorted(rows, key=lambda r: (r.get("generator") or "", r["feature_index"], r.get("sample_index") or 0))
