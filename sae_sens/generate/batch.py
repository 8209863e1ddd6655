"""``--batch``: the requests of ``generate`` and ``judge`` through the OpenAI Batch API (half price).

The requests are the synchronous path's (same prompts, sampling settings, seed and cache key: a
cached answer is never sent, and a batch answer serves a later synchronous run). They go into JSONL
files of at most ``batch_max_requests`` requests and ``MAX_FILE_BYTES``, one line each
(``custom_id`` = the request's query hash), uploaded with purpose ``batch`` and submitted to
``/v1/chat/completions`` with a 24 h window and ``metadata.sae_sens`` naming the file.

Never pays twice. Every file gets a journal line (``batches.jsonl`` in the stage's checkpoint folder)
*before* it is uploaded; its batch id gets one right after the server returns it. A process killed
between the two leaves a line without an id: the next run asks the server for a batch whose
metadata names that file before submitting anything (and adopts it). Answers are appended to the
stage's answer journal and the cache as each batch is collected, so a kill while collecting loses
nothing either.

A batch ends ``completed``, ``expired`` (what finished is in its output file, the rest in its error
file), ``failed`` (the file was rejected) or ``cancelled``. Per request: a 200 line is an answer; a
4xx line (a refused prompt) is recorded as refused, like the synchronous path; anything else (5xx,
expired, never run) is submitted again in the next round, up to ``max_retries`` rounds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import faults
from ..errors import BatchError, BatchPendingError, BudgetExceededError, GenerationError
from ..hashing import hash_config
from ..jsonl import append_record, read_records
from ..progress import NULL_PROGRESS, ProgressSink, warn
from ..store import write_error
from .backends import Completion, Request
from .pricing import Price, estimate_tokens

ENDPOINT = "/v1/chat/completions"
MAX_FILE_BYTES = 190 * 1024 * 1024  # the API takes 200 MB; a margin for the multipart envelope
TERMINAL = ("completed", "expired", "failed", "cancelled")
METADATA_KEY = "sae_sens"

OnAnswer = Callable[[Request, Completion, "str | None", str], None]  # request, answer, refusal, batch id


class BatchJournal:
    """``batches.jsonl``: one line per event, appended and fsynced. Events: ``file`` (a file about to be
    submitted: its key and query hashes), ``submitted`` (its batch id), ``collected`` (its end)."""

    def __init__(self, path: Path, stage: str | None = None) -> None:
        self.path, self.stage = path, stage

    def load(self) -> dict[str, dict[str, Any]]:
        """Per file key: ``hashes``, and ``batch_id``, ``status`` once known; ``collected`` when done."""
        files: dict[str, dict[str, Any]] = {}
        for rec in read_records(self.path):
            f = files.setdefault(rec["key"], {"key": rec["key"], "hashes": [], "collected": False})
            if rec["event"] == "file":
                f["hashes"] = rec["hashes"]
            elif rec["event"] == "submitted":
                f.update(batch_id=rec["batch_id"], input_file_id=rec.get("input_file_id"))
            elif rec["event"] == "collected":
                f.update(collected=True, status=rec.get("status"))
        return files

    def append(self, record: dict[str, Any]) -> None:
        if self.stage and record.get("event") == "file":  # so `runs` names a stage that has no record yet
            record = {**record, "stage": self.stage}
        try:
            append_record(self.path, record)
        except OSError as e:
            raise write_error(self.path, e) from None

    def open_batches(self) -> list[dict[str, Any]]:
        return [f for f in self.load().values() if not f["collected"]]


@dataclass
class BatchStats:
    submitted: int = 0  # batches this run created
    adopted: int = 0  # batches found at the server for journal lines without an id
    answered: int = 0
    refused: int = 0
    resubmitted: int = 0  # requests sent again after a batch expired, failed or returned a 5xx
    spent_usd: float = 0.0
    batch_ids: list[str] = field(default_factory=list)


def request_line(r: Request, model: str, temperature: float, max_tokens: int, seed: int) -> dict[str, Any]:
    """One input line: the synchronous request's body, keyed by its query hash."""
    return {"custom_id": r.query_hash, "method": "POST", "url": ENDPOINT,
            "body": {"model": model, "messages": [{"role": "system", "content": r.system},
                                                  {"role": "user", "content": r.user}],
                     "temperature": temperature, "max_tokens": max_tokens, "seed": seed}}


def split_files(lines: Sequence[bytes], max_requests: int, max_bytes: int = MAX_FILE_BYTES) -> list[list[int]]:
    """Indices of ``lines`` per input file: at most ``max_requests`` lines and ``max_bytes`` each."""
    out: list[list[int]] = []
    size = 0
    for i, line in enumerate(lines):
        if not out or len(out[-1]) >= max_requests or size + len(line) > max_bytes:
            out.append([])
            size = 0
        out[-1].append(i)
        size += len(line)
    return out


class BatchClient:
    """The Batch API calls, through the ``openai`` client of an ``OpenAIBackend`` (its key, server and
    error mapping)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.client = backend.client
        self.where = backend.where

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        oa = self.backend._openai
        try:
            return fn()
        except oa.AuthenticationError as e:
            from ..errors import ApiKeyError

            raise ApiKeyError(f"{self.where} rejected the API key (401) on {what}: {self.backend._message(e)}",
                              "check OPENAI_API_KEY (in .env or the environment)") from None
        except oa.APIConnectionError as e:
            raise GenerationError(f"cannot reach {self.where} to {what}: {self.backend._message(e)}",
                                  "check --base-url and the network, then rerun: submitted batches are kept") from None
        except oa.APIStatusError as e:
            raise BatchError(f"{self.where} refused to {what} ({e.status_code}): {self.backend._message(e)}",
                             "rerun the same command when the server is back; submitted batches are kept") from None

    def submit(self, key: str, data: bytes) -> tuple[str, str]:
        f = self._call("upload a batch file", lambda: self.client.files.create(
            file=(f"sae-sens-{key[:16]}.jsonl", data), purpose="batch"))
        faults.point("batch:uploaded")
        b = self._call("create a batch", lambda: self.client.batches.create(
            input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h", metadata={METADATA_KEY: key}))
        return b.id, f.id

    def find(self, key: str) -> str | None:
        """The id of a batch whose metadata names ``key`` (a submit the journal never heard back from)."""
        page = self._call("list batches", lambda: self.client.batches.list(limit=100))
        for b in page.auto_paging_iter() if hasattr(page, "auto_paging_iter") else page:
            if (getattr(b, "metadata", None) or {}).get(METADATA_KEY) == key:
                return str(b.id)
        return None

    def retrieve(self, batch_id: str) -> Any:
        return self._call(f"read batch {batch_id}", lambda: self.client.batches.retrieve(batch_id))

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        content = self._call(f"download file {file_id}", lambda: self.client.files.content(file_id))
        text = content.text if hasattr(content, "text") else content.read().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _completion(body: dict[str, Any]) -> Completion:
    choices = body.get("choices") or []
    usage = body.get("usage") or {}
    return Completion(text=(choices[0].get("message") or {}).get("content") or "" if choices else "",
                      prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                      latency_s=0.0)


def _status_line(b: Any) -> str:
    c = getattr(b, "request_counts", None)
    counts = f" ({c.completed}/{c.total} done, {c.failed} failed)" if c is not None else ""
    return f"batch {b.id}: {b.status}{counts}"


def run_batches(
    todo: Sequence[Request],
    *,
    model: str,
    temperature: float,
    max_tokens: int,
    seed: int,
    journal: BatchJournal,
    client: BatchClient,
    on_answer: OnAnswer,
    price: Price | None = None,
    max_cost: float | None = None,
    spent_before: float = 0.0,
    max_requests: int = 50_000,
    poll_s: float = 60.0,
    wait: bool = True,
    max_rounds: int = 6,
    progress: ProgressSink = NULL_PROGRESS,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchStats:
    """Get an answer (or a refusal) for every request of ``todo`` through batches; see the module doc."""
    stats = BatchStats()
    by_hash = {r.query_hash: r for r in todo}
    done: set[str] = set()
    sent_rounds: dict[str, int] = {}  # query hash -> files it has been in (this run and journaled ones)
    files = journal.load()
    for f in files.values():
        for h in f["hashes"]:
            sent_rounds[h] = sent_rounds.get(h, 0) + 1

    def budget_left(reserved: float) -> float:
        return float("inf") if max_cost is None or price is None else max_cost - spent_before - stats.spent_usd - reserved

    def worst(r: Request) -> float:
        return price.cost(estimate_tokens(r.system + r.user) + 20, max_tokens) if price else 0.0

    def collect(f: dict[str, Any], b: Any) -> None:
        """A finished batch: its answers journaled (and cached) by the caller, then its end journaled."""
        for line in client.lines(getattr(b, "output_file_id", None)) + client.lines(getattr(b, "error_file_id", None)):
            h = line.get("custom_id")
            if h not in by_hash or h in done:
                continue
            resp = line.get("response") or {}
            code = resp.get("status_code")
            if code == 200:
                c = _completion(resp.get("body") or {})
                on_answer(by_hash[h], c, None, b.id)
                faults.point("batch:answer")
                stats.answered += 1
                stats.spent_usd += price.cost(c.prompt_tokens, c.completion_tokens) if price else 0.0
                done.add(h)
            elif isinstance(code, int) and 400 <= code < 500 and code not in (408, 409, 425, 429):
                err = ((resp.get("body") or {}).get("error") or {}).get("message") or f"status {code}"
                on_answer(by_hash[h], Completion("", None, None, 0.0), f"{code}: {err}", b.id)
                stats.refused += 1
                done.add(h)
        journal.append({"event": "collected", "key": f["key"], "batch_id": b.id, "status": b.status})
        faults.point("batch:collected")
        if b.status == "failed":
            errors = getattr(getattr(b, "errors", None), "data", None) or []
            why = "; ".join(f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in errors[:3]) or "no reason given"
            warn(progress, f"batch {b.id} failed ({why}); its requests go into a new batch")
        elif b.status in ("expired", "cancelled"):
            warn(progress, f"batch {b.id} {b.status}; what finished is kept, the rest goes "
                         "into a new batch")

    # journal lines without a batch id: a submit that may have reached the server before a kill
    for f in files.values():
        if not f["collected"] and not f.get("batch_id"):
            found = client.find(f["key"])
            if found is not None:
                journal.append({"event": "submitted", "key": f["key"], "batch_id": found})
                f["batch_id"] = found
                stats.adopted += 1
                progress.log(f"batch {found}: found at the server (submitted before an interruption)")

    rounds = 0
    while True:
        live = [f for f in files.values() if not f["collected"]]
        covered = {h for f in live for h in f["hashes"]}
        pending = [r for r in todo if r.query_hash not in done and r.query_hash not in covered]
        # a file whose submit never reached the server goes again under its own key (nothing to pay twice)
        unsent = [f for f in live if not f.get("batch_id")]
        if pending and rounds < max_rounds:
            rounds += 1
            lines = [json.dumps(request_line(r, model, temperature, max_tokens, seed)).encode() + b"\n"
                     for r in pending]
            reserved = sum(worst(by_hash[h]) for f in live for h in f["hashes"] if h not in done)
            room = budget_left(reserved)
            take, cost = [], 0.0
            for i, r in enumerate(pending):
                if cost + worst(r) > room:
                    break
                take.append(i)
                cost += worst(r)
            if not take and not live:  # nothing in flight that could free room in the budget
                raise BudgetExceededError(
                    f"stopped before exceeding --max-cost ${max_cost:g}: spent ${spent_before + stats.spent_usd:.4f}, "
                    f"{len(pending)} requests not submitted",
                    "raise --max-cost and rerun the same command to continue; finished features are kept")
            if not take:
                rounds -= 1  # waiting for the batches in flight is not a round
            for idx in split_files([lines[i] for i in take], max_requests):
                chosen = [pending[take[i]] for i in idx]
                hashes = [r.query_hash for r in chosen]
                stats.resubmitted += sum(1 for h in hashes if sent_rounds.get(h))
                key = hash_config({"hashes": hashes, "attempt": [sent_rounds.get(h, 0) for h in hashes]})
                journal.append({"event": "file", "key": key, "hashes": hashes})  # before anything is sent
                faults.point("batch:file")
                files[key] = {"key": key, "hashes": hashes, "collected": False}
                unsent.append(files[key])
                for h in hashes:
                    sent_rounds[h] = sent_rounds.get(h, 0) + 1
            if take and len(take) < len(pending):
                warn(progress, f"--max-cost: {len(pending) - len(take)} requests wait for room "
                             "in the budget")
        for f in unsent:
            data = b"".join(json.dumps(request_line(by_hash[h], model, temperature, max_tokens, seed)).encode() + b"\n"
                            for h in f["hashes"])
            batch_id, file_id = client.submit(f["key"], data)
            faults.point("batch:created")
            journal.append({"event": "submitted", "key": f["key"], "batch_id": batch_id, "input_file_id": file_id})
            faults.point("batch:submitted")
            f["batch_id"] = batch_id
            stats.submitted += 1
            stats.batch_ids.append(batch_id)
            progress.log(f"batch {batch_id}: submitted {len(f['hashes'])} requests")
        live = [f for f in files.values() if not f["collected"]]
        if not live:
            break
        if not wait:
            ids = ", ".join(f["batch_id"] for f in live)
            raise BatchPendingError(f"{len(live)} batch(es) at the server: {ids}",
                                    "rerun the same command (without --no-wait, or with it to check) to collect them")
        finished = False
        for f in live:
            b = client.retrieve(f["batch_id"])
            progress.log(_status_line(b))
            if b.status in TERMINAL:
                collect(f, b)
                f["collected"] = True
                finished = True
        if not finished:
            sleep(poll_s)
    missing = [r for r in todo if r.query_hash not in done]
    if missing:
        raise GenerationError(f"{len(missing)} of {len(todo)} requests got no answer after {rounds} batch rounds",
                              "rerun the same command to submit only those; finished answers are kept")
    return stats
