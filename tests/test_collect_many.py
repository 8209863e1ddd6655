"""Several SAEs in one collect: one model pass per model and hook, results as if each ran alone.

Real tiny models and SAEs; the forward passes are counted through ``HookedLM.hidden``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sae_sens.cli import main
from sae_sens.collect import (
    CollectConfig,
    PassResult,
    collect_pass,
    collect_pass_many,
    run_collect,
    run_collect_many,
)
from sae_sens.corpus import load_windows, resolve_corpus
from sae_sens.model import HookedLM, load_model
from sae_sens.progress import NullProgress
from sae_sens.stages import ModelOptions, open_model, open_sae
from sae_sens.store import Store
from tests.support.testing import build_tiny_model, random_sae, tiny_corpus

CTX = 48
TOKENS = 96 * CTX
BATCH = 16
RUN = "r"
OPTS = ModelOptions(device="cpu", dtype="float32", batch_size=BATCH)
TABLES = ("latents", "candidates", "features", "examples")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two tiny models; three SAEs at layer 1 of model A, one at layer 0 of A, one at layer 1 of B."""
    root = tmp_path_factory.mktemp("collect_many")
    docs = tiny_corpus(300, seed=5)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    saes: dict[str, str] = {}
    for model_name, seed in (("a", 0), ("b", 1)):
        model_dir = build_tiny_model(root / model_name, texts=docs, hidden=64, layers=2, seed=seed)
        for layer in (0, 1):
            lm = load_model(str(model_dir), f"blocks.{layer}.hook_resid_post", device="cpu", dtype="float32")
            ids, mask = lm.pad([s for s, _ in lm.encode_texts(docs[:60], 128)])
            acts = lm.hidden(ids, mask)[lm.count_mask(ids, mask)]
            archs = {("a", 1): ("relu", "topk", "gated"), ("a", 0): ("jumprelu",), ("b", 1): ("relu",)}
            for i, arch in enumerate(archs.get((model_name, layer), ())):
                key = f"{model_name}{layer}_{arch}"
                saes[key] = str(random_sae(root / key, arch, d_in=64, d_sae=96 + 32 * i, acts=acts, fire=0.04,
                                           layer=layer, lm_name=str(model_dir), seed=10 + i))
    return {"corpus": corpus, "saes": saes}


def cfg_for(world: dict[str, Any]) -> CollectConfig:
    return CollectConfig(corpus=str(world["corpus"]), total_tokens=TOKENS, context_size=CTX, features=4)


@pytest.fixture(scope="module")
def reference(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Every SAE collected on its own, one ``run_collect`` (one pass) each."""
    store = Store(tmp_path_factory.mktemp("reference") / "evals")
    for sae in world["saes"].values():
        run_collect(store, RUN, sae, cfg_for(world), OPTS)
    return store


@pytest.fixture
def forward_rows(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Windows run through each model and hook (``model_id|hook``), counted at ``HookedLM.hidden``."""
    rows: Counter[str] = Counter()
    real = HookedLM.hidden

    def counting(self: HookedLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        rows[f"{self.model_id}|{self.hook.name}"] += int(input_ids.shape[0])
        return real(self, input_ids, attention_mask)

    monkeypatch.setattr(HookedLM, "hidden", counting)
    return rows


def n_windows(store: Store, sae: str) -> int:
    rec = store.manifest(RUN, sae).stage("collect:pass")
    assert rec is not None
    return int(rec.extra["windows"])


def group_key(sae: str) -> str:
    spec = open_sae(sae, OPTS).spec
    return f"{spec.model_id}|{spec.hook}"


def manifest_without_times(store: Store, sae: str) -> dict[str, Any]:
    data = json.loads(json.dumps(store.manifest(RUN, sae).data))
    for rec in data["stages"].values():
        rec.pop("started_at"), rec.pop("finished_at")
    return data


def assert_same_as_reference(store: Store, reference: Store, sae: str) -> None:
    for table in TABLES:
        assert store.table_hash(RUN, sae, table) == reference.table_hash(RUN, sae, table), table
    assert manifest_without_times(store, sae) == manifest_without_times(reference, sae)


def test_two_saes_of_one_hook_share_one_pass(world: dict[str, Any], reference: Store, tmp_path: Path,
                                             forward_rows: Counter[str]) -> None:
    store = Store(tmp_path / "evals")
    names = [world["saes"]["a1_relu"], world["saes"]["a1_topk"]]
    outcomes = run_collect_many(store, RUN, names, cfg_for(world), OPTS)
    assert [o.skipped for o in outcomes] == [False, False]
    assert [o.extra["pass_skipped"] for o in outcomes] == [False, False]
    n = n_windows(store, names[0])
    assert n == TOKENS // CTX
    # one pass over the corpus; the selections take their examples' activations from the pass
    assert dict(forward_rows) == {group_key(names[0]): n}
    for sae, outcome in zip(names, outcomes, strict=True):
        assert_same_as_reference(store, reference, sae)
        assert outcome.extra["n_selected"] == 4 and outcome.extra["n_alive"] > 4
    # the shared pass is recorded as run_collect records it: a single-SAE collect finds it fresh
    calls = sum(forward_rows.values())
    again = run_collect(store, RUN, names[1], cfg_for(world), OPTS)
    assert again.skipped and again.extra["pass_skipped"] is True
    assert sum(forward_rows.values()) == calls


def test_saes_of_other_hooks_and_models_get_their_own_pass(world: dict[str, Any], reference: Store, tmp_path: Path,
                                                           forward_rows: Counter[str]) -> None:
    store = Store(tmp_path / "evals")
    s = world["saes"]
    # interleaved models: grouping must not depend on the order the SAEs are given in
    names = [s["a1_relu"], s["b1_relu"], s["a0_jumprelu"], s["a1_gated"]]
    outcomes = run_collect_many(store, RUN, names, cfg_for(world), OPTS)
    assert [o.skipped for o in outcomes] == [False] * 4
    expected = Counter({group_key(sae): TOKENS // CTX for sae in names})  # one pass per model and hook
    assert len(expected) == 3 and forward_rows == expected
    for sae in names:
        assert_same_as_reference(store, reference, sae)


def test_rerun_is_up_to_date_and_a_new_sae_runs_alone(world: dict[str, Any], reference: Store, tmp_path: Path,
                                                      forward_rows: Counter[str]) -> None:
    store = Store(tmp_path / "evals")
    s = world["saes"]
    first = [s["a1_relu"], s["a1_topk"]]
    run_collect_many(store, RUN, first, cfg_for(world), OPTS)
    forward_rows.clear()
    again = run_collect_many(store, RUN, first, cfg_for(world), OPTS)
    assert all(o.skipped for o in again) and not forward_rows

    third = s["a1_gated"]
    more = run_collect_many(store, RUN, [*first, third], cfg_for(world), OPTS)
    assert [o.skipped for o in more] == [True, True, False]
    assert more[2].extra["pass_skipped"] is False
    assert dict(forward_rows) == {group_key(third): TOKENS // CTX}
    assert_same_as_reference(store, reference, third)

    # a new selection for all three reuses every pass: the model does not run at all
    forward_rows.clear()
    reselect = CollectConfig(corpus=str(world["corpus"]), total_tokens=TOKENS, context_size=CTX, features=2)
    outs = run_collect_many(store, RUN, [*first, third], reselect, OPTS)
    assert all(o.extra["pass_skipped"] and not o.skipped for o in outs)
    assert not forward_rows


class Interrupted(Exception):
    pass


def failing_after(real: Callable[..., torch.Tensor], n: int) -> Callable[..., torch.Tensor]:
    """``lm.hidden`` that answers ``n`` calls, then fails as a crash or Ctrl-C would."""
    calls = iter(range(n))

    def hidden(*args: Any, **kwargs: Any) -> torch.Tensor:
        if next(calls, None) is None:
            raise Interrupted
        return real(*args, **kwargs)

    return hidden


class Logs(NullProgress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def assert_same_pass(a: PassResult, b: PassResult) -> None:
    for name, value in vars(a).items():
        assert np.array_equal(value, getattr(b, name), equal_nan=isinstance(value, np.ndarray)
                              and value.dtype.kind == "f"), name


@pytest.fixture
def one_hook(world: dict[str, Any]) -> Iterator[tuple[HookedLM, list[Any], Any]]:
    saes = [open_sae(world["saes"][k], OPTS) for k in ("a1_relu", "a1_topk", "a1_gated")]
    lm = open_model(saes[0], OPTS)
    assert all(open_model(sae, OPTS) is lm for sae in saes)
    cfg = cfg_for(world)
    windows = load_windows(resolve_corpus(cfg.corpus), lm.tokenizer, bos_id=lm.bos_id, total_tokens=TOKENS,
                           context_size=CTX)
    yield lm, saes, windows


def test_shared_pass_equals_separate_passes(world: dict[str, Any], one_hook: tuple[HookedLM, list[Any], Any]) -> None:
    lm, saes, windows = one_hook
    cfg = cfg_for(world)
    calls = lm.forward_calls
    shared = collect_pass_many(lm, saes, windows, cfg, batch_size=BATCH)
    assert lm.forward_calls - calls == len(windows) // BATCH
    for sae, res in zip(saes, shared, strict=True):
        assert_same_pass(res, collect_pass(lm, sae, windows, cfg, batch_size=BATCH))


def test_interrupted_shared_pass_resumes_each_sae_from_its_checkpoint(
        world: dict[str, Any], one_hook: tuple[HookedLM, list[Any], Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lm, saes, windows = one_hook
    cfg = cfg_for(world)
    whole = collect_pass_many(lm, saes, windows, cfg, batch_size=BATCH)
    ckpts = [tmp_path / f"{i}.pt" for i in range(3)]
    # The first two SAEs stop together after 3 batches, the third alone after 5: resume points differ.
    for which, n_batches in ((slice(0, 2), 3), (slice(2, 3), 5)):
        with monkeypatch.context() as m:
            m.setattr(lm, "hidden", failing_after(lm.hidden, n_batches))
            with pytest.raises(Interrupted):
                collect_pass_many(lm, saes[which], windows, cfg, batch_size=BATCH, checkpoints=ckpts[which],
                                  checkpoint_every_s=0)
    assert all(c.exists() for c in ckpts)
    logs = Logs()
    # Interrupted again one batch in: the third SAE, not fed yet, must keep its own later checkpoint.
    with monkeypatch.context() as m:
        m.setattr(lm, "hidden", failing_after(lm.hidden, 1))
        with pytest.raises(Interrupted):
            collect_pass_many(lm, saes, windows, cfg, logs, batch_size=BATCH, checkpoints=ckpts, checkpoint_every_s=0)
    assert sum("at window 48 " in line for line in logs.lines) == 2
    assert sum("at window 80 " in line for line in logs.lines) == 1
    calls = lm.forward_calls
    logs = Logs()
    resumed = collect_pass_many(lm, saes, windows, cfg, logs, batch_size=BATCH, checkpoints=ckpts,
                                checkpoint_every_s=0)
    # the loop starts at the earliest resume point; the third SAE skips the batches its checkpoint holds
    assert lm.forward_calls - calls == len(windows) // BATCH - 4
    assert sum("at window 64 " in line for line in logs.lines) == 2
    assert sum("at window 80 " in line for line in logs.lines) == 1
    for a, b in zip(whole, resumed, strict=True):
        assert_same_pass(a, b)


def test_pipeline_collects_saes_of_one_hook_in_one_pass(world: dict[str, Any], tmp_path: Path,
                                                        forward_rows: Counter[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sae_sens.generate
    import sae_sens.score
    from sae_sens.pipeline import run_pipeline

    # only collect is under test here: the later stages are stubbed out
    monkeypatch.setattr(sae_sens.generate, "run_generate_many", lambda store, run, saes, *a, **k: [None] * len(saes))
    monkeypatch.setattr(sae_sens.score, "run_score", lambda *a, **k: None)
    store = Store(tmp_path / "evals")
    names = [world["saes"]["a1_relu"], world["saes"]["a1_topk"]]
    results = run_pipeline(store, RUN, names, cfg_for(world), None, None, OPTS)  # type: ignore[arg-type]
    assert [r.collect.skipped for r in results] == [False, False]
    assert sum(forward_rows.values()) == TOKENS // CTX


def pass_column(out: str) -> list[str]:
    """The last column ("pass") of each row of the collect table (TSV: the output is not a terminal)."""
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert rows and rows[0][-1] == "pass", out
    return [r[-1] for r in rows[1:]]


def test_cli_collect_several_saes_runs_one_pass(world: dict[str, Any], reference: Store, tmp_path: Path,
                                                forward_rows: Counter[str], capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "evals"
    names = [world["saes"]["a1_relu"], world["saes"]["a1_topk"]]
    args = ["collect", *(x for s in names for x in ("--sae", s)), "--store", str(store), "--run", RUN,
            "--corpus", str(world["corpus"]), "--total-tokens", str(TOKENS), "--context-size", str(CTX),
            "--features", "4", "--device", "cpu", "--dtype", "float32", "--batch-size", str(BATCH)]
    main(args)
    assert pass_column(capsys.readouterr().out) == ["ran", "ran"]
    st = Store(store)
    assert sum(forward_rows.values()) == TOKENS // CTX
    for sae in names:
        assert_same_as_reference(st, reference, sae)
    forward_rows.clear()
    main(args)
    assert pass_column(capsys.readouterr().out) == ["up to date", "up to date"] and not forward_rows
