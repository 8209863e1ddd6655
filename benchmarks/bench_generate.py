"""Generate-stage throughput against a local OpenAI-compatible server with a fixed latency.

llm-katan's echo backend sleeps ``--latency-ms`` per request, so with W workers N requests cannot
take less than N x latency / W. The stage's wall time is printed as a ratio to that bound (target
<= 1.2x), next to a bare ``openai`` client doing the same requests from a thread pool (no retries,
journal, cache or tables), measured in the same run.

Run: python benchmarks/bench_generate.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_sens.generate import GenerateConfig, make_requests, run_generate  # noqa: E402
from sae_sens.schemas import make_table  # noqa: E402
from sae_sens.store import Store  # noqa: E402

N_FEATURES = 200
LATENCY_MS = 250
WORKERS = 10
MODEL = "echo-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, folder: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("llm-katan")
    cmd = [str(exe) if exe.exists() else (shutil.which("llm-katan") or "llm-katan"), "-m", MODEL, "-b", "echo",
           "-h", "127.0.0.1", "-p", str(port), "--latency-ms", str(LATENCY_MS), "--max-concurrent", str(4 * WORKERS),
           "--stats-file", str(folder / "stats.json"), "--disable-dashboard", "--log-level", "error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise RuntimeError("llm-katan did not start (pip install llm-katan)")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)


def _examples(n: int):
    rows = [{"feature_index": f, "example_index": i, "kind": "top", "max_activation": 1.0,
             "text": f"example {i} of feature {f}: the {{{{cat}}}} sat on the mat"} for f in range(n) for i in range(5)]
    return make_table("examples", rows)


def _bare_client(base_url: str, cfg: GenerateConfig, examples) -> float:
    """The floor for this machine: the same requests from a plain thread pool."""
    import openai

    client = openai.OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0)
    requests = make_requests(examples, cfg)

    def one(r) -> None:
        client.chat.completions.create(model=MODEL, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                       messages=[{"role": "system", "content": r.system},
                                                 {"role": "user", "content": r.user}])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, requests))
    client.close()
    return time.perf_counter() - t0


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    port = _free_port()
    proc = _start_server(port, folder)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        os.environ.pop("OPENAI_API_KEY", None)  # a local server needs none
        store = Store(folder / "store")
        examples = _examples(N_FEATURES)
        store.write_table("bench", "sae", "examples", examples)
        cfg = GenerateConfig(generator=f"openai:{MODEL}", base_url=base_url, max_workers=WORKERS)
        bare = _bare_client(base_url, GenerateConfig(generator=f"openai:{MODEL}", seed=1), examples)
        t0 = time.perf_counter()
        out = run_generate(store, "bench", "sae", cfg)
        wall = time.perf_counter() - t0
        assert out.rows["queries"] == N_FEATURES and out.extra["n_sent"] == N_FEATURES
        t0 = time.perf_counter()
        rerun = run_generate(store, "bench", "sae", cfg, force=True)  # every answer from the cache
        cached = time.perf_counter() - t0
        assert rerun.extra["n_cached"] == N_FEATURES
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
    ideal = N_FEATURES * LATENCY_MS / 1000 / WORKERS
    print(f"generate: {N_FEATURES} features, {WORKERS} workers, {LATENCY_MS} ms per request (llm-katan echo)")
    print(f"  bound N x latency / workers     {ideal:7.2f} s")
    print(f"  bare openai client, thread pool {bare:7.2f} s  ({bare / ideal:.2f}x the bound)")
    print(f"  sae-sens generate stage         {wall:7.2f} s  ({wall / ideal:.2f}x the bound, target <= 1.2x; "
          f"{wall / bare:.2f}x the bare client)")
    print(f"  rerun served from the cache     {cached:7.2f} s  (0 requests)")


if __name__ == "__main__":
    main()
