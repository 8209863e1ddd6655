"""One process vs ``--executor ray`` for the same multi-group ``sae-sens run``, and a projection.

Two model-and-hook groups (two random models of one shape, two SAEs each) run end to end through
the CLI, each command in its own process and its own fresh store: once with the local executor
(the groups one after the other, torch free to use every core) and once with ``--executor ray``
(a local cluster with one worker per core; each group one task). Both times include starting
Python and loading the models; the Ray time also includes starting the cluster and its workers.
Prints the ratio (target >= 1.7x with 2 workers on 2 cores), how each time splits into the part that
can run in parallel (first model load to last score) and the rest (Python, imports, Ray's start and
exit), and, from the measured per-group
time, the projected wall time of the 252-SAE SAEBench grid on 8 GPUs, with its assumptions.

Run: python benchmarks/bench_ray.py [--tokens N]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sae_sens.model import load_model  # noqa: E402
from tests.support.testing import build_tiny_model, random_sae, tiny_corpus  # noqa: E402

HIDDEN, LAYERS, D_SAE = 256, 4, 2048
SAES_PER_GROUP = 2
GRID_SAES, GRID_MODELS, GPUS = 252, 2, 8


def build(root: Path) -> tuple[Path, list[str], Path]:
    docs = tiny_corpus(3000, seed=3)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    saes = []
    for m in range(2):
        model = build_tiny_model(root / f"model{m}", texts=docs[:300], hidden=HIDDEN, layers=LAYERS, seed=m,
                                 intermediate=4 * HIDDEN)
        # calibrate the SAEs' firing rate on the model's own activations
        lm = load_model(str(model), f"blocks.{LAYERS - 1}.hook_resid_post", device="cpu", dtype="float32")
        ids, mask = lm.pad([s for s, _ in lm.encode_texts(docs[:40], 128)])
        acts = lm.hidden(ids, mask)[lm.count_mask(ids, mask)]
        for i, arch in enumerate(("relu", "topk")[:SAES_PER_GROUP]):
            saes.append(str(random_sae(root / f"sae{m}_{arch}", arch, d_in=HIDDEN, d_sae=D_SAE, acts=acts, fire=0.02,
                                       layer=LAYERS - 1, lm_name=str(model), seed=10 * m + i)))
    texts = root / "texts.csv"
    with texts.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["feature_index", "text"])
        for fi in range(D_SAE):  # every feature: the import keeps the selected ones
            for j in range(3):
                w.writerow([fi, docs[(fi * 3 + j) % len(docs)][:200]])
    return corpus, saes, texts


@dataclass
class Timing:
    total: float  # the command's wall time, Python start to exit
    work: float   # from the first model load to the last score line: the part that can run in parallel

    @property
    def fixed(self) -> float:
        return self.total - self.work


def timed_run(root: Path, name: str, corpus: Path, saes: list[str], texts: Path, tokens: int,
              extra: list[str], env_extra: dict[str, str] | None = None) -> Timing:
    args = [sys.executable, "-m", "sae_sens", "run", "--store", str(root / f"store-{name}"), "--run", "bench",
            *(x for s in saes for x in ("--sae", s)), "--corpus", str(corpus), "--total-tokens", str(tokens),
            "--context-size", "128", "--features", "5", "--from-table", str(texts), "--generator", "texts",
            "--device", "cpu", "--dtype", "float32", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
           **(env_extra or {})}
    start = time.perf_counter()
    # the progress lines (off a terminal, one per event) timestamped as they arrive
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    lines = [(time.perf_counter() - start, line) for line in proc.stderr]
    proc.wait()
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{''.join(line for _, line in lines)[-3000:]}")
    loads = [t for t, line in lines if "loading model" in line]
    scored = [t for t, line in lines if " rows from " in line and "score " in line]
    work = (max(scored) - min(loads)) if loads and scored else took
    return Timing(took, work)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000, help="corpus tokens per group's pass")
    a = ap.parse_args(argv if argv is not None else [])
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not installed (pip install 'sae-sens[ray]'): skipped")
        return
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus, saes, texts = build(root)
        # warm the page cache and the tokenized-window cache alike for both: a throwaway tiny run
        timed_run(root, "warm", corpus, saes, texts, 4_000, [])
        local = timed_run(root, "local", corpus, saes, texts, a.tokens, [])
        on_ray = timed_run(root, "ray", corpus, saes, texts, a.tokens, ["--executor", "ray"])
        # Ray gives each 1-CPU task one torch thread (OMP_NUM_THREADS=1): the same process with one thread
        # shows how much of the ratio is parallelism and how much is torch's threading on a busy machine
        one_thread = timed_run(root, "local1", corpus, saes, texts, a.tokens, [], {"OMP_NUM_THREADS": "1"})
    groups = 2
    print(f"2 groups x {SAES_PER_GROUP} SAEs ({HIDDEN}-wide {LAYERS}-layer model, {D_SAE}-latent SAEs), "
          f"{a.tokens:,} tokens per pass, {cores} cores")
    for label, t in (("one process (local executor):  ", local), ("one process, one torch thread: ", one_thread),
                     (f"--executor ray, {cores} workers:    ", on_ray)):
        print(f"  {label}{t.total:6.1f} s = {t.work:5.1f} s models, collect and score + {t.fixed:4.1f} s start "
              "and exit")
    print(f"  speed-up: {local.total / on_ray.total:.2f}x over one process (target >= 1.7x), "
          f"{one_thread.total / on_ray.total:.2f}x over one process with one thread")
    print(f"  the parallel part alone: {local.work / on_ray.work:.2f}x over one process, "
          f"{one_thread.work / on_ray.work:.2f}x over one thread; Ray's start and exit cost "
          f"{on_ray.fixed - local.fixed:+.1f} s over one process's (on a machine shared with other jobs all of "
          "these are indicative)")
    # per task: the Ray run's wall time, in which the two group tasks ran side by side on their own core
    # (cluster and worker start included, so an upper bound of one task's time)
    per_task = on_ray.total if groups <= cores else local.total / groups
    tasks = math.ceil(GRID_SAES / SAES_PER_GROUP)
    waves = math.ceil(tasks / GPUS)
    print(f"projection, SAEBench grid ({GRID_SAES} SAEs = {GRID_MODELS} models x 3 widths x 7 architectures x "
          f"6 sparsities) on {GPUS} GPUs, one task per GPU:")
    print(f"  {waves * per_task:,.0f} s ({waves * per_task / 3600:.1f} h) = {waves} waves x {per_task:.1f} s per task; "
          f"{tasks} tasks of {SAES_PER_GROUP} SAEs (--saes-per-task {SAES_PER_GROUP}); one process on one device: "
          f"{tasks * local.total / groups:,.0f} s")
    print(f"  assumptions: a task of {SAES_PER_GROUP} SAEs on a GPU takes what one group's task took here "
          f"({per_task:.1f} s: same tokens, features, SAE count and startup; a real model on a GPU is faster, "
          "real SAEs are wider: put your own per-group time in); tasks are independent and evenly sized; "
          "generation (driver-side, one budget) keeps up; the store is on a shared filesystem.")


if __name__ == "__main__":
    main(sys.argv[1:])
