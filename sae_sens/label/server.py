"""``sae-sens label``: a local page where humans take the blind pairwise test.

The server listens on 127.0.0.1 unless another host is asked for (a free port unless one is given).
The page shows one pair at a time: the feature's examples with their activating tokens highlighted,
then texts A and B; the keys A and B say which is the real example, S skips, U undoes the rater's
last answer (its row is removed, and that pair is shown again). Every answer is written to the SAE's
``labels`` table at once (with the rater's name), so closing the browser loses nothing, a reopened
page continues with the rater's first unanswered pair, and a second rater starts from the beginning.
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

from ..schemas import make_table
from ..store import Store
from .pairs import Pair

ANSWERS = ("A", "B", "skip")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class LabelBook:
    """The ``labels`` tables of the SAEs being labelled: who answered what (thread-safe)."""

    def __init__(self, store: Store, pairs: Sequence[Pair], seed: int) -> None:
        self.store, self.pairs, self.seed = store, list(pairs), seed
        self.by_id = {p.pair_id: p for p in self.pairs}
        self._lock = threading.Lock()

    def _rows(self, run: str, sae: str) -> pa.Table | None:
        if not self.store.has_table(run, sae, "labels"):
            return None
        t = self.store.read_table(run, sae, "labels")
        return t.drop_columns([c for c in ("run", "sae") if c in t.column_names])

    def answered(self, rater: str) -> set[str]:
        out: set[str] = set()
        for run, sae in {(p.run, p.sae) for p in self.pairs}:
            t = self._rows(run, sae)
            if t is not None:
                out |= {pid for pid, r in zip(t["pair_id"].to_pylist(), t["rater"].to_pylist(), strict=True)
                        if r == rater}
        return out

    def next(self, rater: str) -> tuple[Pair | None, int]:
        with self._lock:
            done = self.answered(rater)
        todo = [p for p in self.pairs if p.pair_id not in done]
        return (todo[0] if todo else None), len(self.pairs) - len(todo)

    def undo(self, rater: str) -> str | None:
        """Remove ``rater``'s last answer (latest ``answered_at``, then latest in serving order) from its
        ``labels`` table; returns its pair id, None when the rater has answered nothing here."""
        order = {p.pair_id: i for i, p in enumerate(self.pairs)}
        with self._lock:
            last: tuple[tuple[str, int], Pair] | None = None
            for run, sae in {(p.run, p.sae) for p in self.pairs}:
                t = self._rows(run, sae)
                if t is None:
                    continue
                for pid, r, at in zip(t["pair_id"].to_pylist(), t["rater"].to_pylist(),
                                      t["answered_at"].to_pylist(), strict=True):
                    if r == rater and pid in self.by_id:
                        key = (str(at or ""), order[pid])
                        if last is None or key > last[0]:
                            last = (key, self.by_id[pid])
            if last is None:
                return None
            p = last[1]
            with self.store.lock(p.run, p.sae, what="label"):
                t = self.store.read_table(p.run, p.sae, "labels")
                keep = [not (pid == p.pair_id and r == rater) for pid, r in zip(
                    t["pair_id"].to_pylist(), t["rater"].to_pylist(), strict=True)]
                kept = t.filter(pa.array(keep)).drop_columns([c for c in ("run", "sae") if c in t.column_names])
                self.store.write_table(p.run, p.sae, "labels", kept)
            return p.pair_id

    def answer(self, rater: str, pair_id: str, answer: str) -> bool:
        """Record one answer; False when this rater already answered this pair (nothing written)."""
        p = self.by_id[pair_id]
        row = {"feature_index": p.feature_index, "generator": p.generator, "sample_index": p.sample_index,
               "rater": rater, "pair_id": pair_id, "real_example": p.real_example, "real_position": p.real_position,
               "answer": answer, "correct": None if answer == "skip" else answer == p.real_position,
               "text": p.text, "real_text": p.real_text, "seed": self.seed,
               # to the microsecond: undo takes the latest answer
               "answered_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")}
        # the store's run x SAE lock too: a judge or score run may be rewriting this SAE's manifest
        with self._lock, self.store.lock(p.run, p.sae, what="label"):
            old = self._rows(p.run, p.sae)
            if old is not None and any(pid == pair_id and r == rater for pid, r in zip(
                    old["pair_id"].to_pylist(), old["rater"].to_pylist(), strict=True)):
                return False
            new = make_table("labels", [row])
            table = new if old is None else pa.concat_tables([old.select(new.column_names).cast(new.schema), new])
            self.store.write_table(p.run, p.sae, "labels", table)
        return True


def page_html() -> str:
    return resources.files("sae_sens").joinpath("label/page.html").read_text(encoding="utf-8")


def make_server(book: LabelBook, rater: str, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server on ``host`` (``port`` 0: a free one); call ``serve_forever``. The page says
    whether calibration trials (two real texts) are among the pairs."""
    calibration = any(p.trial == "calibration" for p in book.pairs)
    page = (page_html().replace("__RATER__", json.dumps(rater))
            .replace("__CALIBRATION__", "true" if calibration else "false"))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.send_header("cache-control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/":
                self._send(200, page.encode(), "text/html; charset=utf-8")
            elif url.path == "/api/next":
                who = (parse_qs(url.query).get("rater") or [rater])[0].strip() or rater
                pair, done = book.next(who)
                self._json(200, {"rater": who, "done": done, "total": len(book.pairs),
                                 "pair": pair.public() if pair else None})
            else:
                self._json(404, {"error": "no such page"})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path == "/api/undo":
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                    who = str(body["rater"]).strip()
                except (ValueError, KeyError):
                    who = ""
                if not who:
                    self._json(400, {"error": "send rater"})
                    return
                self._json(200, {"undone": book.undo(who)})
                return
            if path != "/api/answer":
                self._json(404, {"error": "no such page"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                who, pid, ans = str(body["rater"]).strip(), str(body["pair_id"]), str(body["answer"])
            except (ValueError, KeyError):
                self._json(400, {"error": "send rater, pair_id and answer"})
                return
            if not who or pid not in book.by_id or ans not in ANSWERS:
                self._json(400, {"error": f"answer must be one of {', '.join(ANSWERS)} for a known pair"})
                return
            self._json(200, {"written": book.answer(who, pid, ans)})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
