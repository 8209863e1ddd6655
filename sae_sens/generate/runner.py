"""Running many requests safely: bounded concurrency, retries with backoff, a journal of finished
features (checkpoint) and a cross-run cache of answered prompts, and a spending cap.

Only the calling thread touches the checkpoint and the cache, so a finished feature is on disk
(fsynced) before the next one is handed out; a crash loses at most the requests in flight.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .. import faults
from ..errors import BudgetExceededError, GenerationError, PermanentGenerationError
from ..jsonl import append_record, read_records
from ..progress import NULL_PROGRESS, ProgressSink
from ..store import write_error
from .backends import Backend, Completion, Request, RequestRejected, TransientError, Unreachable
from .pricing import Price, estimate_tokens

UNREACHABLE_RETRIES = 2  # a server that refuses connections is retried this often (at most), ~1 s apart


class Checkpoint:
    """Append-only JSONL journal of finished requests for one stage of one run × SAE."""

    def __init__(self, path: Path, stage: str | None = None) -> None:
        self.path = path
        self.stage = stage  # the stage key it journals (``generate:<label>``), for the batch journal beside it

    def load(self) -> dict[str, dict[str, Any]]:
        """query_hash -> record; a torn last line (killed mid-write) is ignored."""
        return {rec["query_hash"]: rec for rec in read_records(self.path) if "query_hash" in rec}

    def append(self, record: dict[str, Any]) -> None:
        try:
            self._append(record)
        except OSError as e:  # full disk, read-only store: one line naming the journal
            raise write_error(self.path, e) from None

    def _append(self, record: dict[str, Any]) -> None:
        append_record(self.path, record)
        faults.point("journal:appended")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        # --batch keeps its batch ids beside the answers (generate.batch): done with them too
        (self.path.parent / "batches.jsonl").unlink(missing_ok=True)


class QueryCache:
    """Answered prompts by query hash, shared by every run and SAE of a store: never pay twice."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, query_hash: str) -> Path:
        return self.folder / query_hash[:2] / f"{query_hash}.json"

    def get(self, query_hash: str) -> dict[str, Any] | None:
        path = self._path(query_hash)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, query_hash: str, record: dict[str, Any]) -> None:
        # Atomic (rename) but not fsynced: a killed process loses nothing, and after an OS crash the
        # fsynced journal still has this stage's answers. Skipping the second fsync per answer keeps
        # the calling thread from becoming the bottleneck at high request rates.
        path = self._path(query_hash)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise write_error(path, e) from None


def answer_record(request: Request, c: Completion, error: str | None = None) -> dict[str, Any]:
    """What the checkpoint and the cache keep of an answer (never the key or headers)."""
    return {
        "query_hash": request.query_hash,
        "feature_index": request.feature_index,
        "response": c.text,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "latency_s": c.latency_s,
        "attempts": c.attempts,
        "error": error,
    }


class Budget:
    """``--max-cost``: a request starts only if, counting every request in flight at its worst case
    (prompt estimate plus ``max_tokens`` of completion), the spend cannot pass the cap."""

    def __init__(self, max_cost: float, price: Price, max_tokens: int) -> None:
        self.max_cost, self.price, self.max_tokens = max_cost, price, max_tokens
        self.spent = 0.0
        self.reserved: dict[str, float] = {}

    def reserve(self, r: Request) -> bool:
        worst = self.price.cost(estimate_tokens(r.system + r.user) + 20, self.max_tokens)
        if self.spent + sum(self.reserved.values()) + worst > self.max_cost:
            return False
        self.reserved[r.query_hash] = worst
        return True

    def settle(self, r: Request, cost: float) -> None:
        self.reserved.pop(r.query_hash, None)
        self.spent += cost


@dataclass
class RunStats:
    sent: int = 0  # attempts that reached the backend
    retries: int = 0
    done: int = 0
    failed: int = 0  # gave up after retries (not journaled: a rerun tries again)
    rejected: int = 0  # the backend refused the prompt itself (journaled)
    spent_usd: float = 0.0
    errors: list[str] = field(default_factory=list)
    budget_stop: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class _Cancelled(Exception):
    pass


OnAnswer = Callable[[Request, Completion, str | None], float]  # returns the answer's cost


class Runner:
    """Sends requests through a backend; ``on_answer`` is called in the caller's thread per finished
    request (ok, or rejected with an error) and persists it before anything else is sent."""

    def __init__(self, backend: Backend, *, max_workers: int, max_retries: int, retry_base_s: float,
                 retry_max_s: float, budget: Budget | None = None, progress: ProgressSink = NULL_PROGRESS,
                 task: str = "generate") -> None:
        self.backend = backend
        self.max_workers = max_workers
        self.max_retries = max_retries
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.budget = budget
        self.progress = progress
        self.task = task
        self.stats = RunStats()
        self._stop = threading.Event()
        self._fatal: PermanentGenerationError | None = None
        self._t0 = time.perf_counter()

    # ----- one request, with retries (worker threads) -----------------------------------------
    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before attempt ``attempt + 1``: the server's Retry-After when given, else
        exponential backoff with equal jitter (spreads retries so they do not arrive together)."""
        if retry_after is not None:
            return min(self.retry_max_s, retry_after) * random.uniform(1.0, 1.1)
        step = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _attempts(self, calls: Callable[[], Any], n: int) -> tuple[Any, int]:
        last: TransientError | None = None
        for attempt in range(1, self.max_retries + 2):
            if self._stop.is_set():
                raise _Cancelled
            self.stats.add(sent=n)
            try:
                return calls(), attempt
            except PermanentGenerationError as e:
                self._fatal = e
                self._stop.set()  # queued requests must not start: stop at once, not after the queue drains
                raise
            except TransientError as e:
                last = e
                unreachable = isinstance(e, Unreachable)
                if attempt > (min(self.max_retries, UNREACHABLE_RETRIES) if unreachable else self.max_retries):
                    break
                self.stats.add(retries=n)
                wait_s = min(1.0, self.retry_base_s) if unreachable else self.backoff(attempt, e.retry_after)
                if self._stop.wait(wait_s):
                    raise _Cancelled from None
        raise GenerationError(f"gave up after {attempt} attempts: {last}")

    def _one(self, r: Request) -> Completion:
        c, attempts = self._attempts(lambda: self.backend.complete(r), 1)
        c.attempts = attempts
        return c

    # ----- the loop (calling thread) ------------------------------------------------------------
    def _info(self) -> str:
        s = self.stats
        rate = s.done / max(1e-9, time.perf_counter() - self._t0)
        parts = [f"{rate:.1f}/s"]
        if s.retries:
            parts.append(f"{s.retries} retries")
        if s.failed or s.rejected:
            parts.append(f"{s.failed + s.rejected} failed")
        if s.spent_usd:
            parts.append(f"${s.spent_usd:.4f}")
        return " · ".join(parts)

    def _finish(self, r: Request, c: Completion | None, error: Exception | None, on_answer: OnAnswer) -> None:
        self.stats.done += 1
        if c is None:  # transient failures exhausted: reported, not journaled, so a rerun retries
            self.stats.failed += 1
            self.stats.errors.append(f"feature {r.feature_index}: {error}")
            if self.budget:
                self.budget.settle(r, 0.0)
            # nothing has worked yet: the server is down or wrongly addressed, stop instead of trying all
            if self.stats.failed == self.stats.done and self.stats.failed >= min(3, self.max_workers):
                raise GenerationError(
                    f"the first {self.stats.failed} requests all failed; last: {error}",
                    "check that the server is reachable (--base-url) and rerun; finished features are kept",
                )
        else:
            rejected = str(error) if isinstance(error, RequestRejected) else None
            cost = on_answer(r, c, rejected)
            self.stats.rejected += rejected is not None
            self.stats.spent_usd += cost
            if self.budget:
                self.budget.settle(r, cost)
        self.progress.advance(self.task, 1, self._info())

    def _admit(self, requests: Iterator[Request]) -> Request | None:
        r = next(requests, None)
        if r is not None and self.budget is not None and not self.budget.reserve(r):
            self.stats.budget_stop = True
            return None
        return r

    def run(self, requests: Sequence[Request], on_answer: OnAnswer) -> RunStats:
        self._t0 = time.perf_counter()
        try:
            if self.backend.batch_size > 1:
                self._run_batched(requests, on_answer)
            else:
                self._run_concurrent(requests, on_answer)
        finally:
            self._stop.set()
        if self.stats.budget_stop:
            raise BudgetExceededError(
                f"stopped before exceeding --max-cost ${self.budget.max_cost:g}: spent ${self.budget.spent:.4f}, "  # type: ignore[union-attr]
                f"{len(requests) - self.stats.done - self.stats.failed} requests not sent",
                "raise --max-cost and rerun the same command to continue; finished features are kept",
            )
        return self.stats

    def _run_concurrent(self, requests: Sequence[Request], on_answer: OnAnswer) -> None:
        pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="sae-sens-generate")
        todo = iter(requests)
        in_flight: dict[Future[Completion], Request] = {}
        try:
            while True:
                # bounded: never more handed out than there are workers, so a crash loses at most
                # max_workers answers and a stop leaves nothing queued
                while len(in_flight) < self.max_workers and not self.stats.budget_stop:
                    r = self._admit(todo)
                    if r is None:
                        break
                    in_flight[pool.submit(self._one, r)] = r
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    r = in_flight.pop(fut)
                    try:
                        self._finish(r, fut.result(), None, on_answer)
                    except RequestRejected as e:
                        self._finish(r, Completion("", None, None, 0.0), e, on_answer)
                    except (PermanentGenerationError, _Cancelled):
                        # another request may be cancelled before the fatal one is seen: report the cause
                        raise self._fatal or PermanentGenerationError("generation was cancelled") from None
                    except GenerationError as e:
                        self._finish(r, None, e, on_answer)
        finally:
            # stop at once: queued work is dropped, sleeping retries wake up and quit
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _call_batch(self, batch: list[Request], done: set[int], tries: list[int],
                    on_answer: OnAnswer) -> tuple[list[int], list[Completion]]:
        """One attempt at the batch's unanswered requests (a retry resends only those). A backend that
        ``streams_answers`` hands each answer over as its sequence ends: it is finished (journaled,
        counted) at once, and ``done`` remembers it."""
        tries[0] += 1
        idx = [i for i in range(len(batch)) if i not in done]
        sub = [batch[i] for i in idx]
        if not getattr(self.backend, "streams_answers", False):
            return idx, self.backend.complete_batch(sub)

        def early(j: int, answer: Completion) -> None:
            done.add(idx[j])
            answer.attempts = tries[0]
            self._finish(batch[idx[j]], answer, None, on_answer)

        def step(n: int, cap: int) -> None:
            if n % 16 == 0:  # a heartbeat while a long batch runs (off a terminal: a timed line)
                self.progress.advance(self.task, 0, f"{self._info()} · batch at {n}/{cap} tokens")

        return idx, self.backend.complete_batch(sub, on_done=early, on_step=step)  # type: ignore[call-arg]

    def _run_batched(self, requests: Sequence[Request], on_answer: OnAnswer) -> None:
        todo = iter(requests)
        while True:
            batch: list[Request] = []
            while len(batch) < self.backend.batch_size and (r := self._admit(todo)) is not None:
                batch.append(r)
            if not batch:
                return
            done: set[int] = set()  # answers already handed over (and journaled) while the batch ran
            tries = [0]
            try:
                (idx, completions), attempts = self._attempts(
                    partial(self._call_batch, batch, done, tries, on_answer), len(batch))
            except GenerationError as e:
                if isinstance(e, PermanentGenerationError):
                    raise
                for i, r in enumerate(batch):
                    if i not in done:
                        self._finish(r, None, e, on_answer)
                continue
            for i, c in zip(idx, completions, strict=True):
                if i not in done:
                    c.attempts = attempts
                    self._finish(batch[i], c, None, on_answer)
