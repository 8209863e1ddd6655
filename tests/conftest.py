"""Fixtures every test file may use: ``cli`` runs the real ``sae-sens`` entry point in this process
and returns its exit code and output (tests/support/cli.py); ``tiny_world`` is the tiny real model,
token-detector SAE and corpus (tests/support/testing.py), built once per session: read it, never
write into it (each test keeps its stores in its own ``tmp_path``)."""

from __future__ import annotations

import pytest

from tests.support.cli import CliRunner
from tests.support.testing import TinyWorld, build_tiny_world


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    return CliRunner(capsys)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    return build_tiny_world(tmp_path_factory.mktemp("tiny_world"))
