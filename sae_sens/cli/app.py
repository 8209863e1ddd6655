"""The ``sae-sens`` Typer app. Each command is a thin layer over one library call."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..errors import SaeSensError

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


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover
        return
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typed errors become one line on stderr and a non-zero exit."""
    from . import commands  # noqa: F401  (registers the commands)

    _load_dotenv()
    _quiet_libraries()
    debug = os.environ.get("SAE_SENS_DEBUG") == "1"
    try:
        # without standalone mode, typer *returns* the code of a typer.Exit, and turns Ctrl-C into Exit(130)
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except SaeSensError as e:
        if debug:
            raise
        from rich.markup import escape  # messages may hold brackets: pip install 'sae-sens[ray]'

        from .output import err_console

        err_console.print(f"[bold red]error:[/] {escape(e.one_line())}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        from .output import err_console

        err_console.print("[yellow]interrupted[/]: finished work is saved; rerun the same command to resume")
        sys.exit(130)
    except Exception as e:  # click usage errors and anything unexpected
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        from .output import err_console

        first = str(e).splitlines()[0] if str(e) else ""
        err_console.print(
            f"[bold red]error:[/] {type(e).__name__}: {first}. Rerun with SAE_SENS_DEBUG=1 for the traceback.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
