"""``table:<file>``: import texts someone else generated (CSV, TSV, Parquet or JSONL).

Columns: ``feature_index``, ``text``, optional ``sample_index``. Every row that cannot be used is
counted and reported with its reason and row numbers; nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ImportTableError

REQUIRED = ("feature_index", "text")
SUFFIXES = ".csv, .tsv, .parquet, .jsonl"


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ImportTableError(f"import table {path} does not exist", "pass an existing file to --from-table")
    try:
        if suffix in (".csv", ".tsv"):
            from pyarrow import csv

            table = csv.read_csv(
                path,
                parse_options=csv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True),
                # texts like "42" must stay texts; an empty cell must stay "" (reported as empty, not NULL)
                convert_options=csv.ConvertOptions(column_types={"text": "string"}, strings_can_be_null=False),
            )
            return table.column_names, table.to_pylist()
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return table.column_names, table.to_pylist()
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows, names = [], {}
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ImportTableError(f"{path} line {n} is not valid JSON ({e.msg})",
                                           "write one JSON object per line") from None
                if not isinstance(row, dict):
                    raise ImportTableError(f"{path} line {n} is not a JSON object", "write one JSON object per line")
                names.update(dict.fromkeys(row))
                rows.append(row)
            return list(names), rows
    except ImportTableError:
        raise
    except Exception as e:  # pyarrow's errors for a corrupt or mis-typed file
        raise ImportTableError(f"cannot read import table {path}: {str(e).splitlines()[0]}",
                               f"pass a valid {SUFFIXES} file") from None
    raise ImportTableError(f"unknown import table type {path.name!r}", f"use a {SUFFIXES} file")


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if v.is_integer() else None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


@dataclass
class ImportResult:
    generations: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    n_rows: int
    dropped: dict[str, list[int]] = field(default_factory=dict)  # reason -> 1-based row numbers
    features_without_rows: list[int] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        out = []
        for reason, rows in self.dropped.items():
            shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
            out.append(f"dropped {len(rows)} of {self.n_rows} rows: {reason} (rows {shown})")
        if self.features_without_rows:
            fs = self.features_without_rows
            shown = ", ".join(map(str, fs[:10])) + (", ..." if len(fs) > 10 else "")
            out.append(f"{len(fs)} features of the run have no imported text: {shown}")
        return out


@dataclass(frozen=True)
class TableImport:
    path: str
    label: str

    def read(self, run_features: set[int]) -> ImportResult:
        """Validate the file against the run's features and build generations/queries rows."""
        path = Path(self.path).expanduser()
        columns, rows = _read_rows(path)
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise ImportTableError(
                f"import table {path} has no {' or '.join(repr(c) for c in missing)} column "
                f"(it has: {', '.join(columns) or 'no columns'})",
                "the table needs feature_index and text columns, and optionally sample_index",
            )
        has_sample = "sample_index" in columns
        dropped: dict[str, list[int]] = defaultdict(list)
        seen: set[tuple[int, Any]] = set()
        per_feature: dict[int, list[tuple[int | None, str]]] = defaultdict(list)
        for n, row in enumerate(rows, 1):
            f = _as_int(row.get("feature_index"))
            text = row.get("text")
            s = _as_int(row.get("sample_index")) if has_sample else None
            if f is None:
                dropped["feature_index is missing or not an integer"].append(n)
            elif not isinstance(text, str) or not text.strip():
                dropped["empty text"].append(n)
            elif f not in run_features:
                dropped["feature not in this run's examples"].append(n)
            elif has_sample and (s is None or s < 0):
                dropped["sample_index is missing or not a non-negative integer"].append(n)
            elif (key := (f, s if has_sample else text)) in seen:
                dropped["duplicate of an earlier row (same feature_index and "
                        f"{'sample_index' if has_sample else 'text'})"].append(n)
            else:
                seen.add(key)
                per_feature[f].append((s, text))
        generations, queries = [], []
        for f in sorted(per_feature):
            items = per_feature[f]
            if has_sample:
                items.sort(key=lambda t: t[0])  # type: ignore[arg-type, return-value]
            for i, (s, text) in enumerate(items):
                generations.append({"feature_index": f, "generator": self.label,
                                    "sample_index": s if has_sample else i, "text": text})
            queries.append({"feature_index": f, "generator": self.label, "status": "imported", "attempts": 0,
                            "n_parsed": len(items), "parse_method": "table"})
        return ImportResult(generations, queries, len(rows), dict(dropped),
                            sorted(run_features - set(per_feature)))
