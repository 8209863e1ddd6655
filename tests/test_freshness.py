"""One freshness rule: staleness flows down the tables, collect is done only with its selection,
a stage refuses stale inputs, and every reader (runs, the SQL views, report notices) agrees."""

from __future__ import annotations

import shlex
from pathlib import Path

import pyarrow as pa
import pytest

from sae_sens.errors import StoreError
from sae_sens.freshness import family_state, notices, stage_command, stage_states
from sae_sens.report.views import connect, scope_notices
from sae_sens.runs import list_runs
from sae_sens.schemas import make_table
from sae_sens.stages import run_stage, table_inputs
from sae_sens.store import Store


def _examples(n: int) -> pa.Table:
    rows = [{"feature_index": i, "example_index": 0, "kind": "top", "max_activation": 1.0, "text": f"a {{{{b{i}}}}}"}
            for i in range(n)]
    return make_table("examples", rows)


def _world(tmp_path: Path) -> Store:
    """collect -> generate:g -> score, then collect reruns with a new selection."""
    store = Store(tmp_path / "evals")
    run_stage(store, "r", "s", "collect", config={"corpus": "demo:wiki-heldout", "total_tokens": 20000,
                                                  "feature_ids": [1, 2]},
              inputs={}, compute=lambda: {"examples": _examples(2)})
    gens = make_table("generations", [{"feature_index": 0, "generator": "hf:m", "sample_index": 0, "text": "x"}])
    run_stage(store, "r", "s", "generate:hf:m", config={"generator": "hf:m", "kind": "hf", "seed": 7},
              inputs=table_inputs(store, "r", "s", ["examples"]), compute=lambda: {"generations": gens},
              outputs={"generations": ("generator", "hf:m")})
    stats = make_table("feature_stats", [{"feature_index": 0}])
    run_stage(store, "r", "s", "score", config={}, inputs=table_inputs(store, "r", "s", ["generations"]),
              compute=lambda: {"feature_stats": stats})
    return store


def test_a_stage_below_a_stale_one_is_stale_everywhere(tmp_path: Path) -> None:
    store = _world(tmp_path)
    assert family_state(stage_states(store, "r", "s"), "score") == "done"
    run_stage(store, "r", "s", "collect", config={"feature_ids": [1, 2, 3]}, inputs={},
              compute=lambda: {"examples": _examples(3)})
    states = stage_states(store, "r", "s")
    # the store's own view calls score done (its input hash matches); the one rule does not
    assert store.status("r", "s")["score"] == "done"
    assert states["generate:hf:m"] == "stale" and states["score"] == "stale"
    (row,) = list_runs(store)
    assert (row.family("generate"), row.family("score"), row.family("judge")) == ("stale", "stale", "missing")
    con = connect(store)
    assert con.execute("SELECT collect, generate, score, judge FROM runs").fetchall() == [
        ("done", "stale", "stale", "missing")]
    (notice,) = scope_notices(store)
    assert notice.stage == "generate:hf:m" and notice.state == "stale"
    assert "--generator hf:m" in notice.command and "--seed 7" in notice.command


def test_a_stage_refuses_to_build_on_a_stale_table(tmp_path: Path) -> None:
    store = _world(tmp_path)
    run_stage(store, "r", "s", "collect", config={}, inputs={}, compute=lambda: {"examples": _examples(3)})
    with pytest.raises(StoreError) as e:
        table_inputs(store, "r", "s", ["generations"])
    assert "stale" in str(e.value) and "--generator hf:m" in (e.value.hint or "")


def test_collect_is_done_only_after_its_selection(tmp_path: Path) -> None:
    store = Store(tmp_path / "evals")
    lat = make_table("latents", [])
    run_stage(store, "r", "s", "collect:pass", config={}, inputs={}, compute=lambda: {"latents": lat})
    states = stage_states(store, "r", "s")
    assert family_state(states, "collect") == "incomplete"
    assert connect(store).execute("SELECT collect FROM runs").fetchall() == [("incomplete",)]
    assert [n.state for n in notices(store, [("r", "s")])] == ["incomplete"]


def test_the_rerun_command_names_store_run_corpus_and_selection(tmp_path: Path) -> None:
    store = _world(tmp_path)
    words = shlex.split(stage_command(store, "r", "s", "collect"))
    assert words[:2] == ["sae-sens", "collect"]
    for flag, value in [("--store", str(store.root)), ("--run", "r"), ("--sae", "s"),
                        ("--corpus", "demo:wiki-heldout"), ("--total-tokens", "20000"), ("--feature-ids", "1,2")]:
        assert words[words.index(flag) + 1] == value
