"""Append-only JSONL journals that survive a kill: one fsynced line per record, torn lines skipped.

A process killed mid-write leaves a last line without its newline. Readers skip a line that does
not parse (its event never happened); writers start a new line first, so the torn one cannot
swallow the next record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line and fsync it (raises ``OSError`` as it comes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        end = f.seek(0, os.SEEK_END)
        if end:  # a torn last line (killed mid-write) must not swallow this record: start a new line
            f.seek(end - 1)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's records in order; a missing file has none, a torn or foreign line is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: its event never happened
            continue
        if isinstance(rec, dict):
            yield rec
