"""The artifact store: atomic writes, manifests, skip-when-fresh, stale detection, --force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_sens.errors import MissingTableError, UsageError
from sae_sens.schemas import make_table
from sae_sens.stages import run_stage
from sae_sens.store import Store, sae_slug, table_digest


def _examples(n: int, offset: int = 0) -> pa.Table:
    return make_table(
        "examples",
        [{"feature_index": i + offset, "example_index": 0, "kind": "top", "max_activation": 1.0 + i,
          "text": f"a {{{{b{i}}}}} c", "token_ids": [1, 2, 3], "tokens": ["a", " b", " c"],
          "activations": [0.0, 1.0 + i, 0.0]} for i in range(n)],
    )


def test_write_adds_run_and_sae_columns_and_roundtrips(tmp_path: Path) -> None:
    store = Store(tmp_path)
    info = store.write_table("r1", "py_4k_topk_s0", "examples", _examples(3))
    t = store.read_table("r1", "py_4k_topk_s0", "examples")
    assert t.column_names[:2] == ["run", "sae"]
    assert set(t["run"].to_pylist()) == {"r1"} and set(t["sae"].to_pylist()) == {"py_4k_topk_s0"}
    assert info["rows"] == 3
    assert store.manifest("r1", "py_4k_topk_s0").tables["examples"]["hash"] == info["hash"]
    # the glob the report uses needs nothing but the files
    assert (tmp_path / "r1" / "py_4k_topk_s0" / "examples.parquet").exists()


def test_sae_names_with_slashes_get_safe_folders(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert "/" not in sae_slug("saelens:gemma-scope-2b-pt-res/layer_12/width_16k")
    store.write_table("r", "saelens:rel/id", "examples", _examples(1))
    assert store.saes("r") == ["saelens:rel/id"]  # the manifest keeps the name as given


def test_atomic_write_leaves_old_table_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path)
    store.write_table("r", "s", "examples", _examples(2))
    before = store.read_table("r", "s", "examples")

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        store.write_table("r", "s", "examples", _examples(5))
    monkeypatch.undo()
    after = store.read_table("r", "s", "examples")
    assert after.equals(before)
    leftovers = [p for p in os.listdir(store.sae_dir("r", "s")) if p.endswith(".tmp")]
    assert leftovers == []


def test_missing_table_says_which_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingTableError) as e:
        Store(tmp_path).read_table("r", "s", "generations")
    assert "sae-sens generate" in e.value.one_line()


def test_invalid_run_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        Store(tmp_path).sae_dir("../etc", "s")


def test_digest_ignores_chunking_but_not_content() -> None:
    t = _examples(4)
    rechunked = pa.concat_tables([t.slice(0, 2), t.slice(2)])
    assert table_digest(t) == table_digest(rechunked)
    assert table_digest(t) != table_digest(_examples(4, offset=1))


def test_stage_skips_when_fresh_reruns_on_change_and_force(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls: list[int] = []

    def compute() -> dict[str, pa.Table]:
        calls.append(1)
        return {"examples": _examples(2)}

    kw = dict(config={"k": 10}, inputs={"model": "m@1"}, compute=compute)
    first = run_stage(store, "r", "s", "collect", **kw)  # type: ignore[arg-type]
    assert not first.skipped and first.rows == {"examples": 2}
    second = run_stage(store, "r", "s", "collect", **kw)  # type: ignore[arg-type]
    assert second.skipped and len(calls) == 1
    run_stage(store, "r", "s", "collect", **{**kw, "config": {"k": 12}})  # type: ignore[arg-type]
    assert len(calls) == 2
    run_stage(store, "r", "s", "collect", **{**kw, "config": {"k": 12}, "inputs": {"model": "m@2"}})  # type: ignore[arg-type]
    assert len(calls) == 3
    run_stage(store, "r", "s", "collect", **{**kw, "config": {"k": 12}, "inputs": {"model": "m@2"}}, force=True)  # type: ignore[arg-type]
    assert len(calls) == 4
    rec = store.manifest("r", "s").stage("collect")
    assert rec is not None and rec.config == {"k": 12} and rec.outputs["examples"]["rows"] == 2
    assert rec.started_at and rec.finished_at and "pyarrow" in rec.versions


def test_tampered_output_is_not_fresh(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls: list[int] = []

    def compute() -> dict[str, pa.Table]:
        calls.append(1)
        return {"examples": _examples(2)}

    run_stage(store, "r", "s", "collect", config={}, inputs={}, compute=compute)
    # another process rewrote the table behind the manifest's back
    pq.write_table(_examples(3), store.table_path("r", "s", "examples"))
    m = store.manifest("r", "s")
    m.tables.pop("examples")
    m.save()
    run_stage(store, "r", "s", "collect", config={}, inputs={}, compute=compute)
    assert len(calls) == 2


def test_status_shows_downstream_stale_when_upstream_output_changes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    run_stage(store, "r", "s", "collect", config={}, inputs={}, compute=lambda: {"examples": _examples(2)})
    gen_inputs = {"table:examples": store.table_hash("r", "s", "examples") or ""}
    gens = make_table("generations", [{"feature_index": 0, "generator": "g", "sample_index": 0, "text": "x"}])
    run_stage(store, "r", "s", "generate:g", config={}, inputs=gen_inputs, compute=lambda: {"generations": gens},
              outputs={"generations": ("generator", "g")})
    assert store.status("r", "s") == {"collect": "done", "generate:g": "done", "score": "missing"}
    run_stage(store, "r", "s", "collect", config={"k": 1}, inputs={}, compute=lambda: {"examples": _examples(3)})
    status = store.status("r", "s")
    assert status["collect"] == "done" and status["generate:g"] == "stale"
    # the manifest is plain JSON a user can read
    data = json.loads((store.sae_dir("r", "s") / "manifest.json").read_text())
    assert set(data["stages"]) == {"collect", "generate:g"}


def test_row_filtered_outputs_let_generators_coexist(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def gens(label: str, n: int) -> pa.Table:
        rows = [{"feature_index": i, "generator": label, "sample_index": 0, "text": f"{label}{i}"} for i in range(n)]
        return make_table("generations", rows)

    run_stage(store, "r", "s", "generate:a", config={}, inputs={}, compute=lambda: {"generations": gens("a", 2)},
              outputs={"generations": ("generator", "a")})
    both = pa.concat_tables([gens("a", 2), gens("b", 3)])
    run_stage(store, "r", "s", "generate:b", config={}, inputs={}, compute=lambda: {"generations": both},
              outputs={"generations": ("generator", "b")})
    # a's rows are unchanged, so adding b does not make a stale or unfresh
    assert store.is_fresh("r", "s", "generate:a", {}, {})
    assert store.status("r", "s")["generate:a"] == "done"
