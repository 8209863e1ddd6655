"""The one way the tests run the CLI in process: the real ``sae-sens`` entry point on an argv list,
its exit code and what it wrote (the ``cli`` fixture in tests/conftest.py hands one out)."""

from __future__ import annotations

from typing import NamedTuple

import pytest


class CliResult(NamedTuple):
    code: int
    out: str
    err: str


class CliRunner:
    """``cli("report", "--store", s)`` runs ``sae-sens report --store s`` through ``sae_sens.cli.main``
    (option parsing, error mapping and exit codes as a user meets them) and returns what that
    command alone wrote; ``cli.ok(...)`` also asserts it exited 0, with its stderr as the message."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str) -> CliResult:
        from sae_sens.cli import main

        self._capsys.readouterr()  # earlier output is not this command's
        try:
            main(list(args))
            code = 0
        except SystemExit as e:  # sys.exit(message) exits 1, as the interpreter does
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = self._capsys.readouterr()
        return CliResult(code, out, err)

    def ok(self, *args: str) -> CliResult:
        result = self(*args)
        assert result.code == 0, f"sae-sens {' '.join(args)} exited {result.code}:\n{result.err}"
        return result
