"""The labelling page in a real headless Chromium (Debian's `chromium`), driven over the DevTools
protocol: keys A / B / S answer pairs, the page is closed mid-way and reopened, and the `labels`
table (real Parquet through the store) holds exactly the answered rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from sae_sens.label import LabelBook, build_pairs, make_server
from sae_sens.schemas import make_table
from sae_sens.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,  # a real headless Chromium
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")]
RUN, SAE = "r", "my_sae"


class Browser:
    """Headless Chromium over the DevTools protocol (websockets, synchronous)."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):  # Chromium writes the port once it listens
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None)
        self.n = 0

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.n += 1
        msg: dict[str, Any] = {"id": self.n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.n:
                assert "error" not in reply, reply
                return reply.get("result", {})

    def open(self, url: str) -> tuple[str, str]:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return target, session

    def eval(self, session: str, expr: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}, session)
        return res["result"].get("value")

    def shown_pair(self, session: str, previous: str | None = None) -> str:
        """The pair id on the page, once one is shown that differs from ``previous``."""
        for _ in range(600):
            pid = self.eval(session, "document.getElementById('pair') && document.getElementById('pair').dataset.id")
            if pid and pid != previous:
                return str(pid)
            time.sleep(0.05)
        raise AssertionError("the page never showed a new pair")

    def key(self, session: str, k: str) -> None:
        base = {"key": k, "code": f"Key{k.upper()}", "windowsVirtualKeyCode": ord(k.upper())}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "text": k, **base}, session)
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **base}, session)

    def close(self, target: str) -> None:
        self.call("Target.closeTarget", {"targetId": target})

    def quit(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait()


def tables() -> tuple[pa.Table, pa.Table, pa.Table]:
    examples = make_table("examples", [
        {"feature_index": f, "example_index": i, "kind": "top", "text": f"feature {f} shows {{{{token{f}}}}} here {i}"}
        for f in range(3) for i in range(4)])
    gens = make_table("generations", [{"feature_index": f, "generator": "g", "sample_index": s,
                                       "text": f"generated {f}.{s} with token{f}"} for f in range(3) for s in range(3)])
    held = pa.table({"feature_index": pa.array([f for f in range(3) for _ in range(2)], pa.int64()),
                     "pool": ["top", "iw"] * 3, "rank": pa.array([10, 5] * 3, pa.int32()),
                     "text": [f"real {{{{token{f}}}}} held out {k}" for f in range(3) for k in range(2)]})
    return examples, gens, held


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Store, str, LabelBook]]:
    store = Store(tmp_path / "store")
    examples, gens, held = tables()
    book = LabelBook(store, build_pairs(RUN, SAE, examples, gens, held, {"g": (10, 5, 42)}, seed=42), 42)
    server = make_server(book, "nobody")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield store, f"http://127.0.0.1:{server.server_address[1]}", book
    finally:
        server.shutdown()
        server.server_close()


def test_label_page_in_headless_chromium(served: tuple[Store, str, LabelBook], tmp_path: Path) -> None:
    store, url, book = served
    assert len(book.pairs) == 9
    browser = Browser(tmp_path / "profile")
    given: list[tuple[str, str]] = []
    try:
        target, page = browser.open(f"{url}/?rater=ana")
        pid = browser.shown_pair(page)
        assert browser.eval(page, "document.querySelectorAll('#examples mark').length") == 4  # highlights
        assert browser.eval(page, "document.querySelector('#examples mark').textContent").startswith("token")
        assert browser.eval(page, "document.getElementById('calibration').hidden") is True  # no such trials
        for key, answer in (("a", "A"), ("b", "B"), ("s", "skip")):
            browser.key(page, key)
            given.append((pid, answer))
            pid = browser.shown_pair(page, pid)
        # undo (key U): the last answer's row goes and its pair comes back
        browser.key(page, "u")
        back = browser.shown_pair(page, pid)
        assert back == given[-1][0] and store.read_table(RUN, SAE, "labels").num_rows == 2
        given.pop()
        browser.key(page, "b")
        given.append((back, "B"))
        pid = browser.shown_pair(page, back)
        # undo (the button), then answer again
        browser.eval(page, "document.getElementById('undo').click()")
        back = browser.shown_pair(page, pid)
        assert back == given.pop()[0]
        browser.key(page, "s")
        given.append((back, "skip"))
        pid = browser.shown_pair(page, back)
        browser.call("Page.reload", {}, page)  # a reload shows the same next pair
        assert browser.shown_pair(page, "") == pid
        browser.close(target)  # closed mid-way
        # the three answers are on disk already
        assert store.read_table(RUN, SAE, "labels").num_rows == 3
        target, page = browser.open(f"{url}/?rater=ana")
        first = browser.shown_pair(page)
        assert first not in {p for p, _ in given}  # reopened: continues with an unanswered pair
        pid = first
        for key, answer in (("b", "B"), ("a", "A")):
            browser.key(page, key)
            given.append((pid, answer))
            pid = browser.shown_pair(page, pid)
        assert "5 of 9" in browser.eval(page, "document.getElementById('progress').textContent")
    finally:
        browser.quit()
    rows = store.read_table(RUN, SAE, "labels").to_pylist()
    assert [(r["pair_id"], r["answer"]) for r in rows] == given  # exactly the answered rows, in order
    by_id = {p.pair_id: p for p in book.pairs}
    for r in rows:
        assert r["rater"] == "ana" and r["run"] == RUN and r["sae"] == SAE
        p = by_id[r["pair_id"]]
        assert (r["feature_index"], r["sample_index"], r["real_position"]) == (p.feature_index, p.sample_index,
                                                                              p.real_position)
        assert r["correct"] == (None if r["answer"] == "skip" else r["answer"] == p.real_position)
    # a second rater starts from the beginning; the page is never told which text is real
    nxt = json.loads(urllib.request.urlopen(f"{url}/api/next?rater=bo").read())
    assert nxt["done"] == 0 and nxt["pair"]["pair_id"] == book.pairs[0].pair_id
    assert "real_position" not in json.dumps(nxt) and "real_example" not in json.dumps(nxt)


def test_answers_are_checked_and_never_written_twice(served: tuple[Store, str, LabelBook]) -> None:
    store, url, book = served

    def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"{url}/api/answer", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    pid = book.pairs[0].pair_id
    assert post({"rater": "ana", "pair_id": pid, "answer": "C"})[0] == 400
    assert post({"rater": "ana", "pair_id": "nope", "answer": "A"})[0] == 400
    assert post({"rater": "ana", "pair_id": pid, "answer": "A"}) == (200, {"written": True})
    assert post({"rater": "ana", "pair_id": pid, "answer": "B"}) == (200, {"written": False})
    assert post({"rater": "bo", "pair_id": pid, "answer": "B"}) == (200, {"written": True})
    assert [(r["rater"], r["answer"]) for r in store.read_table(RUN, SAE, "labels").to_pylist()] == [("ana", "A"),
                                                                                                   ("bo", "B")]


def test_pairs_leave_out_the_control_and_cut_both_edges_alike() -> None:
    from sae_sens.label.pairs import normalise_edges

    examples, gens, held = tables()
    control = make_table("generations", [{"feature_index": f, "generator": "corpus:demo:wiki-heldout",
                                          "sample_index": s, "text": f"ld passage {f}.{s} token{f} mid"}
                                         for f in range(3) for s in range(3)])
    both = pa.concat_tables([gens, control])
    shown = {"g": (10, 5, 42), "corpus:demo:wiki-heldout": (10, 5, 42)}
    pairs = build_pairs(RUN, SAE, examples, both, held, shown, seed=42)
    assert len(pairs) == 9 and {p.generator for p in pairs} == {"g"}  # no real-vs-real pair by default
    calibration = build_pairs(RUN, SAE, examples, both, held, shown, seed=42, include_control=True)
    assert len(calibration) == 18
    assert [p.pair_id for p in pairs] != sorted(p.pair_id for p in pairs) or len(set(
        p.feature_index for p in pairs[:3])) > 1  # seeded shuffle mixes features
    assert normalise_edges("ed the cat sat<|im_end|>") == "the cat"
    for p in pairs:  # both sides went through the same cut: no special token, no first or last fragment
        assert "<|" not in p.text_a + p.text_b
        assert p.text == normalise_edges(f"generated {p.feature_index}.{p.sample_index} with token{p.feature_index}")
