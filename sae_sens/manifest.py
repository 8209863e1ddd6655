"""The manifest of a run × SAE folder: per stage its config and config hash, input hashes, outputs
(row counts and content hashes), package versions and times (``StageRecord``, ``Manifest``)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StoreError
from .files import atomic_write_json
from .folders import sae_identity


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    config: dict[str, Any]
    config_hash: str
    inputs: dict[str, str]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "config_hash": self.config_hash,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "versions": self.versions,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StageRecord:
        return cls(
            config=d.get("config", {}),
            config_hash=d.get("config_hash", ""),
            inputs=d.get("inputs", {}),
            outputs=d.get("outputs", {}),
            versions=d.get("versions", {}),
            started_at=d.get("started_at", ""),
            finished_at=d.get("finished_at", ""),
            extra=d.get("extra", {}),
        )


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest's content (None when there is none); a damaged one is an error naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise StoreError(f"{path.parent} is a file, not a store folder", "pass --store a folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"cannot read {path}: {e}", "check the file's permissions and rerun") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise StoreError(f"{path} is not a valid manifest ({e})",
                         "restore it from a backup, or move it away and rerun the stages of this SAE") from None
    return data


class Manifest:
    """``manifest.json`` of one run × SAE: stage records, current table hashes, SAE info."""

    def __init__(self, path: Path, run: str, sae: str) -> None:
        self.path = path
        data = read_manifest(path)
        self.data: dict[str, Any] = data if data is not None else {
            "run": run, "sae": sae, "sae_id": sae_identity(sae), "stages": {}, "tables": {}, "sae_info": {}}
        self.data.setdefault("stages", {})
        self.data.setdefault("tables", {})
        self.data.setdefault("sae_info", {})

    @property
    def stages(self) -> dict[str, StageRecord]:
        return {k: StageRecord.from_json(v) for k, v in self.data["stages"].items()}

    def stage(self, key: str) -> StageRecord | None:
        raw = self.data["stages"].get(key)
        return StageRecord.from_json(raw) if raw is not None else None

    def set_stage(self, key: str, record: StageRecord) -> None:
        self.data["stages"][key] = record.to_json()

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        return self.data["tables"]

    @property
    def sae_info(self) -> dict[str, Any]:
        return self.data["sae_info"]

    def save(self) -> None:
        atomic_write_json(self.path, self.data)



def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sae-sens", "torch", "transformers", "sae-bench", "sae-lens", "openai", "pyarrow", "duckdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
