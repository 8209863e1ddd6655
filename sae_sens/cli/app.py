"""The ``sae-sens`` entry point: registers the commands, maps typed errors to one line and an exit code.

Each command is a thin layer over one library call (``cli/*_cmd.py``, on the app in ``cli/base.py``).
Click's usage errors become one line too (which option, what it expects, exit 2); bare ``sae-sens``
prints the help and exits 0.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..errors import SaeSensError
from .base import PROG, RichProgress, app  # noqa: F401  (re-exported)


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover
        return
    load_dotenv(os.path.join(os.getcwd(), ".env"), override=False)


def _quiet_libraries() -> None:
    # read by the libraries when (and only if) a command imports them; importing transformers here
    # would cost a second on every command
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # a long-lived process (a notebook, a test session) imported them before: the variables come too late
    if "transformers" in sys.modules:
        logging = sys.modules["transformers"].logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()


def _click_exceptions() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """(ClickException, UsageError, NoArgsIsHelpError) of the click that typer uses (vendored in recent typer)."""
    try:
        from typer._click import exceptions as ce
    except ImportError:  # pragma: no cover  (older typer: the real click)
        from click import exceptions as ce  # type: ignore[no-redef]
    return ce.ClickException, ce.UsageError, ce.NoArgsIsHelpError


def _err(message: str) -> None:
    from .output import err_console

    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)


def _usage_line(e: Any, argv: list[str]) -> str:
    """A click usage error as one line: what is wrong (which option, what it expects) and where the help is."""
    from rich.markup import escape

    message = escape(" ".join(str(e.format_message()).split()).rstrip("."))
    habits = {"--json": "--format json", "--csv": "--format csv", "--tsv": "--format tsv"}
    for flag, instead in habits.items():  # a habit from other tools: name the option that does it
        if message.startswith(f"No such option: {flag}"):
            message = f"No such option: {flag}; use {instead}"
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        where = ctx.command_path
    else:  # some parser errors carry no context: the command is the first word that names one
        names = {c.name for c in app.registered_commands}
        where = " ".join([PROG, *[a for a in argv if a in names][:1]])
    return f"{message}; see '{escape(where)} --help'"


def _original_spellings(argv: list[str]) -> list[str]:
    """The original tool's command line (``--sae-names A B``, ...) rewritten, one note per spelling."""
    from .original_argv import translate

    argv, notes = translate(argv)
    if notes:
        from .output import err_console

        for note in notes:
            err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    return argv


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typed errors become one line on stderr and a non-zero exit."""
    from . import commands  # noqa: F401  (registers the commands)

    _load_dotenv()
    _quiet_libraries()
    debug = os.environ.get("SAE_SENS_DEBUG") == "1"
    click_error, usage_error, no_args_help = _click_exceptions()
    argv = _original_spellings(list(sys.argv[1:] if argv is None else argv))
    try:
        # without standalone mode, typer *returns* the code of a typer.Exit, and turns Ctrl-C into Exit(130)
        code = app(args=argv, prog_name=PROG, standalone_mode=False)
        if isinstance(code, int) and code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except SaeSensError as e:
        if debug:
            raise
        from rich.markup import escape  # messages may hold brackets: pip install 'sae-sens[ray]'

        from ..errors import BatchPendingError

        if isinstance(e, BatchPendingError):  # not a failure: the work is at the server
            from .output import err_console

            err_console.print(f"[yellow]waiting:[/] {escape(e.one_line())}", highlight=False, soft_wrap=True)
        else:
            _err(escape(e.one_line()))
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        from .output import err_console

        err_console.print("[yellow]interrupted[/]: finished work is saved; rerun the same command to resume")
        sys.exit(130)
    except no_args_help as e:  # bare `sae-sens`: the help is the answer
        sys.stdout.write(str(e.format_message()).rstrip("\n") + "\n")  # type: ignore[attr-defined]
        sys.exit(0)
    except usage_error as e:
        _err(_usage_line(e, argv))
        sys.exit(2)
    except click_error as e:
        _err(_usage_line(e, argv))
        sys.exit(int(getattr(e, "exit_code", 1)))
    except typer.Abort:
        sys.exit(1)
    except Exception as e:  # anything unexpected: one line, the traceback on request
        if debug:
            raise
        from rich.markup import escape

        first = str(e).splitlines()[0] if str(e) else ""
        _err(escape(f"{type(e).__name__}: {first}. Rerun with SAE_SENS_DEBUG=1 for the traceback."))
        sys.exit(1)
