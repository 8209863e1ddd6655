"""Progress on stderr: rich bars on a terminal, plain timed lines off one (nohup, Slurm logs, CI).

Both are ``sae_sens.progress.ProgressSink``s; the library reports, only the CLI decides how it looks.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

LINE_INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _styled(message: str) -> Any:
    """A library message (plain text, never markup) for a terminal: a warning's prefix in yellow."""
    from rich.text import Text

    from ..progress import WARNING

    if message.startswith(WARNING):
        return Text(WARNING.rstrip(": "), style="yellow") + Text(": " + message[len(WARNING):])
    return Text(message)


@dataclass
class _Task:
    total: int | None
    started: float
    last_line: float
    done: int = 0
    info: str = ""
    finished: bool = field(default=False)
    lines: int = 0  # status lines written


class LineProgress:
    """A ``ProgressSink`` that writes a line per task every ``interval`` seconds: done/total, rate, ETA.

    A task that takes longer than ``interval`` gets a line every ``interval`` seconds and one when it
    ends; a quicker one stays silent (a short command's log is its result, or its one error line).
    Every ``log`` message ("loading model …", warnings) is written as it comes. Used as a context
    manager, a background thread also writes the line of a running task that has not advanced for
    ``interval`` seconds (one slow batch, a long generation), so the log never goes quiet.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> LineProgress:
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="sae-sens-progress", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1.0)
            self._ticker = None

    def _tick(self) -> None:
        while not self._stop.wait(self._interval / 2):
            self.heartbeat()

    def heartbeat(self) -> None:
        """The line of every running task whose last line is ``interval`` seconds old."""
        with self._lock:
            now = self._clock()
            for name, t in self._tasks.items():
                complete = t.total is not None and t.done >= t.total
                if not t.finished and not complete and now - t.last_line >= self._interval:
                    t.last_line, t.lines = now, t.lines + 1
                    self._write(self._status(name, t, now))

    def _write(self, line: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def _status(self, name: str, t: _Task, now: float) -> str:
        elapsed = max(now - t.started, 1e-9)
        rate = t.done / elapsed
        parts = [f"{t.done:,}/{t.total:,} ({100 * t.done / t.total:.0f}%)" if t.total else f"{t.done:,}"]
        parts.append(f"{rate:.3g}/s" if rate >= 0.1 else f"{elapsed / t.done:.3g}s each" if t.done else "0/s")
        if t.total and t.done and t.done < t.total:
            parts.append(f"ETA {_duration((t.total - t.done) / rate)}")
        parts.append(f"elapsed {_duration(elapsed)}")
        line = f"{name}: " + ", ".join(parts)
        return line + (f" · {t.info}" if t.info else "")

    def start(self, task: str, total: int | None = None) -> None:
        with self._lock:
            now = self._clock()
            self._tasks[task] = _Task(total=total, started=now, last_line=now)

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        with self._lock:
            if task not in self._tasks:
                self.start(task)
            t = self._tasks[task]
            t.done += n
            if info:
                t.info = info
            now = self._clock()
            if now - t.last_line >= self._interval:
                t.last_line, t.lines = now, t.lines + 1
                self._write(self._status(task, t, now))

    def finish(self, task: str) -> None:
        with self._lock:
            t = self._tasks.get(task)
            if t is None or t.finished:
                return
            t.finished = True
            if t.total is not None:
                t.done = max(t.done, t.total)
            if t.lines:  # it was long enough to report on: say that it ended
                self._write(f"{task}: finished {t.done:,} in {_duration(self._clock() - t.started)}")

    def log(self, message: str) -> None:
        self._write(message)  # plain already: the library writes no markup


class _Bars:
    """A ``ProgressSink`` drawing rich progress bars on stderr."""

    def __init__(self) -> None:
        from .output import progress

        self._progress = progress()
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:  # the error line alone should tell the story: drop the bars
            self._progress.live.transient = True
        self._progress.__exit__(*exc)

    def start(self, task: str, total: int | None = None) -> None:
        if task in self._tasks:
            self._progress.reset(self._tasks[task], total=total)
        else:
            self._tasks[task] = self._progress.add_task(task, total=total, info="")

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        if task not in self._tasks:
            self.start(task)
        self._progress.update(self._tasks[task], advance=n, info=info)

    def finish(self, task: str) -> None:
        if task in self._tasks:
            t = self._tasks[task]
            total = self._progress.tasks[t].total
            if total is not None:
                self._progress.update(t, completed=total)

    def log(self, message: str) -> None:
        self._progress.console.print(_styled(message), soft_wrap=True)


class RichProgress:
    """The CLI's ``ProgressSink``: rich bars when stderr is a terminal, else ``LineProgress`` lines."""

    def __init__(self, terminal: bool | None = None, *, verbose: bool = False) -> None:
        if terminal is None:
            from .output import err_console

            terminal = err_console.is_terminal
        self._sink: _Bars | LineProgress = _Bars() if terminal else LineProgress()
        # --verbose: a line when each task starts and ends (the original tool's "Step N: ..." lines),
        # however quick, besides the bars or the timed lines
        self._verbose = verbose
        self._started: dict[str, float] = {}

    def __enter__(self) -> RichProgress:
        self._sink.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sink.__exit__(*exc)

    def start(self, task: str, total: int | None = None) -> None:
        if self._verbose:
            self._started[task] = time.monotonic()
            self._sink.log(f"{task}: started" + (f" ({total} to do)" if total is not None else ""))
        self._sink.start(task, total)

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        self._sink.advance(task, n, info)

    def finish(self, task: str) -> None:
        self._sink.finish(task)
        if self._verbose and task in self._started:
            self._sink.log(f"{task}: done in {_duration(time.monotonic() - self._started.pop(task))}")

    def log(self, message: str) -> None:
        self._sink.log(message)
