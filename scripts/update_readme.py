"""Regenerate the README's table reference from sae_sens/schemas.py (tests/test_readme.py checks it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sae_sens.schemas import markdown_reference  # noqa: E402

README = Path(__file__).resolve().parent.parent / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


if __name__ == "__main__":
    README.write_text(replace_block(README.read_text(), "tables", markdown_reference()))
