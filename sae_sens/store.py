"""The artifact store: ``<store>/<run>/<sae>/<table>.parquet`` plus ``manifest.json``.

Every table carries ``run`` and ``sae`` columns, so a glob over the store is self-describing.
Writes are atomic (temporary file in the same folder, fsync, rename), so a crash never leaves
a half-written table for a later stage to read.

The manifest records, per stage, its config and config hash, the hashes of its inputs, and the
row counts and content hashes of what it wrote. ``Store.is_fresh`` uses it to skip work, and
``Store.status`` to show a stage as ``stale`` when an upstream table changed after it ran.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import MissingTableError, UsageError
from .hashing import canonical_json, hash_config

TABLES = ("features", "examples", "queries", "generations", "scores", "feature_stats")
DEFAULT_STORE = "evals"
DEFAULT_RUN = "default"
MANIFEST = "manifest.json"

# Which CLI command produces each table, for "missing table" hints.
PRODUCED_BY = {
    "features": "collect",
    "examples": "collect",
    "candidates": "collect",
    "latents": "collect",
    "queries": "generate",
    "generations": "generate",
    "scores": "score",
    "feature_stats": "score",
}

_RUN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def sae_slug(sae: str) -> str:
    """A folder name for an SAE name; names like ``saelens:rel/id`` or local paths contain '/'."""
    slug = sae.replace("\\", "/").rstrip("/")
    if "/" in slug and (slug.startswith((".", "/", "~")) or ":" not in slug):
        slug = Path(slug).name or slug  # a local path: its last component
    slug = slug.replace(":", "--").replace("/", "__")
    slug = re.sub(r"[^A-Za-z0-9._=+-]", "_", slug)
    return slug.lstrip(".") or "sae"


def table_digest(table: pa.Table, where: tuple[str, Any] | None = None) -> str:
    """Content hash of a table (optionally only the rows where ``column == value``).

    Hashing the Arrow IPC bytes of the combined table makes the digest independent of how
    the Parquet file was chunked or compressed.
    """
    if where is not None:
        col, value = where
        table = table.filter(pc.equal(table[col], pa.scalar(value, table.schema.field(col).type)))
    table = table.combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def with_run_sae(table: pa.Table, run: str, sae: str) -> pa.Table:
    """Put ``run`` and ``sae`` as the first two columns (replacing any existing ones)."""
    for name in ("run", "sae"):
        if name in table.column_names:
            table = table.drop_columns([name])
    n = table.num_rows
    table = table.add_column(0, "sae", pa.array([sae] * n, pa.string()))
    return table.add_column(0, "run", pa.array([run] * n, pa.string()))


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


class Manifest:
    """``manifest.json`` of one run × SAE: stage records, current table hashes, SAE info."""

    def __init__(self, path: Path, run: str, sae: str) -> None:
        self.path = path
        if path.exists():
            self.data: dict[str, Any] = json.loads(path.read_text())
        else:
            self.data = {"run": run, "sae": sae, "stages": {}, "tables": {}, "sae_info": {}}
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


class Store:
    """A folder of runs. Library code passes a ``Store`` around; only the CLI resolves paths."""

    def __init__(self, root: str | Path | None = None) -> None:
        root = root or os.environ.get("SAE_SENS_STORE") or DEFAULT_STORE
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ----- paths -----------------------------------------------------------------------------
    @staticmethod
    def check_run(run: str) -> str:
        if not _RUN_RE.match(run):
            raise UsageError(
                f"invalid run name {run!r}",
                "use letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        return run

    def run_dir(self, run: str) -> Path:
        return self.root / self.check_run(run)

    def sae_dir(self, run: str, sae: str) -> Path:
        return self.run_dir(run) / sae_slug(sae)

    def table_path(self, run: str, sae: str, table: str) -> Path:
        return self.sae_dir(run, sae) / f"{table}.parquet"

    @property
    def cache_dir(self) -> Path:
        return self.root / "_cache"

    def checkpoint_dir(self, run: str, sae: str, stage: str) -> Path:
        return self.sae_dir(run, sae) / ".checkpoints" / re.sub(r"[^A-Za-z0-9._=+-]", "_", stage)

    # ----- tables ------------------------------------------------------------------------------
    def has_table(self, run: str, sae: str, table: str) -> bool:
        return self.table_path(run, sae, table).exists()

    def read_table(self, run: str, sae: str, table: str) -> pa.Table:
        path = self.table_path(run, sae, table)
        if not path.exists():
            producer = PRODUCED_BY.get(table, "the stage that writes it")
            elsewhere = [r for r in self.runs() if r != run and self.has_table(r, sae, table)]
            raise MissingTableError(
                f"no {table} table for run {run!r}, SAE {sae!r} in {self.root}",
                f"did you mean --run {elsewhere[0]}? (this SAE's {table} table is in run {', '.join(elsewhere)})" if elsewhere
                else f"run `sae-sens {producer} --run {run} --sae {sae}` first",
            )
        return pq.read_table(path)

    def write_table(self, run: str, sae: str, table: str, data: pa.Table) -> dict[str, Any]:
        """Atomically write a table (adding run/sae columns) and record its hash in the manifest."""
        data = with_run_sae(data, run, sae)
        atomic_write_parquet(self.table_path(run, sae, table), data)
        info = {"rows": data.num_rows, "hash": table_digest(data)}
        manifest = self.manifest(run, sae)
        manifest.tables[table] = info
        manifest.save()
        return info

    def table_hash(self, run: str, sae: str, table: str) -> str | None:
        """The content hash of a table as last written (None if it does not exist)."""
        if not self.has_table(run, sae, table):
            return None
        info = self.manifest(run, sae).tables.get(table)
        if info is None:  # written by something else: hash it now
            return table_digest(self.read_table(run, sae, table))
        return str(info["hash"])

    # ----- manifests ---------------------------------------------------------------------------
    def manifest(self, run: str, sae: str) -> Manifest:
        return Manifest(self.sae_dir(run, sae) / MANIFEST, run, sae)

    def runs(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _RUN_RE.match(p.name))

    def saes(self, run: str) -> list[str]:
        """SAE names (as given by the user, not folder slugs) that have a manifest in ``run``."""
        out = []
        rd = self.run_dir(run)
        if not rd.exists():
            return []
        for d in sorted(rd.iterdir()):
            m = d / MANIFEST
            if m.exists():
                out.append(json.loads(m.read_text()).get("sae", d.name))
        return out

    def iter_run_saes(self) -> Iterator[tuple[str, str]]:
        for run in self.runs():
            for sae in self.saes(run):
                yield run, sae

    # ----- freshness ---------------------------------------------------------------------------
    def is_fresh(self, run: str, sae: str, stage: str, config: dict[str, Any], inputs: dict[str, str]) -> bool:
        """True when ``stage`` ran with this config and these inputs and its outputs are intact."""
        rec = self.manifest(run, sae).stage(stage)
        if rec is None or rec.config_hash != hash_config(config) or rec.inputs != inputs:
            return False
        for table, out in rec.outputs.items():
            if not self.has_table(run, sae, table):
                return False
            where = tuple(out["where"]) if out.get("where") else None
            if where is None:
                if self.table_hash(run, sae, table) != out["hash"]:
                    return False
            elif table_digest(self.read_table(run, sae, table), where) != out["hash"]:  # type: ignore[arg-type]
                return False
        return True

    def record_stage(
        self,
        run: str,
        sae: str,
        stage: str,
        *,
        config: dict[str, Any],
        inputs: dict[str, str],
        outputs: dict[str, tuple[str, Any] | None],
        started_at: str,
        extra: dict[str, Any] | None = None,
    ) -> StageRecord:
        """Record a finished stage. ``outputs`` maps each table it wrote to the row filter it owns
        (``("generator", "openai:x")``) or None for the whole table."""
        out_info: dict[str, dict[str, Any]] = {}
        for table, where in outputs.items():
            data = self.read_table(run, sae, table)
            if where is None:
                out_info[table] = {"rows": data.num_rows, "hash": self.table_hash(run, sae, table)}
            else:
                sub = data.filter(pc.equal(data[where[0]], where[1]))
                out_info[table] = {"rows": sub.num_rows, "hash": table_digest(data, where), "where": list(where)}
        rec = StageRecord(
            config=json.loads(canonical_json(config)),
            config_hash=hash_config(config),
            inputs=dict(inputs),
            outputs=out_info,
            versions=package_versions(),
            started_at=started_at,
            finished_at=now_iso(),
            extra=extra or {},
        )
        manifest = self.manifest(run, sae)
        manifest.set_stage(stage, rec)
        manifest.save()
        return rec

    def status(self, run: str, sae: str) -> dict[str, str]:
        """Each recorded stage's status: ``done``, ``stale`` (an upstream table changed since it ran,
        or its own output is gone or altered); the three stage families absent are ``missing``."""
        manifest = self.manifest(run, sae)
        result: dict[str, str] = {}
        for key, rec in manifest.stages.items():
            if key.startswith("_"):
                continue
            state = "done"
            for name, h in rec.inputs.items():
                if name.startswith("table:"):
                    current = manifest.tables.get(name[len("table:") :], {}).get("hash")
                    if current != h:
                        state = "stale"
            for table, out in rec.outputs.items():
                if not self.has_table(run, sae, table):
                    state = "stale"
                elif out.get("where") is None and manifest.tables.get(table, {}).get("hash") != out["hash"]:
                    state = "stale"
            result[key] = state
        for family in ("collect", "generate", "score"):
            if not any(k == family or k.startswith(family + ":") for k in result):
                result[family] = "missing"
        return result


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sae-sens", "torch", "transformers", "sae-bench", "sae-lens", "openai", "pyarrow", "duckdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
