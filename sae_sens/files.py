"""Durable files: atomic writes (temporary file in the same folder, fsync, rename; the fault points
of ``sae_sens.faults``), the errors they raise as one line, and content digests of tables and files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import faults
from .errors import StoreWriteError

TMP_GLOB = ".*.tmp"  # what _mkstemp names a write in progress


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


