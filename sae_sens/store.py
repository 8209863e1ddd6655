"""The artifact store: ``<store>/<run>/<sae>/<table>.parquet`` plus ``manifest.json``.

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

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import faults
from .errors import MissingTableError, StoreError, StoreWriteError, UsageError
from .hashing import canonical_json, hash_config
from .locking import OnWait, file_lock, stderr_line

TABLES = ("features", "examples", "queries", "generations", "scores", "feature_stats")
DEFAULT_STORE = "evals"
DEFAULT_RUN = "default"
MANIFEST = "manifest.json"
LOCK = ".lock"
TMP_GLOB = ".*.tmp"  # what _mkstemp names a write in progress
MAX_RUN_NAME = 100

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


def _is_local_path(sae: str) -> bool:
    if re.match(r"^[A-Za-z][A-Za-z0-9_-]*:", sae):  # saelens:<release>/<id> and similar specs
        return False
    return "/" in sae or "\\" in sae or sae.startswith((".", "~")) or Path(sae).expanduser().exists()


def sae_identity(sae: str) -> str:
    """What makes an SAE itself: the resolved folder or file for local SAEs, else its name."""
    if _is_local_path(sae):
        return "path:" + str(Path(sae).expanduser().resolve())
    return sae


def sae_folder(sae: str) -> str:
    """The folder name of an SAE in a run: its slug, plus a short hash of its identity unless the slug
    is the name itself (so ``a/mysae`` and ``b/mysae`` never share ``mysae/``)."""
    slug = sae_slug(sae)
    identity = sae_identity(sae)
    if slug == sae and identity == sae:
        return slug
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def _file_mode() -> int:
    """0o666 minus the process umask: what ``open()`` would give a new file (mkstemp gives 0600)."""
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_GUARD:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


_UMASK_GUARD = threading.Lock()


def write_error(path: Path, e: OSError) -> StoreWriteError:
    """An OSError from writing ``path`` as one line that says what to do."""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return StoreWriteError(f"no space left to write {path}", "free some disk space (or pass another --store) and "
                          "rerun the same command; finished work is kept")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"cannot write {path}: the store is read-only ({e.strerror})",
                          "make it writable or pass a writable --store")
    if e.errno in (errno.ENOTDIR, errno.EEXIST) or isinstance(e, NotADirectoryError | FileExistsError):
        return StoreWriteError(f"cannot write {path}: a file is in the way of a store folder ({e.strerror})",
                          "pass --store a folder (or a path that does not exist yet)")
    if e.errno == errno.ENAMETOOLONG:
        return StoreWriteError(f"cannot write {path}: the path is too long", "use a shorter --run or --store")
    return StoreWriteError(f"cannot write {path}: {e.strerror or e}", "check the store folder and rerun")


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) from None


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


def _mkstemp(path: Path) -> tuple[int, str]:
    _mkdir(path.parent)
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None


def file_sha256(path: Path) -> str:
    """Hash of a file's bytes (``--verify``: any change to a table file since it was written)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
            os.fsync(f.fileno())
        faults.point("write:temp")
        os.replace(tmp, path)
        faults.point("write:renamed")
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    fd, tmp = _mkstemp(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        faults.point("write:temp")
        os.replace(tmp, path)
        faults.point("write:renamed")
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # pyarrow raises OSError for a full disk too
            raise write_error(path, e) from None
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


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sae-sens", "torch", "transformers", "sae-bench", "sae-lens", "openai", "pyarrow", "duckdb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
