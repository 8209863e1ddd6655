"""A small, real server of OpenAI's Batch API on 127.0.0.1, for tests: ``POST /v1/files`` (multipart,
purpose ``batch``), ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``GET /v1/batches`` (list, newest first), with the documented objects and JSONL line formats.

A batch's status advances one step (validating, in_progress, finalizing, completed) every
``polls_per_step`` reads of it; its requests run when it finishes, answers in shuffled order, through
the same deterministic ``echo_samples`` as ``ChatServer``. ``fail(custom_id, body)`` can give a
request an error status (it goes into the error file); ``expire`` names batches (by creation
order, 0-based) that end ``expired`` with only their first half run (the rest in the error file as
``batch_expired``); ``reject`` names batches that end ``failed`` at validation. Every request run is
counted (``executed``), so a test can prove nothing ran twice.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.openai_server import echo_samples

STEPS = ("validating", "in_progress", "finalizing", "completed")


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class BatchServer:
    def __init__(self, *, models: tuple[str, ...] = ("test-model",), api_key: str | None = None,
                 polls_per_step: int = 1, n_samples: int = 11, separator: str = "<SEP>",
                 fail: Callable[[str, dict[str, Any]], tuple[int, str] | None] | None = None,
                 expire: set[int] | None = None, reject: set[int] | None = None,
                 respond: Callable[[list[dict[str, Any]]], str] | None = None) -> None:
        self.models, self.api_key, self.polls_per_step = models, api_key, polls_per_step
        self.fail, self.expire, self.reject = fail, set(expire or ()), set(reject or ())
        self.respond = respond or (lambda m: echo_samples(m, n_samples, separator))
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # batch ids in creation order
        self.executed: list[str] = []  # custom_ids run, in order
        self.uploads = 0
        self.lock = threading.Lock()
        self._server = _Quiet(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> BatchServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ----- the batch lifecycle ---------------------------------------------------------------------
    def _file(self, data: bytes, purpose: str, filename: str) -> dict[str, Any]:
        fid = f"file-{len(self.files)}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": 0, "filename": filename,
                           "purpose": purpose, "data": data}
        return self.public_file(fid)

    def public_file(self, fid: str) -> dict[str, Any]:
        return {k: v for k, v in self.files[fid].items() if k != "data"}

    def _advance(self, b: dict[str, Any]) -> None:
        if b["status"] in ("completed", "expired", "failed", "cancelled"):
            return
        b["_polls"] += 1
        ordinal = self.order.index(b["id"])
        if ordinal in self.reject:
            b.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the input file is not valid", "line": 1, "param": None}]})
            return
        step = min(b["_polls"] // self.polls_per_step, len(STEPS) - 1)
        if STEPS[step] == "completed":
            self._run(b, expired=ordinal in self.expire)
        else:
            b["status"] = STEPS[step]

    def _run(self, b: dict[str, Any], *, expired: bool) -> None:
        lines = [json.loads(x) for x in self.files[b["input_file_id"]]["data"].decode().splitlines() if x.strip()]
        run = lines[: len(lines) // 2] if expired else lines
        out, err = [], []
        for i, line in enumerate(run):
            cid, body = line["custom_id"], line["body"]
            self.executed.append(cid)
            failure = self.fail(cid, body) if self.fail else None
            if body.get("model") not in self.models:
                failure = (404, f"The model `{body.get('model')}` does not exist")
            if failure is not None:
                code, message = failure
                err.append({"id": f"batch_req_{b['id']}_{i}", "custom_id": cid, "error": None,
                            "response": {"status_code": code, "request_id": f"req_{i}",
                                         "body": {"error": {"message": message, "type": "server_error"}}}})
                continue
            text = self.respond(body["messages"])
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            out.append({"id": f"batch_req_{b['id']}_{i}", "custom_id": cid, "error": None, "response": {
                "status_code": 200, "request_id": f"req_{i}", "body": {
                    "id": f"chatcmpl-{b['id']}-{i}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                              "total_tokens": prompt_tokens + len(text.split())}}}})
        for line in lines[len(run):]:
            err.append({"id": f"batch_req_{b['id']}_x", "custom_id": line["custom_id"], "response": None,
                        "error": {"code": "batch_expired",
                                  "message": "This request could not be executed before the completion window expired."}})
        random.Random(b["id"]).shuffle(out)  # any order, as the API says
        random.Random(b["id"] + "e").shuffle(err)
        if out:
            b["output_file_id"] = self._file(b"".join(json.dumps(x).encode() + b"\n" for x in out), "batch_output",
                                             "output.jsonl")["id"]
        if err:
            b["error_file_id"] = self._file(b"".join(json.dumps(x).encode() + b"\n" for x in err), "batch_output",
                                            "errors.jsonl")["id"]
        b["status"] = "expired" if expired else "completed"
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

    def public(self, b: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    # ----- HTTP ------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any] | bytes, ctype: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.api_key is not None and self.headers.get("authorization", "") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}})
                    return False
                return True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                if not self._authorised():
                    return
                path = urlsplit(self.path).path.rstrip("/")
                with server.lock:
                    if path.endswith("/files"):
                        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                            b"Content-Type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + raw)
                        fields: dict[str, Any] = {}
                        for part in msg.iter_parts():
                            name = part.get_param("name", header="content-disposition")
                            fields[name] = (part.get_filename(), part.get_payload(decode=True))
                        server.uploads += 1
                        filename, data = fields["file"]
                        self._send(200, server._file(data, fields["purpose"][1].decode(), filename or "upload"))
                        return
                    if path.endswith("/batches"):
                        body = json.loads(raw or b"{}")
                        if body.get("input_file_id") not in server.files:
                            self._send(404, {"error": {"message": "no such file"}})
                            return
                        bid = f"batch_{len(server.order)}"
                        server.order.append(bid)
                        server.batches[bid] = {
                            "id": bid, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                            "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
                            "status": "validating", "output_file_id": None, "error_file_id": None,
                            "created_at": len(server.order), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                            "metadata": body.get("metadata"), "_polls": 0}
                        self._send(200, server.public(server.batches[bid]))
                        return
                self._send(404, {"error": {"message": "no such route"}})

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                url = urlsplit(self.path)
                parts = url.path.rstrip("/").split("/")
                with server.lock:
                    if parts[-1] == "content" and parts[-3] == "files" and parts[-2] in server.files:
                        self._send(200, server.files[parts[-2]]["data"], "application/octet-stream")
                        return
                    if parts[-2] == "files" and parts[-1] in server.files:
                        self._send(200, server.public_file(parts[-1]))
                        return
                    if parts[-1] == "batches":
                        limit = int(parse_qs(url.query).get("limit", ["20"])[0])
                        data = [server.public(server.batches[b]) for b in reversed(server.order)][:limit]
                        self._send(200, {"object": "list", "data": data, "has_more": False,
                                         "first_id": data[0]["id"] if data else None,
                                         "last_id": data[-1]["id"] if data else None})
                        return
                    if parts[-2] == "batches" and parts[-1] in server.batches:
                        b = server.batches[parts[-1]]
                        server._advance(b)
                        self._send(200, server.public(b))
                        return
                self._send(404, {"error": {"message": "no such route"}})

        return Handler
