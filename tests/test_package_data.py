"""The package data that pyproject.toml ships: every pattern names files that exist, and every
non-Python file in the package is shipped (a wheel without ``prompts/generate.txt`` would install and
then fail at the first ``generate``)."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sae_sens"


def _patterns() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["setuptools"]["package-data"]["sae_sens"]


def _data_files() -> set[Path]:
    return {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts}


def test_every_package_data_pattern_names_existing_files() -> None:
    empty = [pattern for pattern in _patterns() if not any(p.is_file() for p in PACKAGE.glob(pattern))]
    assert not empty, f"package-data patterns that match no file (remove them from pyproject.toml): {empty}"


def test_every_data_file_in_the_package_is_shipped() -> None:
    shipped = {p for pattern in _patterns() for p in PACKAGE.glob(pattern) if p.is_file()}
    missing = sorted(str(p.relative_to(ROOT)) for p in _data_files() - shipped)
    assert not missing, f"files in the package that no package-data pattern ships: {missing}"
