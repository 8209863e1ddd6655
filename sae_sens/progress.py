"""How library code reports progress without printing: the CLI passes a rich-backed sink."""

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
