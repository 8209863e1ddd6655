"""The README keeps to what a newcomer needs first: the two commands at the top, under 200 lines,
links that lead to pages that exist, and a demo block that is the demo store's own report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_stays_short() -> None:
    head = README[:800]
    assert "make demo" in head and "make test" in head
    assert README.count("\n") < 200


def test_every_readme_link_leads_to_a_file() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 15
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_the_demo_block_is_the_demo_stores_report() -> None:
    """Where a demo store is at hand (after `make demo`), the README's block is its report, exactly."""
    import sys

    if not (ROOT / "evals" / "demo").is_dir():
        pytest.skip("no demo store here: `make demo` writes one")
    sys.path.insert(0, str(ROOT / "scripts"))
    import update_docs

    block = re.search(r"<!-- demo:start -->\n(.*?)<!-- demo:end -->", README, re.S)
    assert block is not None and block.group(1) == update_docs.demo_block(), \
        "run: python scripts/update_docs.py --demo"
