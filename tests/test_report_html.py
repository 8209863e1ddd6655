"""The HTML report in a real headless Chromium (Debian's `chromium`): the page renders with no
console message, a generated sample shows its activating token highlighted, and the filter hides
features above the sensitivity given in the address. Skips only when the browser is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sae_sens.cli import main
from sae_sens.schemas import make_table
from sae_sens.store import StageRecord, Store

RUN, SAE, GEN = "demo", "smol_576_topk", "hf:demo:smollm2"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,  # a real headless Chromium
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make install adds it as root)")]


def build_store(root: Path) -> Store:
    store = Store(root)
    # feature 0: 1 of 5 samples active; feature 1: one sample, active (flagged n=1)
    stats = [{"feature_index": 0, "generator": GEN, "generated_sensitivity": 0.2, "n_generated": 5,
              "original_sensitivity": 1.0, "top_activation": 2.0},
             {"feature_index": 1, "generator": GEN, "generated_sensitivity": 1.0, "n_generated": 1,
              "original_sensitivity": 1.0, "top_activation": 4.0}]
    store.write_table(RUN, SAE, "feature_stats", make_table("feature_stats", stats))
    texts = ["The cat sat", "Here are 11 samples that match:", "a dog", "the sun", "rain"]
    scores = [{"feature_index": 0, "source": "generated", "variant": "generated", "generator": GEN,
               "sample_index": i, "text": t, "max_activation": 2.0 if i == 0 else 0.0, "active": i == 0,
               "empty": False, "truncated": False, "frac_of_top": 1.0 if i == 0 else 0.0,
               "tokens": ["The", " cat", " sat"] if i == 0 else [t],
               "activations": [0.0, 2.0, 0.0] if i == 0 else [0.0]} for i, t in enumerate(texts)]
    scores.append({"feature_index": 1, "source": "generated", "variant": "generated", "generator": GEN,
                   "sample_index": 0, "text": "piano <b>keys</b>", "max_activation": 1.0, "active": True,
                   "empty": False, "truncated": False, "frac_of_top": 0.25,
                   "tokens": ["piano", " <b>keys</b>"], "activations": [1.0, 0.0]})
    store.write_table(RUN, SAE, "scores", make_table("scores", scores))
    store.write_table(RUN, SAE, "generations", make_table("generations", [
        {"feature_index": r["feature_index"], "generator": GEN, "sample_index": r["sample_index"], "text": r["text"]}
        for r in scores]))
    store.write_table(RUN, SAE, "examples", make_table("examples", [
        {"feature_index": 0, "example_index": 0, "kind": "top", "max_activation": 2.0, "text": "a {{cat}}",
         "tokens": ["a", " cat"], "activations": [0.0, 2.0]}]))
    manifest = store.manifest(RUN, SAE)
    manifest.set_stage("score", StageRecord(config={"threshold": 1e-6, "max_length": 128}, config_hash="h",
                                            inputs={}, versions={"duckdb": "1.0"}))
    manifest.save()
    return store


def chromium(url: str, profile: Path) -> tuple[str, list[str]]:
    """(the DOM after scripts ran, console lines) of ``url`` in headless Chromium."""
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_console_errors_are_seen(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error does show up in the console lines."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><script>noSuchFunction();</script></body></html>")
    _, console = chromium(page.as_uri(), tmp_path / "profile")
    assert any("noSuchFunction" in line for line in console)


def test_html_report_in_headless_chromium(tmp_path: Path) -> None:
    store = build_store(tmp_path / "evals")
    page = tmp_path / "report.html"
    main(["report", "--store", str(store.root), "--html", str(page), "--format", "csv"])
    dom, console = chromium(page.as_uri() + "#max=0.5", tmp_path / "profile")
    assert console == []
    assert 'data-filter="0.50"' in dom  # the filter script ran, with the value from the address
    feature = {m.group(1): m.group(0) for m in re.finditer(rf'<div class="feature" id="{RUN}/{SAE}/(\d+)"[^>]*>', dom)}
    assert set(feature) == {"0", "1"}
    assert "hidden" not in feature["0"] and "hidden" in feature["1"]  # 0.2 shown, 1.0 hidden at max 0.5
    samples = [s.split("</div>")[0] for s in dom.split('<div class="sample">')[1:]]
    cat = next(s for s in samples if "#0 " in s and "cat" in s)
    assert re.search(r'<span class="t" style="background:rgba\(255,140,0,1\.00\)" title="2"> cat</span>', cat)
    assert re.search(r'<span class="t" style="" title="0">The</span>', cat)  # a token that did not fire
    assert "100% of top" in cat
    preamble = next(s for s in samples if "Here are 11 samples" in s)
    assert '<span class="flag">preamble</span>' in preamble
    assert '<span class="flag">n=1</span>' in dom and "&lt;b&gt;keys&lt;/b&gt;" in dom and "<b>keys</b>" not in dom
    assert dom.count('src="data:image/png;base64,') == 3  # the width, histogram and L0 plots embedded
    assert 'alt="sensitivity_l0"' in dom
    assert '"max_length": 128' in dom and '"duckdb": "1.0"' in dom  # the run's config and versions
    # stable anchors by run, SAE and feature: links keep working when SAEs are added
    assert f'<a href="#{RUN}/{SAE}">{SAE}</a>' in dom  # summary row links to its SAE
    assert f'<a href="#{RUN}/{SAE}/0">' in dom and f'id="{RUN}/{SAE}"' in dom  # links per feature
    assert "Sensitivity at thresholds relative to the top activation" in dom  # every table the store has
    assert "(n = 1 to 5;" in dom  # the summary's warning about different n


def test_html_folder_is_an_index_and_a_page_per_sae(tmp_path: Path) -> None:
    store = build_store(tmp_path / "evals")
    other = "smol_1152_topk"
    for t in ("feature_stats", "scores", "generations", "examples"):  # a second SAE, same rows
        store.write_table(RUN, other, t, store.read_table(RUN, SAE, t).drop_columns(["run", "sae"]))
    folder = tmp_path / "site"
    main(["report", "--store", str(store.root), "--html", str(folder), "--format", "csv"])
    index = (folder / "index.html").read_text()
    assert 'class="feature"' not in index  # the index holds the tables, not the features
    assert f'href="{RUN}/{SAE}.html#{RUN}/{SAE}"' in index and f'href="{RUN}/{other}.html#{RUN}/{other}"' in index
    page = folder / RUN / f"{SAE}.html"
    dom, console = chromium(page.as_uri() + f"#{RUN}/{SAE}/1", tmp_path / "profile")
    assert console == []
    assert f'id="{RUN}/{SAE}/0"' in dom and f'id="{RUN}/{SAE}/1"' in dom and f'id="{RUN}/{other}/0"' not in dom
    assert 'href="../index.html"' in dom and f'href="../{RUN}/{other}.html#{RUN}/{other}"' in dom
    assert page.stat().st_size < (tmp_path / "site" / "index.html").stat().st_size + 200_000
