"""A small, real OpenAI-compatible HTTP server for tests and benchmarks.

It speaks ``POST /v1/chat/completions`` on 127.0.0.1 (a free port), answers deterministically (the
samples are derived from a hash of the prompt, so two runs can be compared row for row), counts
every request, and can inject failures: a scripted status per request, a bad key, an unknown model,
an exhausted quota, a fixed latency.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Failure = tuple[int, dict[str, str], dict[str, Any]]


@dataclass
class Hit:
    at: float
    status: int
    prompt_hash: str
    model: str


def prompt_hash(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def echo_samples(messages: list[dict[str, Any]], n: int, separator: str) -> str:
    """``n`` samples that depend only on the prompt."""
    h = prompt_hash(messages)
    words = ["river", "castle", "piano", "comet", "harbor", "lantern", "meadow", "orbit"]
    rng = random.Random(h)
    samples = [f"{rng.choice(words)} {rng.choice(words)} sample {i} of {h[:8]}" for i in range(n)]
    return f"\n{separator}\n".join(samples)


def random_failures(rate: float, seed: int = 0, statuses: tuple[int, ...] = (500, 503, 429),
                    retry_after_ms: int = 10) -> Callable[[int, dict[str, Any]], Failure | None]:
    """Fail each request with probability ``rate`` (5xx, or 429 with Retry-After)."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def fail(_n: int, _body: dict[str, Any]) -> Failure | None:
        with lock:
            if rng.random() >= rate:
                return None
            status = rng.choice(statuses)
        headers = {"retry-after-ms": str(retry_after_ms)} if status == 429 else {}
        return status, headers, {"error": {"message": f"injected {status}", "type": "server_error", "code": None}}

    return fail


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients killed mid-request (the tests do that on purpose) reset their connections


class ChatServer:
    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("test-model",),
        api_key: str | None = None,
        n_samples: int = 11,
        separator: str = "<SEP>",
        latency_s: float = 0.0,
        fail: Callable[[int, dict[str, Any]], Failure | None] | None = None,
        respond: Callable[[list[dict[str, Any]]], str] | None = None,
        quota_exhausted: bool = False,
    ) -> None:
        self.models, self.api_key = models, api_key
        self.latency_s, self.fail, self.quota_exhausted = latency_s, fail, quota_exhausted
        self.respond = respond or (lambda m: echo_samples(m, n_samples, separator))
        self.hits: list[Hit] = []
        self.bodies: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._arrivals = 0
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # a short poll: leaving the ``with`` block (shutdown) waits for one poll, 0.5 s by default
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for h in self.hits if status is None or h.status == status)

    def answered(self) -> list[str]:
        """Prompt hashes answered with 200, in order."""
        with self._lock:
            return [h.prompt_hash for h in self.hits if h.status == 200]

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()
            self.bodies.clear()
            self._arrivals = 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms each
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                messages = body.get("messages", [])
                with server._lock:
                    n = server._arrivals  # arrival order, 0-based
                    server._arrivals += 1
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    status, headers, payload = self._answer(n, body, messages)
                finally:
                    with server._lock:
                        server._in_flight -= 1
                        server.hits.append(Hit(time.monotonic(), status, prompt_hash(messages), body.get("model", "")))
                        server.bodies.append(body)
                self._send(status, payload, headers)

            def _answer(self, n: int, body: dict[str, Any], messages: list[dict[str, Any]]) -> Failure:
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return 404, {}, {"error": {"message": "no such route"}}
                auth = self.headers.get("authorization", "")
                if server.api_key is not None and auth != f"Bearer {server.api_key}":
                    return 401, {}, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}}
                if body.get("model") not in server.models:
                    return 404, {}, {"error": {"message": f"The model `{body.get('model')}` does not exist",
                                               "type": "invalid_request_error", "code": "model_not_found"}}
                if server.quota_exhausted:
                    return 429, {}, {"error": {"message": "You exceeded your current quota.",
                                               "type": "insufficient_quota", "code": "insufficient_quota"}}
                if server.latency_s:
                    time.sleep(server.latency_s)
                if server.fail is not None and (failure := server.fail(n, body)) is not None:
                    return failure
                text = server.respond(messages)
                prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
                return 200, {}, {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                              "total_tokens": prompt_tokens + len(text.split())},
                }

        return Handler


def hashed_judge(messages: list[dict[str, Any]]) -> str:
    """A deterministic judge: A or B for a blind pair, yes or no for a direct check, from the prompt's hash."""
    user = str(messages[-1].get("content", ""))
    bit = hashlib.sha256(user.encode()).digest()[0] % 2
    if "Text A:" in user:
        return "AB"[bit]
    return ("yes\nit shows the pattern", "no\nnothing like the examples")[bit]


if __name__ == "__main__":  # python -m tests.support.openai_server URL_FILE MODEL...: serve until killed
    import sys
    from pathlib import Path

    with ChatServer(models=tuple(sys.argv[2:]) or ("test-model",), respond=hashed_judge) as _srv:
        Path(sys.argv[1]).write_text(_srv.base_url)
        while True:
            time.sleep(3600)
