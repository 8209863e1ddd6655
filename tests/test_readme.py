"""The README documents every table's columns exactly as the schemas define them."""

from __future__ import annotations

import re
from pathlib import Path

from sae_sens.schemas import SCHEMAS, markdown_reference

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_table_reference_matches_schemas() -> None:
    block = re.search(r"<!-- tables:start -->\n(.*?)<!-- tables:end -->", README, re.S)
    assert block is not None
    assert block.group(1) == markdown_reference(), "run: python scripts/update_readme.py"
    for name, schema in SCHEMAS.items():
        for field in schema:
            assert f"| {field.name} |" in block.group(1), (name, field.name)


def test_readme_opens_with_the_two_commands() -> None:
    head = README[:800]
    assert "make demo" in head and "make test" in head
