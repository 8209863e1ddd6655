"""Advisory locks between processes: one per run × SAE folder, one per shared cache.

Every read-modify-write of a run × SAE's manifest and tables happens inside that folder's lock, so
two processes (two ``generate`` runs, ``collect`` while ``score`` runs, Ray tasks on several
workers) never lose each other's rows, and a stage that waited re-checks what is done once it holds
the lock, so nothing is computed or paid for twice.

Usage (the whole API)::

    from sae_sens.store import Store

    store = Store("evals")
    with store.lock(run, sae):             # waits (with one line on stderr) while another holds it
        ...                                # read tables, compute, write tables, record the stage
    with store.lock(run, sae, wait=False): # raises LockedError (one line: who holds it) instead
        ...
    with store.cache_lock("generate"):     # a shared cache under <store>/_cache
        ...

or, for any file, ``with file_lock(path, what="collect"):``. The lock is re-entrant within a
thread (a stage holding it can call store methods that take it again); other threads of the same
process wait for it like other processes do.

How: ``fcntl.flock`` on a small lock file (``<store>/<run>/<sae>/.lock``), which also holds the
holder's pid, host and what it is doing, for the waiting message. The kernel drops the lock when the
holder exits or is killed, so a crash never leaves a stale lock. flock works across processes on
local filesystems; on NFS (Linux clients since 2.6.12) the kernel turns it into a POSIX byte-range
lock that the server arbitrates (NFSv4, or NLM for v3), so it holds across machines too. Lustre
needs the ``flock`` mount option; filesystems without lock support raise an error at the first lock.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LockedError, StoreError, StoreWriteError

try:  # pragma: no cover - Windows has no fcntl; locks are then per process only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

OnWait = Callable[[str], None]


def stderr_line(message: str) -> None:
    """The default ``on_wait``: a line on stderr (the CLI passes its own console's)."""
    print(message, file=sys.stderr, flush=True)  # noqa: T201  (a default sink, replaceable by the caller)


@dataclass
class _Entry:
    """This process's state for one lock file: threads of the process queue on ``rlock``."""

    rlock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    fd: int | None = None


_REGISTRY: dict[str, _Entry] = {}
_REGISTRY_GUARD = threading.Lock()


def _entry(path: Path) -> _Entry:
    key = os.path.abspath(path)
    with _REGISTRY_GUARD:
        return _REGISTRY.setdefault(key, _Entry())


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, as written by the holder: 'pid 12 on host (what)'."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    text = f"pid {info['pid']}"
    if info.get("host") and info["host"] != socket.gethostname():
        text += f" on {info['host']}"
    if info.get("what"):
        text += f" ({info['what']}, since {info.get('since', '?')})"
    return text


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StoreWriteError(f"cannot lock {path.parent}: the store is read-only ({e.strerror})",
                                  "make it writable or pass a writable --store") from None
        raise StoreWriteError(f"cannot create the lock file {path}: {e.strerror or e}",
                              "check the store folder (or pass another --store)") from None


@contextmanager
def file_lock(path: str | Path, *, wait: bool = True, what: str = "", on_wait: OnWait | None = stderr_line,
              hint: str = "rerun when it has finished, or pass --wait to queue behind it") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    ``wait=False`` raises ``LockedError`` at once when someone else holds it; ``wait=True`` calls
    ``on_wait`` once with a line saying who holds it, then blocks until it is free.
    """
    path = Path(path)
    entry = _entry(path)
    if not entry.rlock.acquire(blocking=False):  # another thread of this process holds it
        if not wait:
            raise LockedError(f"{path.parent} is locked by another task of this process", hint)
        if on_wait is not None:
            on_wait(f"waiting for the lock on {path.parent} (held by another task of this process)")
        entry.rlock.acquire()
    try:
        if entry.depth == 0:
            entry.fd = _acquire(path, wait=wait, what=what, on_wait=on_wait, hint=hint)
        entry.depth += 1
        try:
            yield
        finally:
            entry.depth -= 1
            if entry.depth == 0 and entry.fd is not None:
                fd, entry.fd = entry.fd, None
                _release(fd)
    finally:
        entry.rlock.release()


def _acquire(path: Path, *, wait: bool, what: str, on_wait: OnWait | None, hint: str) -> int:
    fd = _open(path)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StoreError(f"cannot lock {path}: {e.strerror or e}",
                                     "use a filesystem that supports flock for the store") from None
                who = holder(path)
                if not wait:
                    raise LockedError(f"{path.parent} is in use by {who}", hint) from None
                if on_wait is not None:
                    on_wait(f"waiting for {who} to finish with {path.parent} (--no-wait refuses instead)")
                fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "since": time.strftime("%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _release(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
