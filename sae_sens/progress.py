"""How library code reports progress without printing: the CLI passes a rich-backed sink. Messages
are plain text: the library never writes markup; the CLI decides how a warning looks."""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    def start(self, task: str, total: int | None = None) -> None: ...
    def advance(self, task: str, n: int = 1, info: str = "") -> None: ...
    def finish(self, task: str) -> None: ...
    def log(self, message: str) -> None: ...


class NullProgress:
    def start(self, task: str, total: int | None = None) -> None:
        pass

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        pass

    def finish(self, task: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


NULL_PROGRESS = NullProgress()

WARNING = "warning: "  # a log line that starts so is a warning (a terminal shows it in yellow)


def warn(progress: ProgressSink, message: str) -> None:
    """Log ``message`` as a warning: plain text (the CLI styles it), never markup."""
    progress.log(WARNING + message)


def warn_all(progress: ProgressSink, label: str, warnings: list[str]) -> None:
    """A stage's warnings, each as one line naming what it is about (a generator, a judge)."""
    for w in warnings:
        warn(progress, f"{label}: {w}")


def some(items: list[object] | list[int] | list[str], n: int = 10) -> str:
    """The first ``n`` of ``items`` for a message, ``, ...`` when there are more."""
    return ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "")
