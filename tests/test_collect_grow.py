"""A selection grows: the command `show` suggests for a missing feature, copied verbatim, adds it to
the run's selection, keeps every earlier feature's examples and reuses the pass; only --replace
starts over, and it says what it drops."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from sae_sens.store import Store
from tests.support.cli import CliRunner
from tests.support.testing import TinyWorld

pytestmark = pytest.mark.slow  # three real collects on the tiny model


def _examples(store: Path, run: str) -> dict[int, list[dict[str, Any]]]:
    rows = pq.read_table(next(store.glob(f"{run}/*/examples.parquet"))).to_pylist()
    out: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["feature_index"], r["example_index"])):
        out.setdefault(r["feature_index"], []).append(r)
    return out


def test_shows_hint_adds_the_feature_keeps_the_rest_and_reuses_the_pass(
        tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tmp_path / "first"
    sae = str(tiny_world.sae)
    cli.ok("collect", "--store", str(first), "--run", "r", "--sae", sae, "--model", str(tiny_world.model),
           "--device", "cpu", "--corpus", str(tiny_world.corpus), "--total-tokens", "3000",
           "--context-size", "48", "--feature-ids", "0,1", "--n-top-ex-for-generation", "4")
    before = _examples(first, "r")
    assert sorted(before) == [0, 1]
    store = tmp_path / "copy"
    shutil.copytree(first, store)
    (name,) = [s for _, s in Store(store).iter_run_saes()]
    pass_record = Store(store).manifest("r", name).stage("collect:pass")

    code, _, err = cli("show", "--store", str(store), "--run", "r", "--sae", name, "2")
    assert code != 0
    hint = re.search(r"`(sae-sens collect [^`]+)`", err)
    assert hint, err
    words = shlex.split(hint.group(1))
    assert "--total-tokens" in words and "--context-size" in words and "--model" in words  # the pass's own settings

    # the pass must be reused: the model never runs over the corpus again
    def no_pass(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("collect ran a new pass over the corpus")

    monkeypatch.setattr("sae_sens.collect.stage.collect_pass_many", no_pass)
    out = cli.ok(*words[1:])
    assert "adds features 2" in out.err + out.out
    after = _examples(store, "r")
    assert sorted(after) == [0, 1, 2]
    assert all(after[f] == before[f] for f in (0, 1))  # the very same examples, row for row
    manifest = Store(store).manifest("r", name)
    assert manifest.stage("collect:pass").finished_at == pass_record.finished_at
    assert manifest.stage("collect").config["feature_ids"] == [0, 1, 2]

    # the first command again is fresh: it asks for nothing the selection lacks
    grown_at = manifest.stage("collect").finished_at
    cli.ok("collect", "--store", str(store), "--run", "r", "--sae", sae, "--model", str(tiny_world.model),
           "--device", "cpu", "--corpus", str(tiny_world.corpus), "--total-tokens", "3000",
           "--context-size", "48", "--feature-ids", "0,1", "--n-top-ex-for-generation", "4")
    assert sorted(_examples(store, "r")) == [0, 1, 2]
    assert Store(store).manifest("r", name).stage("collect").finished_at == grown_at

    # starting over is explicit and says what it drops
    out = cli.ok(*words[1:], "--replace")
    assert "--replace drops features 0, 1" in out.err + out.out
    assert sorted(_examples(store, "r")) == [2]


def test_checkpoint_every_reaches_the_pass_and_is_checked(
        tiny_world: TinyWorld, tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_sens.collect.stage as stage

    seen: list[float] = []
    real = stage.collect_pass_many

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["checkpoint_every_s"])
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "collect_pass_many", recording)
    base = ["collect", "--store", str(tmp_path / "s"), "--run", "r", "--sae", str(tiny_world.sae), "--model",
            str(tiny_world.model), "--device", "cpu", "--corpus", str(tiny_world.corpus), "--total-tokens", "3000",
            "--context-size", "48", "--feature-ids", "0"]
    cli.ok(*base, "--checkpoint-every", "0.5")
    assert seen == [0.5]
    code, _, err = cli(*base, "--checkpoint-every", "0", "--force")
    assert code == 2 and "--checkpoint-every" in err and "Traceback" not in err
