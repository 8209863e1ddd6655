"""Stable hashes for configs, files and tables (used by manifests to decide freshness)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_default, separators=(",", ":"))


def hash_config(config: Any) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def hash_text(text: str) -> str:
    return hash_bytes(text.encode())
