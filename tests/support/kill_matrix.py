"""The kill-point matrix at *every* pass of every fault point, fast enough for the fast tier.

One driver process imports the CLI and torch once, then forks a child per command: a forked child
starts in milliseconds with everything imported, runs the real ``sae-sens`` entry point
in-process on an argv list, and dies by SIGKILL at the planned pass of a fault point
(``sae_sens.faults``), exactly as a crash does (no ``finally``, no atexit, no flush). The driver
never starts a thread itself (torch runs on one thread, tokenizers without their pool), so forking
it is safe.

Per stage: an uninterrupted run gives the reference tables, records and states and counts the
passes of each point; then for each point and each pass ``n`` of it a fresh copy of the start store
is killed at pass ``n`` and

- ``runs`` (``runs.list_runs``) and ``report`` (its ``runs`` view, what ``report --sql`` and the
  stale warnings read) must show the same state for every stage family;
- where ``runs`` names a damaged table, its repair command is run **verbatim** (split as a shell
  would); otherwise the stage's own command is run again;
- the store must then hold exactly the reference tables and stage records, and show the reference
  states.

Run as ``python -m tests.support.kill_matrix SPEC.json REPORT.json`` (the fast test does); the
report lists every kill and every mismatch.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before any tokenizer: no thread pool to fork

VOLATILE = {"latency_s"}
LATENCY_TABLES = {"queries", "judgments"}  # hold latency_s: their recorded content hashes differ between runs


def snapshot(store: Path) -> dict[str, object]:
    """Every table's rows and every stage record's durable part, per run x SAE folder."""
    import pyarrow.parquet as pq

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


def stage_states(store: Path, run: str) -> list[dict[str, str]]:
    """``runs``: per run × SAE, every stage key's state (one per generator, the pass apart)."""
    from sae_sens.runs import list_runs
    from sae_sens.store import Store

    return [r.stages for r in list_runs(Store(store), run)]


def run_states(store: Path, run: str) -> list[dict[str, str]]:
    """``runs``: per run × SAE, each stage family's state."""
    from sae_sens.freshness import family_states
    from sae_sens.runs import list_runs
    from sae_sens.store import Store

    return [family_states(r.stages) for r in list_runs(Store(store), run)]


def report_states(store: Path, run: str) -> list[dict[str, str]]:
    """``report``: the same, from the ``runs`` view its SQL, warnings and HTML read."""
    from sae_sens.freshness import FAMILIES
    from sae_sens.report import connect
    from sae_sens.store import Store

    con = connect(Store(store))
    rows = con.execute(f"SELECT sae, {', '.join(FAMILIES)} FROM runs WHERE run = ? ORDER BY sae", [run]).fetchall()
    return [dict(zip(FAMILIES, r[1:], strict=True)) for r in rows]


def repair_commands(store: Path, run: str) -> list[str]:
    from sae_sens.runs import list_runs
    from sae_sens.store import Store

    return sorted({c for r in list_runs(Store(store), run) for c in r.repair_commands.values()})


def child(argv: list[str], out: Path, *, fault: str | None = None, log: Path | None = None) -> int:
    """Run ``sae-sens ARGV`` in a forked child; its exit code, or -9 when it was killed."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if fault:
                os.environ["SAE_SENS_FAULT"] = fault
            if log:
                os.environ["SAE_SENS_FAULT_LOG"] = str(log)
            from sae_sens.cli import main

            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _argv(cmd: list[str], store: Path) -> list[str]:
    return [str(store) if w == "STORE" else w for w in cmd]


def matrix(name: str, start: Path, cmd: list[str], work: Path, run: str) -> dict[str, Any]:
    """Kill ``cmd`` at every pass of every point, from copies of ``start``; what happened."""
    from sae_sens.faults import POINTS

    work.mkdir(parents=True)

    def fresh(label: str) -> Path:
        store = work / label
        shutil.copytree(start, store) if start.exists() else store.mkdir()
        return store

    ref = fresh("ref")
    log = work / "ref.points"
    code = child(_argv(cmd, ref), work / "ref.out", log=log)
    if code != 0:
        return {"stage": name, "error": f"reference run exited {code}: {(work / 'ref.out').read_text()[-2000:]}"}
    hits = Counter(log.read_text().split())
    want, want_states = snapshot(ref), stage_states(ref, run)
    kills: list[dict[str, Any]] = []
    failures: list[str] = []
    for point in POINTS:
        for nth in range(1, hits[point] + 1):
            label = f"{point.replace(':', '-')}-{nth}"
            store = fresh(label)
            code = child(_argv(cmd, store), work / f"{label}.out", fault=f"{point}:{nth}")
            kill: dict[str, Any] = {"point": point, "nth": nth, "killed": code == -signal.SIGKILL}
            if code not in (0, -signal.SIGKILL):  # timed checkpoints: a run may pass a point fewer times
                failures.append(f"{name} {label}: exited {code}: {(work / f'{label}.out').read_text()[-1500:]}")
                continue
            seen_runs, seen_report = run_states(store, run), report_states(store, run)
            kill["states"] = seen_runs
            if seen_runs != seen_report:
                failures.append(f"{name} {label}: runs says {seen_runs}, report says {seen_report}")
            fixes = repair_commands(store, run)
            kill["repair"] = fixes
            # a damaged table's repair hint, verbatim (``a && b`` as a shell runs it), then the
            # interrupted command itself again, as its user would
            reruns = [part for fix in fixes for part in fix.split(" && ")]
            reruns.append(" ".join(shlex.quote(w) for w in ["sae-sens", *_argv(cmd, store)]))
            for i, line in enumerate(reruns):
                words = shlex.split(line)
                assert words[0] == "sae-sens", line
                out = work / f"{label}.rerun{i}.out"
                code = child(words[1:], out)
                if code != 0:
                    failures.append(f"{name} {label}: `{line}` exited {code}: {out.read_text()[-1500:]}")
                if "Traceback" in out.read_text():
                    failures.append(f"{name} {label}: a traceback from `{line}`")
            got = snapshot(store)
            if got != want:
                failures.append(f"{name} {label}: differs in {[k for k in want if got.get(k) != want[k]]}")
            if stage_states(store, run) != want_states:
                failures.append(f"{name} {label}: states {stage_states(store, run)} != {want_states}")
            kills.append(kill)
            shutil.rmtree(store)  # keep the disk small: only failures need a look, and they are listed
    return {"stage": name, "hits": dict(hits), "kills": kills, "failures": failures}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    import torch

    torch.set_num_threads(1)  # no OpenMP pool: forking is safe
    # import everything the stages import lazily, once, before the first fork: a child then starts in
    # a tenth of a second instead of four
    import threading

    import datasets  # noqa: F401
    import duckdb  # noqa: F401
    import openai  # noqa: F401
    import sae_lens  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

    import sae_sens.collect  # noqa: F401
    import sae_sens.corpus  # noqa: F401
    import sae_sens.generate  # noqa: F401
    import sae_sens.judge  # noqa: F401
    import sae_sens.model  # noqa: F401
    import sae_sens.report  # noqa: F401
    import sae_sens.sae  # noqa: F401
    import sae_sens.score  # noqa: F401
    import sae_sens.stages  # noqa: F401
    from sae_sens.cli import app as _app  # noqa: F401
    from sae_sens.cli import commands as _commands  # noqa: F401

    assert threading.active_count() == 1, f"a thread before forking: {threading.enumerate()}"

    work = Path(spec["work"])
    report: list[dict[str, Any]] = []
    # the start store of each stage: the stages before it run uninterrupted, one after the other
    starts: dict[str, Path] = {}
    store = work / "empty"
    for stage in spec["stages"]:
        name, cmd = stage["name"], stage["cmd"]
        starts[name] = store
        after = work / f"after-{name}"
        shutil.copytree(store, after) if store.exists() else after.mkdir(parents=True)
        code = child(_argv(cmd, after), work / f"after-{name}.out")
        if code != 0:
            report.append({"stage": name, "error": f"setting up after {name}: exited {code}: "
                           f"{(work / f'after-{name}.out').read_text()[-2000:]}"})
            Path(sys.argv[2]).write_text(json.dumps(report, indent=1))
            return
        store = after
    # the matrices are independent: one worker process per group (``worker`` in the spec), in parallel
    t0 = time.monotonic()
    groups: dict[int, list[dict[str, Any]]] = {}
    for stage in spec["stages"]:
        groups.setdefault(int(stage.get("worker", 0)), []).append(stage)
    pids = {}
    for g, stages in groups.items():
        part = work / f"report-{g}.json"
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                out = []
                for stage in stages:
                    out.append({**matrix(stage["name"], starts[stage["name"]], stage["cmd"],
                                         work / f"m-{stage['name']}", spec["run"]),
                                "seconds": round(time.monotonic() - t0, 1)})
                part.write_text(json.dumps(out))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids[pid] = part
    for pid, part in pids.items():
        _, status = os.waitpid(pid, 0)
        if part.exists():
            report += json.loads(part.read_text())
        else:
            report.append({"stage": f"worker {part.name}", "error": f"worker died ({status})"})
    Path(sys.argv[2]).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
