"""The Typer app object and the rich progress sink that every command module shares.

Command modules register on ``app`` from here; ``cli.app.main`` imports them, so this module imports
no command (one direction, no cycle).
"""

from __future__ import annotations

from typing import Any

import typer

app = typer.Typer(
    name="sae-sens",
    help="Measure how sensitive SAE features are: collect -> generate -> score -> report.\n\n"
    "Example: sae-sens run --sae py_4k_topk_s0 --features 50",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class RichProgress:
    """A ``ProgressSink`` drawing rich progress bars on stderr."""

    def __init__(self) -> None:
        from .output import progress

        self._progress = progress()
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
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
        self._progress.console.print(message)
