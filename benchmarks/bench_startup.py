"""How soon the CLI answers: CPU time of `sae-sens --help`, an unknown-SAE error and `--device cuda`
on a CPU-only build, each in a fresh process, against the baseline of the same process importing
torch (what every command paid before its checks ran). Also which heavy modules each one imported.

CPU time (user + system of the child) rather than wall time, so other load on the machine does not
count. Run: python benchmarks/bench_startup.py
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5
HEAVY = ("torch", "transformers", "sae_bench", "sae_lens", "duckdb", "datasets", "pyarrow")
PROBE = """
import json, sys
from sae_sens.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stderr.write("\\nPROBE " + json.dumps(sorted(m for m in HEAVY if m in sys.modules)) + "\\n")
""".replace("HEAVY", repr(HEAVY))
CASES = {
    "sae-sens --help": ["--help"],
    "unknown SAE": ["collect", "--sae", "py_4k_topq_s0"],
    "--device cuda (CPU build)": ["score", "--sae", "smol_576_topk", "--device", "cuda"],
}


def cpu_seconds(args: list[str]) -> tuple[float, list[str]]:
    """CPU time of one child process running ``args``, and the heavy modules it imported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    heavy = json.loads(p.stderr.rpartition("\nPROBE ")[2]) if "\nPROBE " in p.stderr else []
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), heavy


def median_cpu(args: list[str]) -> tuple[float, list[str]]:
    runs = [cpu_seconds(args) for _ in range(REPEATS)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def main() -> None:
    baseline, _ = median_cpu([sys.executable, "-c", "import torch"])
    print(f"baseline: a process importing torch, {baseline:.2f} s CPU (median of {REPEATS})")
    print(f"{'case':<28}{'CPU s':>7}{'/ baseline':>12}  heavy modules imported")
    for name, args in CASES.items():
        t, heavy = median_cpu([sys.executable, "-c", PROBE, *args])
        print(f"{name:<28}{t:>7.2f}{t / baseline:>12.2f}  {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
