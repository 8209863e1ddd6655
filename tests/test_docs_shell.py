"""The docs' and the README's read-only shell examples (`saes`, `runs`, `report ...`) run as written,
from a folder holding an `evals` store with the SAEs and the run they name: each exits 0."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from sae_sens.schemas import make_table
from sae_sens.store import Store
from tests.test_docs import ROOT, command_lines, pages

SAES = ("py_4k_topk_s0", "py_4k_relu_s0", "smol_576_topk")
READ_ONLY = ("saes", "runs", "report")


def documented() -> list[str]:
    texts = {**pages(), ROOT / "README.md": (ROOT / "README.md").read_text()}
    out = []
    for path, text in texts.items():
        if path.name == "cli.md":
            continue
        for line in command_lines(text):
            words = shlex.split(line)
            if len(words) > 1 and words[1] in READ_ONLY and not any(m in line for m in ("<", "...", "…", "$")):
                out.append(line)
    return sorted(set(out))


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    st = Store(tmp_path / "evals")
    for k, sae in enumerate(SAES):
        st.write_table("demo", sae, "feature_stats", make_table("feature_stats", [
            {"feature_index": 10 * k + i, "generator": "hf:demo:smollm2", "generated_sensitivity": (i + k) % 5 / 5,
             "original_sensitivity": 1 - i / 20} for i in range(6)]))
        st.manifest("demo", sae).save()
    (tmp_path / "evals" / "demo").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAE_SENS_STORE", raising=False)
    return tmp_path


@pytest.mark.slow  # every documented report in turn (~10 s)
def test_every_documented_read_only_command_runs(folder: Path, cli) -> None:  # type: ignore[no-untyped-def]
    lines = documented()
    assert len(lines) >= 12, lines
    for line in lines:
        res = cli(*shlex.split(line)[1:])
        assert res.code == 0, f"`{line}` exited {res.code}: {res.err[-800:]}"
