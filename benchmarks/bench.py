"""`make bench`: every stage's benchmark, each printing ratios against a baseline measured in the
same run (never absolute targets baked into tests). Run one with `python benchmarks/bench.py collect`."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SUITES = ("tracker", "collect", "score", "specificity", "generate", "report", "saes", "ray", "startup")


def main(argv: list[str]) -> int:
    chosen = argv or list(SUITES)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    for name in chosen:
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        start = time.perf_counter()
        importlib.import_module(f"bench_{name}").main()
        print(f"({name} benchmark took {time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
