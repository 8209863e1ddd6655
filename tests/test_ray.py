"""``--executor ray`` on a real local Ray cluster (``ray.init(num_cpus=2)``, real worker processes):
tables equal a one-process run, a worker killed mid-task is retried without paying twice, two tasks
on one SAE serialise on its lock, and a store a node cannot see is refused before any compute.

Two tiny real models (two groups), three real SAE files, the real OpenAI-compatible test server.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.openai_server import ChatServer

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a real local Ray cluster and its worker processes

from sae_sens.collect import CollectConfig  # noqa: E402
from sae_sens.executors import Work, get_executor  # noqa: E402
from sae_sens.generate import GenerateConfig  # noqa: E402
from sae_sens.model import load_model  # noqa: E402
from sae_sens.pipeline import run_pipeline  # noqa: E402
from sae_sens.score import ScoreConfig  # noqa: E402
from sae_sens.stages import ModelOptions  # noqa: E402
from sae_sens.store import Store  # noqa: E402
from tests.support.testing import build_tiny_model, random_sae, tiny_corpus  # noqa: E402

CTX = 48
TOKENS = 64 * CTX
RUN = "r"
OPTS = ModelOptions(device="cpu", dtype="float32", batch_size=16)
TABLES = ("features", "latents", "candidates", "examples", "queries", "generations", "scores", "feature_stats")
TIME_COLUMNS = {"latency_s"}
KEY = "sk-test-ray-0123456789"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Model a with two SAEs at layer 1 (one group), model b with one (another group)."""
    root = tmp_path_factory.mktemp("ray_world")
    docs = tiny_corpus(200, seed=7)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    saes: dict[str, str] = {}
    for model_name, seed, archs in (("a", 0, ("relu", "topk")), ("b", 1, ("relu",))):
        model_dir = build_tiny_model(root / model_name, texts=docs, hidden=64, layers=2, seed=seed)
        lm = load_model(str(model_dir), "blocks.1.hook_resid_post", device="cpu", dtype="float32")
        ids, mask = lm.pad([s for s, _ in lm.encode_texts(docs[:40], 128)])
        acts = lm.hidden(ids, mask)[lm.count_mask(ids, mask)]
        for i, arch in enumerate(archs):
            key = f"{model_name}_{arch}"
            saes[key] = str(random_sae(root / key, arch, d_in=64, d_sae=96 + 32 * i, acts=acts, fire=0.05,
                                       layer=1, lm_name=str(model_dir), seed=20 + i))
    return {"corpus": corpus, "saes": saes, "root": root}


@pytest.fixture(scope="module")
def server() -> Any:
    with ChatServer(models=("tiny-chat",), api_key=KEY, n_samples=4) as s:
        yield s


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A real local Ray cluster with two CPUs (two worker processes run tasks at once)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield
    ray.shutdown()


def configs(world: dict[str, Any], server: ChatServer) -> tuple[CollectConfig, GenerateConfig, ScoreConfig]:
    return (CollectConfig(corpus=str(world["corpus"]), total_tokens=TOKENS, context_size=CTX, features=3),
            GenerateConfig(generator="openai:tiny-chat", base_url=server.base_url, samples_per_feature=3,
                           max_workers=4, max_tokens=200),
            ScoreConfig())


def names(world: dict[str, Any]) -> list[str]:
    return [world["saes"][k] for k in ("a_relu", "b_relu", "a_topk")]  # groups interleaved on purpose


@pytest.fixture(scope="module")
def reference(world: dict[str, Any], server: ChatServer, tmp_path_factory: pytest.TempPathFactory,
              monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    """The same work in one process (the local executor)."""
    store = Store(tmp_path_factory.mktemp("ray_reference") / "evals")
    server.reset()
    run_pipeline(store, RUN, names(world), *configs(world, server), OPTS)
    return {"store": store, "answered": sorted(server.answered())}


@pytest.fixture(scope="module")
def monkeypatch_module() -> Any:
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", KEY)
    yield mp
    mp.undo()


def _nan_free(v: Any) -> Any:
    return "NaN" if isinstance(v, float) and math.isnan(v) else v  # NaN != NaN would fail equal rows


def rows(store: Store, sae: str, table: str) -> list[dict[str, Any]]:
    return [{k: _nan_free(v) for k, v in r.items() if k not in TIME_COLUMNS}
            for r in store.read_table(RUN, sae, table).to_pylist()]


def assert_same_tables(store: Store, reference: Store, saes: list[str]) -> None:
    for sae in saes:
        for table in TABLES:
            got, want = rows(store, sae, table), rows(reference, sae, table)
            assert len(got) == len(want) > 0, (sae, table)
            assert got == want, (sae, table)
        stages = store.manifest(RUN, sae).data["stages"]
        ref_stages = reference.manifest(RUN, sae).data["stages"]
        assert stages.keys() == ref_stages.keys()
        for key, rec in stages.items():
            assert rec["config_hash"] == ref_stages[key]["config_hash"], key
            for table, out in rec["outputs"].items():  # queries' hash covers latency_s, a time
                want = ref_stages[key]["outputs"][table]
                assert (out["rows"], out["hash"] if table != "queries" else 0) == \
                    (want["rows"], want["hash"] if table != "queries" else 0), (key, table)


class Recorder:
    """The driver's progress sink: keeps what the tasks reported, with arrival times."""

    def __init__(self, on_event: Any = None) -> None:
        self.events: list[tuple[float, str, str, Any]] = []
        self.on_event = on_event
        self.lock = threading.Lock()

    def _add(self, kind: str, task: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((time.monotonic(), kind, task, value))
        if self.on_event is not None:
            self.on_event(kind, task, value)

    def start(self, task: str, total: int | None = None) -> None:
        self._add("start", task, total)

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        self._add("advance", task, n)

    def finish(self, task: str) -> None:
        self._add("finish", task)

    def log(self, message: str) -> None:
        self._add("log", "", message)

    def logs(self) -> list[str]:
        return [str(v) for _, k, _, v in self.events if k == "log"]

    def pids(self) -> dict[str, list[int]]:
        """group label -> pids of the workers that started its task, in order."""
        out: dict[str, list[int]] = {}
        for line in self.logs():
            if " started on " in line:
                out.setdefault(line.split(": ")[0], []).append(int(line.rsplit("pid ", 1)[1].rstrip(")")))
        return out


def test_two_groups_run_in_parallel_and_tables_equal_one_process(
        world: dict[str, Any], server: ChatServer, reference: dict[str, Any], cluster: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "evals")
    server.reset()
    rec = Recorder()
    results = run_pipeline(store, RUN, names(world), *configs(world, server), OPTS, progress=rec,
                           executor=get_executor("ray"))
    assert [r.sae for r in results] == names(world)
    assert all(not o.skipped for r in results for o in (r.collect, r.generate, r.score))
    assert_same_tables(store, reference["store"], names(world))
    assert sorted(server.answered()) == reference["answered"]  # the same requests, each once
    # two groups, each on its own worker process, and both were running at the same time
    pids = rec.pids()
    assert len(pids) == 2 and len({p[0] for p in pids.values()}) == 2, pids
    first_start = max(t for t, k, _, v in rec.events if k == "log" and " started on " in str(v))
    first_finish = min(t for t, k, task, _ in rec.events if k == "finish" and task in pids)
    assert first_start < first_finish
    # a rerun finds every stage fresh: nothing is recomputed or sent
    server.reset()
    again = run_pipeline(store, RUN, names(world), *configs(world, server), OPTS, executor=get_executor("ray"))
    assert all(o.skipped for r in again for o in (r.collect, r.generate, r.score))
    assert server.count() == 0


def test_killed_worker_is_retried_and_nothing_is_paid_twice(
        world: dict[str, Any], server: ChatServer, reference: dict[str, Any], cluster: None, tmp_path: Path) -> None:
    store = Store(tmp_path / "evals")
    server.reset()
    killed: list[int] = []
    a_saes = [world["saes"]["a_relu"], world["saes"]["a_topk"]]

    def kill_group_a_while_it_waits(kind: str, task: str, value: Any) -> None:
        # group a's task is waiting for its generation (slow server): kill its worker process
        if kind == "start" and task.startswith("generate ") and a_saes[0] in task and not killed:
            pid = next(p[-1] for label, p in rec.pids().items() if "a " in label.split("(")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    rec = Recorder(kill_group_a_while_it_waits)
    server.latency_s = 0.3
    try:
        run_pipeline(store, RUN, names(world), *configs(world, server), OPTS, progress=rec,
                     executor=get_executor("ray"))
    finally:
        server.latency_s = 0.0
    assert killed, "group a never reached generation"
    retried = [p for p in rec.pids().values() if p[0] == killed[0]]
    assert retried and len(retried[0]) == 2 and retried[0][1] != killed[0], rec.pids()
    assert any("retried by Ray (attempt 2)" in line for line in rec.logs())
    # the retry found group a's collect done (nothing before its checkpoints is recomputed)
    for sae in a_saes:
        assert sum(f"collect: {sae} is up to date" in line for line in rec.logs()) == 1, rec.logs()
    assert_same_tables(store, reference["store"], names(world))
    answered = server.answered()
    assert len(answered) == len(set(answered))  # each distinct request once
    assert sorted(answered) == reference["answered"]


def test_two_tasks_on_one_sae_serialise_on_its_lock(
        world: dict[str, Any], server: ChatServer, reference: dict[str, Any], cluster: None, tmp_path: Path) -> None:
    from sae_sens.executors.ray_executor import Hub, _run_group_remote

    store = Store(tmp_path / "evals")
    sae = world["saes"]["b_relu"]
    collect_cfg, _, _ = configs(world, server)
    work = Work(RUN, (sae,), ("collect",), OPTS, collect_cfg=collect_cfg)
    hub = Hub.remote()
    refs = [_run_group_remote.remote(str(store.root), work, i, f"task {i}", hub) for i in range(2)]
    (r0,), (r1,) = ray.get(refs)
    ran = sorted([r0.collect.skipped, r1.collect.skipped])
    assert ran == [False, True]  # one computed; the other waited for the lock and found it done
    manifest = json.loads(store.manifest(RUN, sae).path.read_text())
    assert {"collect:pass", "collect"} <= manifest["stages"].keys()
    for table in ("features", "latents", "candidates", "examples"):
        assert rows(store, sae, table) == rows(reference["store"], sae, table)
    ray.kill(hub)


def test_store_a_node_cannot_see_is_refused_before_compute(world: dict[str, Any], tmp_path: Path) -> None:
    """The driver runs in its own mount namespace with the store on a private tmpfs; the cluster's
    worker nodes (started outside it) cannot see that path."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare (mount namespaces) to hide the store from the cluster")
    # RAY_AUTH_MODE: a driver joining by HOST:PORT must opt in to the token auth a ray.init cluster turns on
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    # a separate cluster (not this process's): its head process is ours to stop by pid
    head = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys, time; ray.init(num_cpus=1, include_dashboard=False, "
         "configure_logging=False); print(ray.get_runtime_context().gcs_address, flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = head.stdout.readline().strip()  # type: ignore[union-attr]
        assert address, "the test cluster did not start"
        private = tmp_path / "private"
        private.mkdir()
        store = private / "evals"
        cli = [sys.executable, "-m", "sae_sens", "collect", "--store", str(store), "--run", RUN,
               "--sae", world["saes"]["b_relu"], "--corpus", str(world["corpus"]), "--total-tokens", str(TOKENS),
               "--context-size", str(CTX), "--features", "3", "--device", "cpu",
               "--executor", "ray", "--address", address]
        script = (f"mount -t tmpfs none {private} && {' '.join(map(repr, cli))}; code=$?; "
                  f"echo files: $(find {store} -name '*.parquet' | wc -l); exit $code")
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                              timeout=600)
    finally:
        head.stdin.close()  # type: ignore[union-attr]
        head.wait(timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "error" in line]
    assert len(lines) == 1 and "not visible from Ray node" in lines[0] and "--store" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "files: 0" in proc.stdout  # refused before any compute


def test_a_failing_task_is_one_typed_error_and_other_groups_finish(
        world: dict[str, Any], server: ChatServer, reference: dict[str, Any], cluster: None, tmp_path: Path) -> None:
    from sae_sens.errors import MissingTableError

    store = Store(tmp_path / "evals")
    _, _, score_cfg = configs(world, server)
    a, b = world["saes"]["a_relu"], world["saes"]["b_relu"]
    run_pipeline(store, RUN, [b], *configs(world, server), OPTS)  # b has everything score needs; a nothing
    rec = Recorder()
    with pytest.raises(MissingTableError):  # a's: the typed error itself, not Ray's wrapper
        get_executor("ray").execute(store, Work(RUN, (a, b), ("score",), OPTS, score_cfg=score_cfg, force=True), rec)
    # b's group still ran to the end while a's failed
    finished = [task for _, kind, task, _ in rec.events if kind == "finish" and task in rec.pids()]
    assert len(finished) == 1 and "(b " in finished[0], finished


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_cancels_the_tasks_and_a_rerun_finishes(
        world: dict[str, Any], server: ChatServer, reference: dict[str, Any], tmp_path: Path) -> None:
    """The CLI with its own local cluster: SIGINT while the group tasks run."""
    store = tmp_path / "evals"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    args = [sys.executable, "-m", "sae_sens", "run", "--store", str(store), "--run", RUN,
            *(x for s in names(world) for x in ("--sae", s)), "--corpus", str(world["corpus"]),
            "--total-tokens", str(TOKENS), "--context-size", str(CTX), "--features", "3",
            "--generator", "openai:tiny-chat", "--base-url", server.base_url, "--samples-per-feature", "3",
            "--max-workers", "4", "--max-tokens", "200", "--device", "cpu", "--dtype", "float32",
            "--batch-size", "16", "--executor", "ray"]
    server.latency_s = 0.5  # keeps the tasks busy (waiting for generation) when the signal comes
    try:
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        pids, seen = [], []
        for line in proc.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if " started on " in line:
                pids.append(int(line.rsplit("pid ", 1)[1].split(")")[0]))
            if len(pids) == 2:
                break
        assert len(pids) == 2, "".join(seen)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        server.latency_s = 0.0
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    for _ in range(100):  # the tasks' worker processes are gone (cancelled, cluster shut down)
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    # the same work finishes in the store the interrupted run left, as an uninterrupted run would
    results = run_pipeline(Store(store), RUN, names(world), *configs(world, server), OPTS)
    assert all(r.score and not r.score.skipped for r in results)
    assert_same_tables(Store(store), reference["store"], names(world))


def test_tasks_ask_for_a_gpu_when_the_cluster_has_one(world: dict[str, Any], tmp_path: Path) -> None:
    """A cluster that declares one GPU: with --gpus-per-task 1 the two groups run one after the other."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")) if p)}
    head = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, "
         "configure_logging=False); print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = head.stdout.readline().strip()  # type: ignore[union-attr]
        assert address, "the test cluster did not start"
        saes = [x for k in ("a_relu", "b_relu") for x in ("--sae", world["saes"][k])]
        proc = subprocess.run(
            [sys.executable, "-m", "sae_sens", "collect", "--store", str(tmp_path / "evals"), "--run", RUN, *saes,
             "--corpus", str(world["corpus"]), "--total-tokens", str(TOKENS), "--context-size", str(CTX),
             "--features", "3", "--device", "cpu", "--executor", "ray", "--address", address,
             "--gpus-per-task", "1"], capture_output=True, text=True, env=env, timeout=600)
    finally:
        head.stdin.close()  # type: ignore[union-attr]
        head.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if re.match(r"group \d/2 \([^)]*\): ", line)]  # log lines
    pids = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in lines if " started on " in line]
    # two CPUs would let both groups run at once on two workers; the one GPU made them take turns on one
    assert len(pids) == 2 and pids[0] == pids[1], lines
