"""The docs site: it builds strictly, its generated pages are current, every command and every table
has its page, and every ``sae-sens`` command line in the docs and the README names a real command
with options that command takes, and parses with the real parser (types, choices, required options)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))


def pages() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md"))}


@pytest.mark.slow  # mkdocs builds the whole site (a few seconds)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_generated_pages_are_current() -> None:
    import update_docs

    from sae_sens.schemas import markdown_reference

    tables = (DOCS / "reference" / "tables.md").read_text()
    block = re.search(r"<!-- tables:start -->\n(.*?)<!-- tables:end -->", tables, re.S)
    assert block is not None and block.group(1) == markdown_reference(), "run: python scripts/update_docs.py"
    assert (DOCS / "reference" / "cli.md").read_text() == update_docs.cli_reference(), \
        "run: python scripts/update_docs.py"


def test_every_command_and_every_table_has_its_page() -> None:
    import update_docs

    from sae_sens.schemas import SCHEMAS

    cli = (DOCS / "reference" / "cli.md").read_text()
    tables = (DOCS / "reference" / "tables.md").read_text()
    for c in update_docs.commands():
        assert f"\n## sae-sens {c}\n" in cli, c
    for name, schema in SCHEMAS.items():
        assert f"#### `{name}`" in tables, name
        for field in schema:
            assert f"| {field.name} |" in tables, (name, field.name)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in pages():
        assert str(page.relative_to(DOCS)) in nav, f"{page} is not in mkdocs.yml's nav"


def _options() -> dict[str, set[str]]:
    import typer.main

    from sae_sens.cli import commands as _  # noqa: F401
    from sae_sens.cli.base import app

    group = typer.main.get_command(app)
    out = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        out[name] = opts | {"--help", "-h"}
    return out


def command_lines(text: str) -> list[str]:
    """``sae-sens ...`` lines of the fenced code blocks (``$ `` prompts and comments stripped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console|text)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("sae-sens "):
                out.append(line.split(" #")[0].split(" | ")[0].split(" && ")[0])
    return out


def test_every_documented_command_line_uses_real_options() -> None:
    import typer.main

    from sae_sens.cli.base import app
    from sae_sens.cli.original_argv import translate

    options = _options()
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    texts = {**pages(), ROOT / "README.md": (ROOT / "README.md").read_text()}
    checked = parsed = 0
    for path, text in texts.items():
        if path.name == "cli.md":
            continue  # the help itself
        for line in command_lines(text):
            try:
                words = shlex.split(line)
            except ValueError:
                continue  # a placeholder with an odd quote
            command = words[1]
            if command.startswith("-"):
                continue  # sae-sens --version
            assert command in options, f"{path.name}: unknown command in `{line}`"
            args = translate(words[1:])[0][1:]  # the original tool's spellings, as `run` reads them
            for w in args:
                if w.startswith("--") and len(w) > 2:
                    assert w.split("=")[0] in options[command], f"{path.name}: `{line}`: {w} is not an option"
            checked += 1
            if any(mark in line for mark in ("<", "...", "…", "--help", " -h", "$")):
                continue  # a placeholder (`<that folder>`, an elided list, a shell variable) or a help line
            # the real parser: every value of the right type and choice, every required option given
            try:
                commands[command].make_context(command, list(args))
            except Exception as e:  # typer's own click, or a value a callback refuses (an unknown SAE)
                message = e.format_message() if hasattr(e, "format_message") else str(e)
                raise AssertionError(f"{path.name}: `{line}`: {message}") from None
            parsed += 1
    assert checked >= 40 and parsed >= 30, (checked, parsed)
