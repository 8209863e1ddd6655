"""The Ray executor: each (model, hook) group of SAEs is one Ray task, anywhere on a Ray cluster.

A group task asks for a GPU when the cluster has GPUs (``--gpus-per-task``, fractional allowed),
loads the model once, runs the shared collect pass for its SAEs, waits for their generation and
scores them, writing into the store like a local run. Generation holds no GPU and runs in the
driver process: every group's generation goes through one queue there, so ``--max-workers`` (requests
in flight) and ``--max-cost`` are ONE budget for the whole cluster, and API keys never leave the
driver. Tasks reach the driver through one small actor (the hub): progress events, log lines and
"generate my SAEs" requests go in, the driver polls it.

The store must be a path every node sees (a shared filesystem); the driver checks that before any
compute by having a task on each node read back a token file. A worker killed mid-task is retried
by Ray (``max_retries``) and the retry resumes from the stages' checkpoints and fresh stages; the hub
remembers which groups' generation is done or under way, so a retry never asks for (or pays for)
it twice. Ctrl-C cancels the tasks; a rerun of the same command finishes the work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray

from ..errors import ConfigError, SaeSensError
from ..progress import ProgressSink
from ..store import Store
from .base import Group, SaeResult, Work, plan_groups
from .local import run_stages_here

TASK_RETRIES = 3  # a worker killed or lost (OOM killer, preempted node) is retried this often
POLL_S = 0.2
FLUSH_S = 0.25
# settings that decide what a worker computes or where it reads from; never keys or tokens (those
# would show up in Ray's dashboard and logs): nodes get HF_TOKEN from their own environment
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                 "SAE_SENS_DEBUG", "TOKENIZERS_PARALLELISM")


class ExecutorError(SaeSensError):
    pass


# ----- the hub: tasks -> driver ----------------------------------------------------------------
@ray.remote(num_cpus=0, max_concurrency=64)  # type: ignore[call-overload]  # threaded actor
class Hub:
    """Progress events and generation requests from the tasks, polled by the driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[int, str, str, Any, Any]] = []
        self._generation: dict[int, str] = {}  # group -> wanted | running | done | failed

    def push(self, events: list[tuple[int, str, str, Any, Any]]) -> None:
        with self._lock:
            self._events.extend(events)

    def drain(self) -> tuple[list[tuple[int, str, str, Any, Any]], list[int]]:
        """Events since the last call, and groups whose generation is wanted and not yet handed out."""
        with self._lock:
            events, self._events = self._events, []
            wanted = [g for g, s in self._generation.items() if s == "wanted"]
            for g in wanted:
                self._generation[g] = "running"
            return events, wanted

    def want_generation(self, group: int) -> str:
        """Ask for a group's generation (a retried task asks again: it is not started twice)."""
        with self._lock:
            return self._generation.setdefault(group, "wanted")

    def set_generation(self, group: int, state: str) -> None:
        with self._lock:
            self._generation[group] = state


class HubSink:
    """A ``ProgressSink`` inside a task: events are batched and sent to the hub without waiting."""

    def __init__(self, hub: Any, group: int) -> None:
        self.hub, self.group = hub, group
        self._buf: list[tuple[int, str, str, Any, Any]] = []
        self._last = 0.0

    def _put(self, kind: str, task: str, a: Any = None, b: Any = None, *, now: bool = False) -> None:
        self._buf.append((self.group, kind, task, a, b))
        if now or time.monotonic() - self._last > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.hub.push.remote(self._buf)
            self._buf = []
        self._last = time.monotonic()

    def start(self, task: str, total: int | None = None) -> None:
        self._put("start", task, total, now=True)

    def advance(self, task: str, n: int = 1, info: str = "") -> None:
        self._put("advance", task, n, info)

    def finish(self, task: str) -> None:
        self._put("finish", task, now=True)

    def log(self, message: str) -> None:
        self._put("log", "", message, now=True)


# ----- the group task ----------------------------------------------------------------------------
class GenerationFailed(Exception):
    """The driver's generation for this group failed; the driver reports why."""


@contextlib.contextmanager
def sae_locks(store: Store, run: str, saes: list[str]) -> Iterator[None]:
    """Hold the store's per run × SAE lock of each SAE (sorted, so two tasks never wait on each other
    in a cycle): another task or a terminal working on one of them is waited for, then its work is fresh."""
    with contextlib.ExitStack() as stack:
        for sae in sorted(saes):
            stack.enter_context(store.lock(run, sae, what="ray task"))
        yield


def run_group(root: str, work: Work, group: int, label: str, hub: Any, wait: bool = True) -> list[SaeResult]:
    """One group's stages on a Ray worker (generation is asked of the driver). ``wait``: the driver's
    store setting, wait for (True) or refuse (False) an SAE another process holds the lock of."""
    sink = HubSink(hub, group)
    sink.log(f"{label}: started on {socket.gethostname()} (pid {os.getpid()})")
    # the driver's lock policy (--wait / --no-wait); "waiting for ..." lines go to the driver's view
    store = Store(root, wait=wait, on_wait=sink.log)
    saes = list(work.saes)
    results = {s: SaeResult(s) for s in saes}
    try:
        for stage in ("collect", "score"):
            if stage == "score" and "generate" in work.stages:
                _wait_for_generation(hub, group)
            if stage not in work.stages:
                continue
            with sae_locks(store, work.run, saes):
                for r in run_stages_here(store, replace(work, stages=(stage,)), sink):
                    results[r.sae].outcomes.update(r.outcomes)
            sink.advance(f"group:{label}", len(saes))
        if "generate" in work.stages and "score" not in work.stages:
            _wait_for_generation(hub, group)
    finally:
        sink.flush()
    return [results[s] for s in saes]


def _wait_for_generation(hub: Any, group: int) -> None:
    ray.get(hub.want_generation.remote(group))
    while (state := ray.get(hub.want_generation.remote(group))) != "done":
        if state == "failed":
            raise GenerationFailed(f"generation failed for group {group}")
        time.sleep(POLL_S)


_run_group_remote = ray.remote(run_group)


# ----- the store check -----------------------------------------------------------------------------
def _read_token(path: str) -> tuple[str, str]:
    """On a node: (its hostname, the token file's content or why it cannot be read)."""
    try:
        return socket.gethostname(), Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return socket.gethostname(), f"error: {e.strerror or e}"


_read_token_remote = ray.remote(num_cpus=0, max_retries=0)(_read_token)


def check_store_visible(store: Store, timeout_s: float = 120.0) -> None:
    """Every alive node reads back a token the driver wrote into the store; one line if one cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = store.cache_dir / "ray"
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    path = folder / f"visible-{token}.txt"
    path.write_text(token, encoding="utf-8")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [_read_token_remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(path)) for n in nodes]
        ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if late:
            node = nodes[refs.index(late[0])]
            raise ConfigError(f"Ray node {node.get('NodeManagerAddress')} did not answer the store check within "
                              f"{timeout_s:.0f} s", "check that the node is healthy (`ray status`) and rerun")
        answers = ray.get(refs)
    finally:
        path.unlink(missing_ok=True)
    for node, (host, text) in zip(nodes, answers, strict=True):
        if text != token:
            why = text.removeprefix("error: ") if text.startswith("error: ") else "it reads another file there"
            raise ConfigError(
                f"the store {store.root} is not visible from Ray node {node.get('NodeManagerAddress')} ({host}): {why}",
                "put --store on a filesystem every node mounts at the same path (NFS, Lustre, GPFS, CephFS)")


# ----- the driver ---------------------------------------------------------------------------------
@dataclass
class _Generation:
    """One group's generation, run by a driver thread."""

    group: Group
    thread: threading.Thread | None = None
    result: dict[str, Any] | None = None  # SAE -> StageOutcome
    error: BaseException | None = None
    settled: bool = False  # the hub knows it is done or failed


class RayExecutor:
    """Groups as Ray tasks; see the module docstring."""

    name = "ray"

    def __init__(self, address: str | None = None, gpus_per_task: float = 1.0, cpus_per_task: float = 1.0,
                 max_retries: int = TASK_RETRIES, saes_per_task: int = 0) -> None:
        if gpus_per_task < 0 or cpus_per_task < 0:
            raise ConfigError("--gpus-per-task must be >= 0")
        self.address, self.gpus_per_task, self.cpus_per_task = address, gpus_per_task, cpus_per_task
        self.max_retries, self.saes_per_task = max_retries, saes_per_task

    @contextlib.contextmanager
    def connected(self) -> Iterator[None]:
        """Join the cluster at ``address`` (None: start a local one), unless this process already has."""
        if ray.is_initialized():
            yield
            return
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                     runtime_env={"env_vars": env} if env else None, configure_logging=False)
        except ConnectionError as e:
            hint = "start one with `ray start --head` (or check --address HOST:PORT)"
            if self.address not in (None, "auto") and os.environ.get("RAY_AUTH_MODE") is None:
                hint += "; a cluster with token authentication also needs RAY_AUTH_MODE=token here"
            raise ConfigError(f"cannot reach a Ray cluster at {self.address or 'auto'}: {e}", hint) from None
        try:
            yield
        finally:
            ray.shutdown()

    def execute(self, store: Store, work: Work, progress: ProgressSink) -> list[SaeResult]:
        groups = plan_groups(list(work.saes), work.opts, self.saes_per_task)  # an unknown SAE fails here, at once
        with self.connected():
            check_store_visible(store)
            return self._execute(store, work, groups, progress)

    def _execute(self, store: Store, work: Work, groups: list[Group], progress: ProgressSink) -> list[SaeResult]:
        gpus = self.gpus_per_task if ray.cluster_resources().get("GPU", 0) > 0 else 0
        root = str(Path(store.root).resolve())
        hub = Hub.remote()  # type: ignore[attr-defined]
        # the tasks never see the generation config: generation (and its keys) stays in the driver
        task_work = replace(work, generate_cfg=None)
        labels = [f"group {i + 1}/{len(groups)} ({g.label})" for i, g in enumerate(groups)]
        refs: dict[Any, int] = {}
        for i, g in enumerate(groups):
            progress.start(labels[i], total=len(g.saes) * len([s for s in work.stages if s != "generate"]))
            opts = {"num_cpus": self.cpus_per_task, "num_gpus": gpus, "max_retries": self.max_retries,
                    "name": f"sae-sens {g.label}"}
            refs[_run_group_remote.options(**opts).remote(root, task_work.only(list(g.saes)), i, labels[i], hub,
                                                           store.wait)] = i
        gen_lock = threading.Lock()  # one generation at a time: one --max-workers / --max-cost budget
        spent = [0.0]
        generations: dict[int, _Generation] = {}
        results: dict[int, list[SaeResult]] = {}
        errors: dict[int, BaseException] = {}
        pending = list(refs)
        started: dict[int, int] = {}
        try:
            while True:
                if pending:
                    done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
                else:  # only generation left to finish
                    done = []
                    time.sleep(POLL_S)
                self._pump(hub, progress, labels, started, groups, generations, store, work, gen_lock, spent)
                for ref in done:
                    i = refs[ref]
                    try:
                        results[i] = ray.get(ref)
                        progress.finish(labels[i])
                    except Exception as e:  # noqa: BLE001  (reported below, after the other groups finish)
                        errors[i] = e
                self._settle_generations(hub, generations)
                if not pending and all(g.settled for g in generations.values()):
                    break
            self._pump(hub, progress, labels, started, groups, generations, store, work, gen_lock, spent)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            with contextlib.suppress(Exception):
                ray.kill(hub)
        self._raise_first(errors, generations, labels)
        out: dict[str, SaeResult] = {}
        for i in range(len(groups)):
            for r in results[i]:
                if "generate" in work.stages:
                    r.outcomes["generate"] = generations[i].result[r.sae]  # type: ignore[index]
                out[r.sae] = r
        return [out[s] for s in dict.fromkeys(work.saes)]

    def _pump(self, hub: Any, progress: ProgressSink, labels: list[str], started: dict[int, int],
              groups: list[Group], generations: dict[int, _Generation], store: Store, work: Work,
              gen_lock: threading.Lock, spent: list[float]) -> None:
        """Forward the tasks' events to the driver's progress view, start wanted generations."""
        events, wanted = ray.get(hub.drain.remote())
        for group, kind, task, a, b in events:
            name = task.removeprefix("group:") if task.startswith("group:") else f"{labels[group]} · {task}"
            if kind == "start":
                progress.start(name, a)
            elif kind == "advance":
                progress.advance(name, a, b)
            elif kind == "finish":
                progress.finish(name)
            elif kind == "log":
                if " started on " in a:
                    started[group] = started.get(group, 0) + 1
                    if started[group] > 1:
                        progress.log(f"{labels[group]}: retried by Ray (attempt {started[group]})")
                progress.log(a if a.startswith(labels[group]) else f"{labels[group]}: {a}")
        for group in wanted:
            if group in generations:
                continue
            gen = generations[group] = _Generation(groups[group])
            # a daemon thread: Ctrl-C must not wait for answers in flight (they are journaled as they come)
            gen.thread = threading.Thread(target=self._generate, daemon=True, name=f"generate-{group}",
                                          args=(gen, store, work, progress, gen_lock, spent))
            gen.thread.start()

    @staticmethod
    def _generate(gen: _Generation, store: Store, work: Work, progress: ProgressSink, gen_lock: threading.Lock,
                  spent: list[float]) -> None:
        from ..errors import BudgetExceededError
        from ..generate import run_generate_many

        cfg = work.generate_cfg
        assert cfg is not None
        saes = list(gen.group.saes)
        try:
            with gen_lock:
                if cfg.max_cost is not None:
                    if spent[0] >= cfg.max_cost:
                        raise BudgetExceededError(f"--max-cost ${cfg.max_cost:g} is spent before {', '.join(saes)}",
                                                  "raise --max-cost and rerun the same command to continue")
                    cfg = replace(cfg, max_cost=cfg.max_cost - spent[0])
                outs = run_generate_many(store, work.run, saes, cfg, force=work.force, progress=progress)
                spent[0] += sum((o.extra.get("spent_usd") or 0.0) for o in outs if not o.skipped)
            gen.result = dict(zip(saes, outs, strict=True))
        except BaseException as e:  # noqa: BLE001  (handed to the main thread)
            gen.error = e

    @staticmethod
    def _settle_generations(hub: Any, generations: dict[int, _Generation]) -> None:
        for group, gen in generations.items():
            if gen.settled or (gen.thread is not None and gen.thread.is_alive()):
                continue
            ray.get(hub.set_generation.remote(group, "failed" if gen.error else "done"))
            gen.settled = True

    @staticmethod
    def _raise_first(errors: dict[int, BaseException], generations: dict[int, _Generation],
                     labels: list[str]) -> None:
        for i in sorted(set(errors) | {g for g, gen in generations.items() if gen.error}):
            gen = generations.get(i)
            if gen is not None and gen.error is not None:
                raise gen.error
            e = errors[i]
            cause = getattr(e, "cause", None)
            if isinstance(cause, SaeSensError):
                raise cause
            if isinstance(e, ray.exceptions.RayTaskError):
                raise ExecutorError(f"{labels[i]} failed: {cause!r}" if cause else f"{labels[i]} failed",
                                    "its worker's traceback is above; rerun the same command to resume") from e
            raise ExecutorError(f"{labels[i]}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                f"Ray gave up after {TASK_RETRIES} retries; rerun the same command to resume") from e
