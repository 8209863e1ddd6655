"""The artifact store: ``<store>/<run>/<sae>/<table>.parquet`` plus ``manifest.json`` (``Store``).

Its parts live beside it, one job each, and are re-exported here: ``files`` (atomic writes and
digests), ``folders`` (run and SAE folder names), ``manifest`` (the per-stage records).

Every table carries ``run`` and ``sae`` columns, so a glob over the store is self-describing.
Writes are atomic (temporary file in the same folder, fsync, rename), so a crash never leaves
a half-written table for a later stage to read.

The manifest records, per stage, its config and config hash, the hashes of its inputs, and the
row counts and content hashes of what it wrote. ``Store.is_fresh`` uses it to skip work, and
``Store.status`` to show a stage as ``stale`` when an upstream table changed after it ran, or
``damaged`` when a table on disk no longer matches what was recorded (size and Parquet footer row
count, cheaply; the full content hash with ``verify=True``).

Every read-modify-write of a run × SAE folder happens under its advisory lock (``Store.lock``, see
``sae_sens.locking``), so concurrent processes never lose each other's updates. Each SAE gets its own
folder: a readable slug, plus a short hash of the SAE's identity when the slug alone could collide
(local paths, names with characters a folder cannot hold); a folder whose manifest names another SAE
is refused.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import MissingTableError, StoreError, UsageError

# the store's parts, re-exported: ``from sae_sens.store import ...`` keeps working
from .files import (  # noqa: F401  # noqa: F401
    TMP_GLOB,
    _mkdir,
    _mkstemp,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    file_sha256,
    table_digest,
    write_error,
)
from .folders import _RUN_RE, MAX_RUN_NAME, _is_local_path, sae_folder, sae_identity, sae_slug  # noqa: F401
from .hashing import canonical_json, hash_config
from .locking import OnWait, file_lock, stderr_line
from .manifest import Manifest, StageRecord, now_iso, package_versions, read_manifest  # noqa: F401

TABLES = ("features", "examples", "queries", "generations", "scores", "feature_stats")
DEFAULT_STORE = "evals"
DEFAULT_RUN = "default"
MANIFEST = "manifest.json"
LOCK = ".lock"

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



def with_run_sae(table: pa.Table, run: str, sae: str) -> pa.Table:
    """Put ``run`` and ``sae`` as the first two columns (replacing any existing ones)."""
    for name in ("run", "sae"):
        if name in table.column_names:
            table = table.drop_columns([name])
    n = table.num_rows
    table = table.add_column(0, "sae", pa.array([sae] * n, pa.string()))
    return table.add_column(0, "run", pa.array([run] * n, pa.string()))


class Store:
    """A folder of runs. Library code passes a ``Store`` around; only the CLI resolves paths.

    ``wait``: whether a writer waits for another process's lock on a run × SAE (True, announcing it
    through ``on_wait``) or is refused at once with ``LockedError``.
    """

    def __init__(self, root: str | Path | None = None, *, wait: bool = True, on_wait: OnWait | None = None) -> None:
        # SAE_SENS_STORE is read in one place, the CLI's --store option (cli/options.py): the library
        # takes the folder it is given, ./evals by default
        root = root or DEFAULT_STORE
        self.root = Path(root).expanduser()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"the store {self.root} is a file, not a folder",
                             "pass --store a folder (or a path that does not exist yet)")
        self.wait = wait
        self.on_wait = on_wait
        self._folders: dict[tuple[str, str], Path] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ----- paths -----------------------------------------------------------------------------
    @staticmethod
    def check_run(run: str) -> str:
        if not _RUN_RE.match(run):
            raise UsageError(
                f"invalid run name {run!r} (--run)",
                "use letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        if len(run) > MAX_RUN_NAME:
            raise UsageError(f"--run is {len(run)} characters long", f"use at most {MAX_RUN_NAME}")
        return run

    def run_dir(self, run: str) -> Path:
        return self.root / self.check_run(run)

    def sae_dir(self, run: str, sae: str) -> Path:
        """The SAE's folder in ``run``: ``sae_folder(sae)``, or an existing folder whose manifest names
        exactly this SAE (stores written before folder names carried a hash, or a relative path given
        from another directory). A folder whose manifest names another SAE is refused."""
        key = (run, sae)
        if key in self._folders:
            return self._folders[key]
        rd = self.run_dir(run)
        folder = rd / sae_folder(sae)
        data = read_manifest(folder / MANIFEST)
        ours = sae_identity(sae)
        if data is None and not folder.exists() and rd.is_dir():
            resolvable = _is_local_path(sae) and Path(sae).expanduser().exists()
            for d in sorted(rd.iterdir()):
                if not d.is_dir() or d.name.startswith((".", "_")):
                    continue
                other = read_manifest(d / MANIFEST)
                # same name; for a local SAE that exists here, also the same resolved path
                if other is not None and other.get("sae") == sae and (
                        other.get("sae_id") in (None, ours) or not resolvable):
                    folder, data = d, other
                    break
        if data is not None and data.get("sae") != sae and data.get("sae_id") != ours:
            raise StoreError(
                f"{folder} holds SAE {data.get('sae')!r}, not {sae!r}",
                "pass another --run for this SAE, or move that folder away",
            )
        self._folders[key] = folder
        return folder

    def table_path(self, run: str, sae: str, table: str) -> Path:
        return self.sae_dir(run, sae) / f"{table}.parquet"

    @property
    def cache_dir(self) -> Path:
        return self.root / "_cache"

    def checkpoint_dir(self, run: str, sae: str, stage: str) -> Path:
        return self.sae_dir(run, sae) / ".checkpoints" / re.sub(r"[^A-Za-z0-9._=+-]", "_", stage)

    # ----- locks -------------------------------------------------------------------------------
    def lock(self, run: str, sae: str, *, wait: bool | None = None, what: str = "") -> AbstractContextManager[None]:
        """The run × SAE folder's advisory lock (re-entrant in a thread): hold it around any
        read-modify-write of its manifest or tables. ``wait`` defaults to the store's.

        Whoever takes it first removes the temp files of table and manifest writes that a killed
        process left in the folder: those writes happen only under this lock, so no living writer
        owns them. (Checkpoints, written during a pass without the lock, are left to their stage.)"""
        folder = self.sae_dir(run, sae)
        return self._locked_and_clean(folder, file_lock(
            folder / LOCK, wait=self.wait if wait is None else wait, what=what or f"{run}/{sae}",
            on_wait=self.on_wait or stderr_line))

    @staticmethod
    @contextmanager
    def _locked_and_clean(folder: Path, lock: AbstractContextManager[None]) -> Iterator[None]:
        with lock:
            for tmp in folder.glob(TMP_GLOB):
                tmp.unlink(missing_ok=True)
            yield

    def leftovers(self, run: str, sae: str) -> list[Path]:
        """Temp files of interrupted writes in the run × SAE folder, checkpoints included."""
        return sorted(self.sae_dir(run, sae).rglob(TMP_GLOB))

    def cache_lock(self, name: str, *, wait: bool | None = None) -> AbstractContextManager[None]:
        """The lock of one shared cache under ``<store>/_cache`` (e.g. ``windows``, ``generate``)."""
        return file_lock(self.cache_dir / f".lock-{name}", wait=self.wait if wait is None else wait,
                         what=f"cache {name}", on_wait=self.on_wait or stderr_line)

    def check_writable(self, *folders: Path) -> None:
        """Raise a one-line ``StoreError`` unless a file can be created in each folder (made if needed):
        checked before work that costs money, so a read-only store fails before the first request."""
        for folder in folders:
            _mkdir(folder)
            try:
                fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=folder)
                os.close(fd)
                os.unlink(tmp)
            except OSError as e:
                raise write_error(folder, e) from None

    # ----- tables ------------------------------------------------------------------------------
    def has_table(self, run: str, sae: str, table: str) -> bool:
        return self.table_path(run, sae, table).exists()

    def read_table(self, run: str, sae: str, table: str) -> pa.Table:
        path = self.table_path(run, sae, table)
        producer = PRODUCED_BY.get(table, "the stage that writes it")
        if not path.exists():
            elsewhere = [r for r in self.runs() if r != run and self.has_table(r, sae, table)]
            raise MissingTableError(
                f"no {table} table for run {run!r}, SAE {sae!r} in {self.root}",
                f"did you mean --run {elsewhere[0]}? (this SAE's {table} table is in run {', '.join(elsewhere)})" if elsewhere
                else f"run `sae-sens {producer} --run {run} --sae {sae}` first",
            )
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError):
            raise StoreError(f"{path} is damaged (not a readable Parquet file)",
                             f"rerun `sae-sens {producer} --run {run} --sae {sae}` to rebuild it") from None

    def write_table(self, run: str, sae: str, table: str, data: pa.Table) -> dict[str, Any]:
        """Atomically write a table (adding run/sae columns) and record its hash in the manifest."""
        data = with_run_sae(data, run, sae)
        path = self.table_path(run, sae, table)
        with self.lock(run, sae):
            atomic_write_parquet(path, data)
            info = {"rows": data.num_rows, "hash": table_digest(data), "size": path.stat().st_size,
                    "sha256": file_sha256(path)}
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

    def table_problem(self, run: str, sae: str, table: str, *, verify: bool = False,
                      manifest: Manifest | None = None) -> str | None:
        """Why a table on disk is not the one the manifest recorded (None when it is): missing, a
        different size, an unreadable footer or a different row count; with ``verify`` a different
        content hash too. Cheap without ``verify``: a stat and the Parquet footer."""
        path = self.table_path(run, sae, table)
        info = (manifest or self.manifest(run, sae)).tables.get(table)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if info is None:
            return None
        if "size" in info and size != info["size"]:
            return f"{size} bytes, {info['size']} recorded"
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError):
            return "not a readable Parquet file"
        if rows != info.get("rows", rows):
            return f"{rows} rows, {info['rows']} recorded"
        if verify and "sha256" in info and file_sha256(path) != info["sha256"]:
            return "content differs from the recorded hash"
        return None

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
            data = read_manifest(d / MANIFEST) if d.is_dir() else None
            if data is not None:
                name = str(data.get("sae", d.name))
                self._folders.setdefault((run, name), d)
                out.append(name)
        return out

    def iter_run_saes(self) -> Iterator[tuple[str, str]]:
        for run in self.runs():
            for sae in self.saes(run):
                yield run, sae

    # ----- freshness ---------------------------------------------------------------------------
    def is_fresh(self, run: str, sae: str, stage: str, config: dict[str, Any], inputs: dict[str, str], *,
                 verify: bool = False) -> bool:
        """True when ``stage`` ran with this config and these inputs and its outputs are intact on disk
        (size and footer row count; with ``verify``, content hashes too)."""
        manifest = self.manifest(run, sae)
        rec = manifest.stage(stage)
        if rec is None or rec.config_hash != hash_config(config) or rec.inputs != inputs:
            return False
        for table, out in rec.outputs.items():
            if self.table_problem(run, sae, table, verify=verify, manifest=manifest) is not None:
                return False
            where = tuple(out["where"]) if out.get("where") else None
            if where is None:
                if manifest.tables.get(table, {}).get("hash", self.table_hash(run, sae, table)) != out["hash"]:
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
        with self.lock(run, sae):
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

    def damaged(self, run: str, sae: str, *, verify: bool = False) -> dict[str, str]:
        """Tables a recorded stage wrote that no longer match the manifest: table -> what is wrong."""
        manifest = self.manifest(run, sae)
        out: dict[str, str] = {}
        for key, rec in manifest.stages.items():
            if key.startswith("_"):
                continue
            for table in rec.outputs:
                if table not in out and (problem := self.table_problem(run, sae, table, verify=verify,
                                                                       manifest=manifest)):
                    out[table] = problem
        return out

    def status(self, run: str, sae: str, *, verify: bool = False) -> dict[str, str]:
        """Each recorded stage's status: ``done``; ``damaged`` (an output table on disk does not match
        what was recorded: truncated, emptied, altered); ``stale`` (an upstream table changed since it
        ran, or its own rows were replaced); the three stage families absent are ``missing``."""
        manifest = self.manifest(run, sae)
        damaged = self.damaged(run, sae, verify=verify)
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
                if table in damaged:
                    state = "damaged"
                    break
                if out.get("where") is None and manifest.tables.get(table, {}).get("hash") != out["hash"]:
                    state = "stale"
            result[key] = state
        for family in ("collect", "generate", "score"):
            if not any(k == family or k.startswith(family + ":") for k in result):
                result[family] = "missing"
        return result


