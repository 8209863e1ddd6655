"""Crash consistency at every write point: every stage is killed (SIGKILL, as a crash or an OOM kill
does) at *every* pass of every fault point of ``sae_sens.faults``, and must end with exactly the
tables and stage records of an uninterrupted run.

The matrix (``tests/support/kill_matrix.py``) runs the real ``sae-sens`` entry point in forked
children of one driver process, on the tiny real model, SAE and corpus: collect (timed checkpoints
every 0.1 s), generate with imported texts, the ``corpus:`` control, generate sampling with the tiny
model as an ``hf:`` generator (a resumed run must sample the very texts an uninterrupted one does),
score, and the judge against the real OpenAI-compatible server (a separate process). After each
kill, ``runs`` and ``report`` must show the same state for every stage; a damaged table's repair
hint is run verbatim, then the interrupted command again; the store must then equal the reference.

One real-process test beside it kills ``python -m sae_sens`` itself (the fault plan read from the
environment, as a user's process would), in the slow tier.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.kill_matrix import snapshot, stage_states
from tests.support.testing import TinyWorld

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SAE_SENS_FAULT"))}
    out.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return out


def commands(world: TinyWorld, base: Path, judge_url: str) -> list[dict[str, Any]]:
    texts = base / "texts.csv"
    texts.write_text("feature_index,text\n" + "".join(
        f"{f},{w} and more{w} words\n" for f in (0, 1, 2) for w in world.targets[:3]))
    template = base / "short.txt"  # the tiny model reads 512 positions: a short prompt
    template.write_text("=== system ===\nwrite $n_request texts\n=== user ===\n$examples\n")
    common = ["--store", "STORE", "--run", "r", "--sae", str(world.sae)]
    model = ["--model", str(world.model), "--device", "cpu"]
    # worker: which of the two parallel workers kills it (about equal halves of the time)
    return [
        {"name": "collect", "worker": 0, "cmd": [
            "collect", *common, *model, "--corpus", str(world.corpus), "--total-tokens", "3000", "--context-size",
            "48", "--feature-ids", "0,1,2", "--n-top-ex-for-generation", "4", "--checkpoint-every", "0.1"]},
        {"name": "generate", "worker": 1, "cmd": [
            "generate", *common, "--from-table", str(texts), "--generator", "table:mine"]},
        {"name": "control", "worker": 1, "cmd": [
            "generate", *common, "--generator", f"corpus:{world.corpus}", "--samples-per-feature", "3",
            "--device", "cpu"]},
        {"name": "generate_hf", "worker": 0, "cmd": [
            "generate", *common, "--generator", f"hf:{world.model}", "--prompt-template", str(template),
            "--samples-per-feature", "2", "--max-tokens", "8", "--batch-size", "2", "--device", "cpu",
            "--temperature", "1.0"]},
        {"name": "score", "worker": 0, "cmd": [
            "score", *common, *model, "--checkpoint-every", "0.1", "--batch-size", "2"]},
        {"name": "judge", "worker": 1, "cmd": [
            "judge", *common, *model, "--judge", "openai:judge-model", "--base-url", judge_url,
            "--generator", "table:mine", "--max-workers", "2"]},
    ]


def judge_server(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    url_file = base / "judge.url"
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.openai_server", str(url_file), "judge-model"],
                            cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        if url_file.exists() and url_file.read_text():
            return proc, url_file.read_text()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the judge's server never started")


def test_killed_at_every_pass_of_every_point_then_rerun_equals_uninterrupted(tiny_world: TinyWorld,
                                                                            tmp_path: Path) -> None:
    server, url = judge_server(tmp_path)
    try:
        spec = {"work": str(tmp_path / "work"), "run": "r", "stages": commands(tiny_world, tmp_path, url)}
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, "-m", "tests.support.kill_matrix", str(tmp_path / "spec.json"),
                               str(tmp_path / "report.json")], cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=900)
    finally:
        server.kill()
        server.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    report = {r["stage"]: r for r in json.loads((tmp_path / "report.json").read_text())}
    assert not [r["error"] for r in report.values() if "error" in r]
    assert set(report) == {"collect", "generate", "control", "generate_hf", "score", "judge"}
    failures = [f for r in report.values() for f in r["failures"]]
    assert not failures, "\n".join(failures[:10])
    for name, r in report.items():
        hits = r["hits"]
        assert hits.get("write:temp", 0) >= 2 and hits.get("write:renamed", 0) >= 2, (name, hits)
        # every pass of every point was aimed at (timed checkpoints aside, each one a kill)
        assert len(r["kills"]) == sum(hits.values()), name
        assert sum(k["killed"] for k in r["kills"]) >= len(r["kills"]) - 2, name
    assert report["generate_hf"]["hits"]["journal:appended"] == 3  # one answer per feature: two remain
    assert report["judge"]["hits"]["journal:appended"] >= 4
    # kills between a table's rename and its record: runs said damaged and its hint was run verbatim
    repaired = [k for r in report.values() for k in r["kills"] if k["repair"]]
    assert repaired and any("damaged" in s.values() for k in repaired for s in k["states"])
    assert sum(len(r["kills"]) for r in report.values()) >= 80


@pytest.mark.slow  # real processes
def test_a_real_process_killed_by_its_environment_plan_resumes(tiny_world: TinyWorld, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sae_sens", "collect", "--store", "STORE", "--run", "r", "--sae",
           str(tiny_world.sae), "--model", str(tiny_world.model), "--device", "cpu", "--corpus",
           str(tiny_world.corpus), "--total-tokens", "3000", "--context-size", "48", "--feature-ids", "0,1,2"]

    def run(store: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(store) if w == "STORE" else w for w in cmd], cwd=ROOT, env={**env(), **extra},
                              capture_output=True, text=True, timeout=600)

    ref = tmp_path / "ref"
    log = tmp_path / "points.log"
    assert run(ref, SAE_SENS_FAULT_LOG=str(log)).returncode == 0
    last = Counter(log.read_text().split())["write:renamed"]
    store = tmp_path / "killed"
    killed = run(store, SAE_SENS_FAULT=f"write:renamed:{last - 1}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = run(store)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr
    assert snapshot(store) == snapshot(ref) and stage_states(store, "r") == stage_states(ref, "r")
    shutil.rmtree(store)
