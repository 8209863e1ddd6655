"""The ``sae-sens`` entry point: registers the commands, maps typed errors to one line and an exit code.

Each command is a thin layer over one library call (``cli/*_cmd.py``, on the app in ``cli/base.py``)."""

from __future__ import annotations

import os
import sys

import typer

from ..errors import SaeSensError
from .base import RichProgress, app  # noqa: F401  (re-exported)


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
