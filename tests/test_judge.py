"""The judge stage against the real OpenAI-compatible server in tests/support/openai_server.py, on a store
made by the real collect, generate and score stages (tiny real model, token-detector SAE): scripted
answers give rates we compute exactly; pair order is seeded and recorded; no held-out example was
ever shown to the generator; cache, resume after an interrupted run, and --dry-run."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pytest

from sae_sens.collect import CollectConfig, run_collect
from sae_sens.errors import PermanentGenerationError, UsageError
from sae_sens.generate import GenerateConfig, run_generate
from sae_sens.judge import JudgeConfig, build_items, held_out_examples, run_judge
from sae_sens.judge.prompts import parse_direct, parse_pair, unmarked
from sae_sens.report import connect
from sae_sens.report.validity import judge_summary
from sae_sens.schemas import make_table
from sae_sens.score import ScoreConfig, run_score
from sae_sens.stages import ModelOptions
from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.openai_server import ChatServer
from tests.support.testing import TinyWorld

RUN = "j"
GEN = "openai:gen-model"
JUDGE = "openai:judge-model"


def scripted_judge(messages: list[dict[str, Any]]) -> str:
    """Always 'A' in pairs; direct: yes when the text has 'river', 'maybe' (unparsable) with 'comet', else no."""
    user = messages[-1]["content"]
    if "Text A:" in user:
        return "A"
    text = user.split("New text:\n", 1)[1].split("\n\nDoes the new text", 1)[0]
    if "river" in text:
        return "yes\nit mentions a river like the examples"
    if "comet" in text:
        return "maybe"
    return "no - nothing like the examples"


@pytest.fixture(scope="module")
def world(tiny_world: TinyWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny world collected, generated for (a real server) and scored in a store of this module's."""
    root = tmp_path_factory.mktemp("judge")
    model, sae = tiny_world.model, tiny_world.sae
    store = Store(root / "store")
    opts = ModelOptions(model=str(model), device="cpu")
    run_collect(store, RUN, str(sae), CollectConfig(corpus=str(tiny_world.corpus), total_tokens=4000, context_size=48,
                                                    features=None, feature_ids=(0, 1, 2)), opts)
    with ChatServer(models=("gen-model",), n_samples=6) as server:
        run_generate(store, RUN, str(sae), GenerateConfig(generator=GEN, base_url=server.base_url,
                                                          samples_per_feature=5))
    run_score(store, RUN, str(sae), ScoreConfig(), opts)
    return {"root": root, "store": store, "sae": str(sae), "opts": opts, "model": str(model)}


def _judge(world: dict[str, Any], server: ChatServer, **kw: Any) -> Any:
    cfg = JudgeConfig(judge=JUDGE, base_url=server.base_url, max_workers=kw.pop("max_workers", 4), **kw)
    return run_judge(world["store"], RUN, world["sae"], cfg, world["opts"], force=True)


def test_held_out_examples_were_drawn_but_never_shown(world: dict[str, Any]) -> None:
    store, sae = world["store"], world["sae"]
    examples = store.read_table(RUN, sae, "examples").to_pylist()
    held = held_out_examples(store, RUN, sae, world["opts"]).to_pylist()
    queries = store.read_table(RUN, sae, "queries").to_pylist()
    prompts = " ".join(unmarked(q["user_prompt"]) for q in queries)
    for f in (0, 1, 2):
        mine = [h for h in held if h["feature_index"] == f]
        # 12 + 7 drawn, 10 + 5 shown: the difference is held out (fewer only if the corpus had fewer peaks)
        n_candidates = sum(1 for c in store.read_table(RUN, sae, "candidates").to_pylist() if c["feature_index"] == f)
        assert len(mine) == n_candidates - sum(e["feature_index"] == f for e in examples) > 0
    shown = {(e["feature_index"], e["window_index"], e["context_position"]) for e in examples}
    for h in held:
        assert (h["feature_index"], h["window_index"], h["position"]) not in shown
        assert "{{" in h["text"]  # marked as collect marks examples
        assert unmarked(h["text"]) not in prompts  # the generator never saw it


def test_judge_rates_order_and_prompts(world: dict[str, Any]) -> None:
    store, sae = world["store"], world["sae"]
    with ChatServer(models=("judge-model",), respond=scripted_judge) as server:
        out = _judge(world, server)
        bodies = list(server.bodies)
    rows = store.read_table(RUN, sae, "judgments").to_pylist()
    gens = [g for g in store.read_table(RUN, sae, "generations").to_pylist() if g["text"].strip()]
    pairs = [r for r in rows if r["task"] == "pair"]
    direct = [r for r in rows if r["task"] == "direct"]
    assert len(pairs) == len(direct) == len(gens) == 15
    assert out.extra["n_pairs"] == 15 and not out.extra["features_without_held_out"]

    # the order is recorded, both orders occur, and each prompt shows the texts in the recorded order
    assert {p["real_position"] for p in pairs} == {"A", "B"}
    sent = [b["messages"][-1]["content"] for b in bodies]
    for p in pairs:
        a, b = (p["real_text"], p["text"]) if p["real_position"] == "A" else (p["text"], p["real_text"])
        assert sum(f"Text A:\n{a}\n\nText B:\n{b}\n" in s for s in sent) == 1
        assert p["correct"] == (p["real_position"] == "A") and p["answer"] == "A"

    # the judge saw exactly the examples the generator saw
    gen_prompt = {q["feature_index"]: q["user_prompt"] for q in store.read_table(RUN, sae, "queries").to_pylist()}
    for f in (0, 1, 2):
        shown = {e["text"] for e in store.read_table(RUN, sae, "examples").to_pylist() if e["feature_index"] == f}
        judge_prompts = [s for s in sent if all(t in s for t in shown)]
        assert len(judge_prompts) == 10 and all(t in gen_prompt[f] for t in shown)

    # direct verdicts parsed as scripted
    for d in direct:
        expected = True if "river" in d["text"] else None if "comet" in d["text"] else False
        assert d["valid"] is expected
        assert d["status"] == ("unparsed" if expected is None else "ok")
    assert any(d["valid"] for d in direct) and any(d["valid"] is False for d in direct)

    # the report's rates, computed here from the rows and the scores
    scores = {(s["generator"], s["feature_index"], s["sample_index"]): s["active"]
              for s in store.read_table(RUN, sae, "scores").to_pylist() if s["source"] == "generated"}

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    per: dict[str, list[float]] = {"indist": [], "valid_share": [], "sens_valid": [], "sens": []}
    for f in (0, 1, 2):
        fp = [p for p in pairs if p["feature_index"] == f]
        per["indist"].append(sum(p["real_position"] == "B" for p in fp) / len(fp))
        fd = [d for d in direct if d["feature_index"] == f]
        parsed = [d for d in fd if d["valid"] is not None]
        if parsed:
            per["valid_share"].append(sum(d["valid"] for d in parsed) / len(parsed))
        valid = [scores[(GEN, f, d["sample_index"])] for d in fd if d["valid"]]
        if valid:
            per["sens_valid"].append(sum(valid) / len(valid))
        per["sens"].append(sum(scores[(GEN, f, d["sample_index"])] for d in fd) / len(fd))
    (summary,) = judge_summary(connect(store)).to_pylist()
    assert summary["judge"] == JUDGE and summary["generator"] == GEN and summary["pairs"] == 15
    assert summary["indistinguishable"] == pytest.approx(mean(per["indist"]))
    assert summary["valid_share"] == pytest.approx(mean(per["valid_share"]))
    assert summary["sensitivity_valid"] == pytest.approx(mean(per["sens_valid"]))
    assert summary["sensitivity"] == pytest.approx(mean(per["sens"]))
    assert summary["indistinguishable_low"] <= summary["indistinguishable"] <= summary["indistinguishable_high"]



def test_report_validity_cli(world: dict[str, Any], cli: CliRunner) -> None:
    store = world["store"]
    with ChatServer(models=("judge-model",), respond=scripted_judge) as server:
        _judge(world, server)
    out = cli.ok("report", "--store", str(store.root), "--validity", "--format", "csv").out
    (summary,) = judge_summary(connect(store)).to_pylist()
    header = next(line for line in out.splitlines() if line.startswith("run,sae,generator,judge,"))
    row = next(line for line in out.splitlines() if line.startswith(f"{RUN},") and JUDGE in line)
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(values["indistinguishable"]) == pytest.approx(summary["indistinguishable"])
    assert float(values["valid_share"]) == pytest.approx(summary["valid_share"])
    assert "sens 10%" in out  # the thresholds table comes with --validity


def test_pair_order_is_seeded(world: dict[str, Any]) -> None:
    store, sae = world["store"], world["sae"]
    orders = []
    for seed in (42, 42, 7):
        with ChatServer(models=("judge-model",), respond=scripted_judge) as server:
            _judge(world, server, seed=seed, tasks=("pair",))
        orders.append([(p["feature_index"], p["sample_index"], p["real_position"], p["real_example"])
                       for p in store.read_table(RUN, sae, "judgments").to_pylist()])
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


def test_cache_resume_and_dry_run(world: dict[str, Any], cli: CliRunner) -> None:
    store, sae = world["store"], world["sae"]
    # nothing of this config is cached yet (temperature 0.5); the server breaks (bad key) after 7 answers
    cfg = dict(tasks=("direct",), max_workers=1, temperature=0.5)
    broken = {"on": True}
    bad_key = (401, {}, {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}})
    with ChatServer(models=("judge-model",), respond=scripted_judge,
                    fail=lambda n, _b: bad_key if broken["on"] and n >= 7 else None) as server:
        with pytest.raises(PermanentGenerationError):
            _judge(world, server, **cfg)
        journal = store.checkpoint_dir(RUN, sae, f"judge:{JUDGE}") / "answers.jsonl"
        assert len(journal.read_text().splitlines()) == 7
        broken["on"] = False
        server.reset()
        out = cli.ok("judge", "--store", str(store.root), "--run", RUN, "--sae", sae, "--judge", JUDGE,
                     "--base-url", server.base_url, "--task", "direct", "--temperature", "0.5", "--dry-run",
                     "--model", world["model"], "--device", "cpu").out
        assert server.count() == 0  # nothing sent
        assert re.search(r"\b8 requests\b", out), out
        resumed = _judge(world, server, **cfg)  # only the 8 not journaled are sent
        assert server.count(200) == 8 and resumed.extra["n_resumed"] == 7
        server.reset()
        _judge(world, server, **cfg)  # everything is cached now: nothing is paid twice
        assert server.count() == 0
    assert not journal.exists()
    rows = store.read_table(RUN, sae, "judgments").to_pylist()
    assert len(rows) == 15 and all(r["task"] == "direct" for r in rows)


def test_no_held_out_examples_means_no_pairs() -> None:
    """Every candidate shown (or imported examples): direct checks only, and the features are named."""
    examples = make_table("examples", [{"feature_index": 3, "example_index": i, "kind": "top", "text": f"a {{{{cat}}}} {i}"}
                                       for i in range(3)])
    gens = make_table("generations", [{"feature_index": 3, "generator": "g", "sample_index": i, "text": f"t{i}"}
                                      for i in range(4)])
    held = pa.table({"feature_index": pa.array([], pa.int64()), "pool": pa.array([], pa.string()),
                     "rank": pa.array([], pa.int32()), "text": pa.array([], pa.string())})
    items, notes = build_items(examples, gens, held, JudgeConfig(judge="openai:x", base_url="http://127.0.0.1:1/v1"),
                               {"g": (10, 5, 42)})
    assert [i.task for i in items] == ["direct"] * 4
    assert notes["features_without_held_out"] == [3]


def test_max_texts_judges_the_first_texts_of_each_feature() -> None:
    """--max-texts keeps the lowest sample indices per generator and feature; blank texts do not count."""
    examples = make_table("examples", [{"feature_index": f, "example_index": i, "kind": "top", "text": f"a {{{{cat}}}} {i}"}
                                       for f in (3, 4) for i in range(3)])
    gens = make_table("generations", [{"feature_index": f, "generator": g, "sample_index": i,
                                       "text": "" if i == 0 else f"t{i}"}
                                      for g in ("g", "h") for f in (3, 4) for i in range(5)])
    held = pa.table({"feature_index": pa.array([], pa.int64()), "pool": pa.array([], pa.string()),
                     "rank": pa.array([], pa.int32()), "text": pa.array([], pa.string())})
    cfg = JudgeConfig(judge="openai:x", base_url="http://127.0.0.1:1/v1", tasks=("direct",), max_texts=2)
    items, _ = build_items(examples, gens, held, cfg, {"g": (10, 5, 42), "h": (10, 5, 42)})
    assert sorted((i.generator, i.feature_index, i.sample_index) for i in items) == [
        (g, f, s) for g in ("g", "h") for f in (3, 4) for s in (1, 2)]
    everything, _ = build_items(examples, gens, held, JudgeConfig(judge="openai:x", base_url="http://127.0.0.1:1/v1",
                                                                   tasks=("direct",)), {"g": (10, 5, 42), "h": (10, 5, 42)})
    assert len(everything) == 16
    with pytest.raises(UsageError):
        JudgeConfig(judge="openai:x", max_texts=0)


def test_answer_parsing() -> None:
    assert [parse_pair(t) for t in ("A", "b.", "(B)", "Answer: a", "Text B is real", "A real example is text B",
                                    "The text is the real example, A.", "It is B", "A or B?", "neither")] == [
        "A", "B", "B", "A", "B", "B", "A", "B", None, None]
    assert parse_direct("Yes, the year is marked") == (True, "the year is marked")
    assert parse_direct("no\nno digits at all") == (False, "no digits at all")
    assert parse_direct("unsure") == (None, None)


def test_label_page_gets_the_judges_pairs(world: dict[str, Any]) -> None:
    from sae_sens.label import label_pairs
    from sae_sens.label.pairs import normalise_edges

    store, sae = world["store"], world["sae"]
    with ChatServer(models=("judge-model",), respond=scripted_judge) as server:
        _judge(world, server, tasks=("pair",), seed=5)
    # the same pairs, sides and texts, the texts given the human page's edge cut
    judged = {(r["generator"], r["feature_index"], r["sample_index"], r["real_example"], r["real_position"],
               normalise_edges(r["text"]), normalise_edges(r["real_text"]))
              for r in store.read_table(RUN, sae, "judgments").to_pylist()}
    pairs = label_pairs(store, RUN, sae, seed=5, opts=world["opts"])
    assert {(p.generator, p.feature_index, p.sample_index, p.real_example, p.real_position, p.text, p.real_text)
            for p in pairs} == judged
    assert {p.text_a if p.real_position == "A" else p.text_b for p in pairs} == {p.real_text for p in pairs}


def test_max_cost_stops_before_sending(world: dict[str, Any]) -> None:
    from sae_sens.errors import BudgetExceededError

    with ChatServer(models=("judge-model",), respond=scripted_judge) as server:
        with pytest.raises(BudgetExceededError, match="--max-cost"):
            _judge(world, server, tasks=("direct",), price_in=1000.0, price_out=1000.0, max_cost=0.05, seed=11)
        sent = server.count()
    # 1000 USD per 1M tokens: each answer may cost up to 128 completion tokens = $0.128 > $0.05
    assert sent == 0


def test_judging_one_generator_keeps_the_others(world: dict[str, Any]) -> None:
    store, sae = world["store"], world["sae"]
    gens = store.read_table(RUN, sae, "generations")
    other = gens.filter(pa.compute.equal(gens["generator"], GEN)).to_pylist()
    for r in other:
        r.update(generator="table:other", text="other " + r["text"])
    store.write_table(RUN, sae, "generations", make_table("generations", gens.to_pylist() + other))
    try:
        with ChatServer(models=("judge-model",), respond=scripted_judge) as server:
            _judge(world, server, tasks=("direct",))
            _judge(world, server, tasks=("direct",), generator="table:other")
        rows = store.read_table(RUN, sae, "judgments").to_pylist()
        assert {r["generator"] for r in rows} == {GEN, "table:other"}
        assert len(rows) == 2 * len(other)
    finally:
        store.write_table(RUN, sae, "generations", gens.drop_columns(["run", "sae"]))


def test_the_judge_through_the_batch_api_equals_the_synchronous_judge(world: dict[str, Any]) -> None:
    from tests.support.batch_server import BatchServer

    store, sae = world["store"], world["sae"]
    with BatchServer(models=("judge-model",), respond=scripted_judge, polls_per_step=2) as server:
        cfg = JudgeConfig(judge=JUDGE, base_url=server.base_url, temperature=0.25, batch=True, batch_poll_s=0.001)
        out = run_judge(store, RUN, sae, cfg, world["opts"], force=True)
        assert out.extra["n_batches"] >= 1 and len(server.executed) == len(set(server.executed))
        batch_rows = store.read_table(RUN, sae, "judgments").to_pylist()
        # the same requests, cache keys and all: a synchronous judge of the same config sends nothing
        sync = run_judge(store, RUN, sae, JudgeConfig(judge=JUDGE, base_url=server.base_url, temperature=0.25),
                         world["opts"], force=True)
        assert sync.extra["n_cached"] == len(set(server.executed)) and sync.extra["n_requests"] == 0
    assert store.read_table(RUN, sae, "judgments").to_pylist() == batch_rows
    assert {r["answer"] for r in batch_rows if r["task"] == "pair"} == {"A"}


def test_label_exports_its_pairs_never_serves_the_control_unless_asked_and_undoes(
        world: dict[str, Any], cli: CliRunner, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import csv
    import json
    import threading
    import urllib.request

    from sae_sens.label import LabelBook, label_pairs, make_server

    store, sae = world["store"], world["sae"]
    gens = store.read_table(RUN, sae, "generations")
    control = gens.filter(pa.compute.equal(gens["generator"], GEN)).to_pylist()
    for r in control:  # real passages as the corpus control writes them
        r.update(generator="corpus:tiny", text="CONTROL passage " + r["text"])
    store.write_table(RUN, sae, "generations", make_table("generations", gens.to_pylist() + control))
    common = ["label", "--store", str(store.root), "--run", RUN, "--sae", sae, "--model", world["model"],
              "--device", "cpu", "--seed", "3"]
    try:
        res = cli.ok(*common, "--export-pairs", str(tmp_path / "pairs.csv"))
        assert "wrote" in res.err and "keep it from the raters" in res.err and res.out == ""
        rows = list(csv.DictReader(open(tmp_path / "pairs.csv", encoding="utf-8")))
        assert rows and {r["generator"] for r in rows} == {GEN} and {r["trial"] for r in rows} == {"test"}
        assert not any("CONTROL" in r["text_a"] + r["text_b"] for r in rows)
        pairs = label_pairs(store, RUN, sae, seed=3, opts=world["opts"])
        assert [r["pair_id"] for r in rows] == [p.pair_id for p in pairs]  # the served order, exactly
        for r, p in zip(rows, pairs, strict=True):
            real = r["text_a"] if r["real_position"] == "A" else r["text_b"]
            assert real == p.real_text and r["examples"].split("\n<SEP>\n") == list(p.examples)
        cli.ok(*common, "--calibration", "--export-pairs", str(tmp_path / "pairs.json"))
        cal = json.loads((tmp_path / "pairs.json").read_text())
        assert {r["trial"] for r in cal} == {"test", "calibration"}
        assert all((r["generator"] == "corpus:tiny") == (r["trial"] == "calibration") for r in cal)
        assert all(isinstance(r["examples"], list) for r in cal)
        code, _, err = cli(*common, "--export-pairs", str(tmp_path / "pairs.xlsx"))
        assert code != 0 and "--export-pairs" in err and "Traceback" not in err

        # undo over the real HTTP server: the rater's last answer goes, the pair comes back
        cal_pairs = label_pairs(store, RUN, sae, seed=3, calibration=True, opts=world["opts"])
        book = LabelBook(store, cal_pairs, 3)
        server = make_server(book, "ana")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
            with urllib.request.urlopen(req) as r:
                return json.loads(r.read())

        try:
            page = urllib.request.urlopen(url + "/").read().decode()
            assert "__CALIBRATION__" not in page and "const rater" in page
            assert "document.getElementById(\"calibration\").hidden = !true" in page  # the page says so
            first, second = cal_pairs[0].pair_id, cal_pairs[1].pair_id
            assert post("/api/answer", {"rater": "ana", "pair_id": first, "answer": "A"}) == {"written": True}
            assert post("/api/answer", {"rater": "ana", "pair_id": second, "answer": "B"}) == {"written": True}
            assert post("/api/answer", {"rater": "bo", "pair_id": first, "answer": "B"}) == {"written": True}
            assert post("/api/undo", {"rater": "ana"}) == {"undone": second}
            left = [(r["rater"], r["pair_id"]) for r in store.read_table(RUN, sae, "labels").to_pylist()]
            assert left == [("ana", first), ("bo", first)]
            nxt = json.loads(urllib.request.urlopen(url + "/api/next?rater=ana").read())
            assert nxt["pair"]["pair_id"] == second and nxt["done"] == 1
            assert post("/api/undo", {"rater": "ana"}) == {"undone": first}
            assert post("/api/undo", {"rater": "ana"}) == {"undone": None}
            assert [r["rater"] for r in store.read_table(RUN, sae, "labels").to_pylist()] == ["bo"]
        finally:
            server.shutdown()
            server.server_close()
    finally:
        store.write_table(RUN, sae, "generations", gens.drop_columns(["run", "sae"]))
        if store.has_table(RUN, sae, "labels"):
            store.table_path(RUN, sae, "labels").unlink()


def test_label_on_another_host_warns(monkeypatch: pytest.MonkeyPatch, world: dict[str, Any], cli: CliRunner) -> None:
    from http.server import ThreadingHTTPServer

    def stop(self: ThreadingHTTPServer, *a: Any) -> None:  # serve_forever as Ctrl-C ends it
        raise KeyboardInterrupt

    monkeypatch.setattr(ThreadingHTTPServer, "serve_forever", stop)
    common = ["label", "--store", str(world["store"].root), "--run", RUN, "--sae", world["sae"], "--model",
              world["model"], "--device", "cpu"]
    res = cli.ok(*common, "--host", "0.0.0.0")
    assert "warning: serving on 0.0.0.0:" in res.err and "no login" in res.err
    assert "open http://127.0.0.1:" in res.out and "every answer is saved" in res.err
    res = cli.ok(*common)
    assert "warning" not in res.err
