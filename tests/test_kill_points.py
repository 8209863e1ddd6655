"""Crash consistency at every named write point: each stage is killed (SIGKILL, as a crash or an OOM
kill does) at the first and the last time it reaches each fault point of ``sae_sens.faults``, rerun
as is, and must end with exactly the tables and stage records of an uninterrupted run, and ``runs``
must then show every stage as an uninterrupted run leaves it.

Real CLI processes on the tiny real model, SAE and corpus: collect, generate with imported texts,
generate sampling with the tiny model as an ``hf:`` generator (killed after its first journaled
answer, the resumed run must sample the very texts an uninterrupted one does), and score. Volatile parts of a record (times, counters such as ``n_resumed``) are left out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sae_sens.faults import POINTS
from sae_sens.runs import list_runs
from sae_sens.store import Store
from tests.support.testing import TinyWorld

pytestmark = pytest.mark.slow  # dozens of real CLI processes

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"latency_s"}
LATENCY_TABLES = {"queries"}  # hold latency_s: their recorded content hashes differ between runs


def sae_sens(*args: str, fault: str | None = None, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SAE_SENS_FAULT"))}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    if fault:
        env["SAE_SENS_FAULT"] = fault
    if log:
        env["SAE_SENS_FAULT_LOG"] = str(log)
    return subprocess.run([sys.executable, "-m", "sae_sens", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def snapshot(store: Path) -> dict[str, object]:
    """Every table's rows and every stage record's durable part, per run x SAE folder."""
    out: dict[str, object] = {}
    for manifest in sorted(store.glob("*/*/manifest.json")):
        folder = manifest.parent
        data = json.loads(manifest.read_text())
        def durable(table: str, info: dict[str, object]) -> object:
            return info["rows"] if table in LATENCY_TABLES else (info["hash"], info["rows"])

        out[f"{folder.name}/stages"] = {
            k: {**{f: v[f] for f in ("config", "config_hash", "inputs")},
                "outputs": {t: durable(t, i) for t, i in v["outputs"].items()}}
            for k, v in data["stages"].items()}
        out[f"{folder.name}/tables"] = {k: durable(k, v) for k, v in data["tables"].items()}
        for table in sorted(folder.glob("*.parquet")):
            # as JSON text: NaN (absent keys, thresholds) then compares equal to NaN; a request's
            # latency is the one column a rerun cannot repeat
            rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in pq.read_table(table).to_pylist()]
            out[f"{folder.name}/{table.name}"] = json.dumps(rows, default=str)
    return out


@pytest.fixture(scope="module")
def stages(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    """Per stage: the store it starts from (the stages before it done) and its command."""
    base = tmp_path_factory.mktemp("kill")
    texts = base / "texts.csv"
    texts.write_text("feature_index,text\n" + "".join(
        f"{f},{w} and more{w} words\n" for f in (0, 1, 2) for w in tiny_world.targets[:3]))
    common = ["--store", "STORE", "--run", "r", "--sae", str(tiny_world.sae)]
    collect = ["collect", *common, "--model", str(tiny_world.model), "--device", "cpu", "--corpus",
               str(tiny_world.corpus), "--total-tokens", "3000", "--context-size", "48", "--feature-ids", "0,1,2",
               "--n-top-ex-for-generation", "4", "--checkpoint-every", "0.1"]
    generate = ["generate", *common, "--from-table", str(texts), "--generator", "table:mine"]
    template = base / "short.txt"  # the tiny model reads 512 positions: a short prompt
    template.write_text("=== system ===\nwrite $n_request texts\n=== user ===\n$examples\n")
    generate_hf = ["generate", *common, "--generator", f"hf:{tiny_world.model}", "--prompt-template", str(template),
                   "--samples-per-feature", "2", "--max-tokens", "8", "--batch-size", "2", "--device", "cpu",
                   "--temperature", "1.0"]
    score = ["score", *common, "--model", str(tiny_world.model), "--device", "cpu", "--checkpoint-every", "0.1",
             "--batch-size", "2"]
    out = {}
    store = base / "empty"
    for name, cmd in (("collect", collect), ("generate", generate), ("score", score)):
        out[name] = (store, cmd)
        if name == "generate":  # sampled by a local model, from the same collected store
            out["generate_hf"] = (store, generate_hf)
        after = base / f"after-{name}"
        shutil.copytree(store, after) if store.exists() else after.mkdir()
        done = sae_sens(*[str(after) if w == "STORE" else w for w in cmd])
        assert done.returncode == 0, done.stderr
        store = after
    return out


@pytest.mark.parametrize("stage", ["collect", "generate", "generate_hf", "score"])
def test_killed_at_any_point_then_rerun_equals_uninterrupted(stages: dict[str, tuple[Path, list[str]]],
                                                             stage: str, tmp_path: Path) -> None:
    start, cmd = stages[stage]

    def fresh(name: str) -> Path:
        store = tmp_path / name
        shutil.copytree(start, store) if start.exists() else store.mkdir()
        return store

    def command(store: Path) -> list[str]:
        return [str(store) if w == "STORE" else w for w in cmd]

    ref = fresh("ref")
    log = tmp_path / "points.log"
    done = sae_sens(*command(ref), log=log)
    assert done.returncode == 0, done.stderr
    hits = Counter(log.read_text().split())
    assert hits["write:temp"] >= 2 and hits["write:renamed"] >= 2, hits  # the stage does pass its points
    if stage == "generate_hf":  # one journaled answer per feature: killed after the first, two remain
        assert hits["journal:appended"] == 3, hits
    want = snapshot(ref)

    def states(store: Path) -> list[dict[str, str]]:
        return [r.stages for r in list_runs(Store(store), "r")]

    assert "done" in states(ref)[0].values()
    tried = 0
    for point in POINTS:
        for nth in sorted({1, hits[point]}) if hits[point] else []:
            for attempt in range(3):
                store = fresh(f"{point.replace(':', '-')}-{nth}-{attempt}")
                attempt_log = tmp_path / f"points-{point.replace(':', '-')}-{nth}-{attempt}.log"
                killed = sae_sens(*command(store), fault=f"{point}:{nth}", log=attempt_log)
                if killed.returncode == -signal.SIGKILL or nth == 1:
                    break
                # checkpoints are timed (--checkpoint-every 0.1): a slower or quicker run passes a point
                # fewer times than the reference did; aim at this run's own last hit instead
                nth = Counter(attempt_log.read_text().split())[point]
            assert killed.returncode == -signal.SIGKILL, (point, nth, killed.stderr)
            rerun = sae_sens(*command(store))
            assert rerun.returncode == 0, (point, nth, rerun.stderr)
            assert "Traceback" not in rerun.stderr
            got = snapshot(store)
            assert got == want, (point, nth, [k for k in want if got.get(k) != want[k]])
            assert states(store) == states(ref), (point, nth)
            tried += 1
    assert tried >= 4
