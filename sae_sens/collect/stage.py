"""The collect stage: the pass and the selection wired to the store (freshness, manifests,
checkpoints), several SAEs of one model and hook sharing one pass."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..corpus import CorpusSource, Windows, load_windows, resolve_corpus
from ..model import HookedLM
from ..progress import NULL_PROGRESS, ProgressSink
from ..sae import Sae
from ..stages import (
    ModelOptions,
    StageOutcome,
    model_inputs,
    model_key,
    model_options,
    open_model,
    open_sae,
    record_sae_info,
    run_stage,
    table_inputs,
)
from ..store import Store, now_iso
from .config import PASS_STAGE, SELECT_STAGE, CollectConfig
from .examples import _counted_tokens, build_examples, features_table, select_features
from .passes import collect_pass_many


def run_collect(
    store: Store,
    run: str,
    sae_name: str,
    cfg: CollectConfig,
    opts: ModelOptions,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> StageOutcome:
    """The pass (``collect:pass``: ``latents`` + ``candidates``, skipped when fresh) then the
    selection (``collect``: ``features`` + ``examples``). A new selection reuses the pass."""
    return run_collect_many(store, run, [sae_name], cfg, opts, force=force, progress=progress)[0]


@dataclass
class _Target:
    """One SAE of a collect call, with what its pass stage is keyed on."""

    name: str
    sae: Sae
    inputs: dict[str, str]
    checkpoint: Path


def run_collect_many(
    store: Store,
    run: str,
    sae_names: Sequence[str],
    cfg: CollectConfig,
    opts: ModelOptions,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> list[StageOutcome]:
    """``run_collect`` for each SAE (outcomes in the same order, manifests alike), but SAEs that read
    the same model at the same hook share one pass: the model runs over the corpus once for all of
    them whose pass is not fresh. Groups run one after the other, so one model is in memory at a time.
    """
    source = resolve_corpus(cfg.corpus, split=cfg.split, text_column=cfg.text_column)
    names = list(sae_names)
    saes = {name: open_sae(name, opts, progress) for name in dict.fromkeys(names)}
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(model_key(saes[name], opts), []).append(i)
    outcomes: dict[int, StageOutcome] = {}
    for positions in groups.values():
        group = list(dict.fromkeys(names[i] for i in positions))
        targets: dict[str, _Target] = {}
        for name in group:
            sae = saes[name]
            lm = open_model(sae, opts, progress)  # equal model keys: the same cached HookedLM for the whole group
            record_sae_info(store, run, name, sae)
            targets[name] = _Target(name, sae, {**model_inputs(sae, lm), "corpus": source.fingerprint},
                                    store.checkpoint_dir(run, name, PASS_STAGE) / "state.pt")
        windows = _lazy_windows(store, source, lm, cfg, progress)
        stale = [t for t in targets.values()
                 if force or not store.is_fresh(run, t.name, PASS_STAGE, cfg.pass_config(), t.inputs)]
        started = now_iso()
        if len(stale) > 1:
            progress.log(f"collect: one pass over the corpus for {', '.join(t.name for t in stale)}")
        shared = _pass_tables(lm, stale, windows(), cfg, opts, progress) if stale else {}
        for i in positions:
            outcomes[i] = _collect_one(store, run, targets[names[i]], lm, windows, source, cfg, opts,
                                       shared.pop(names[i], None), started, force=force, progress=progress)
    return [outcomes[i] for i in range(len(names))]


def _lazy_windows(store: Store, source: CorpusSource, lm: HookedLM, cfg: CollectConfig,
                  progress: ProgressSink) -> Callable[[], Windows]:
    """The corpus windows in ``lm``'s tokens, loaded on first use: fresh stages never need them."""
    return functools.cache(lambda: load_windows(
        source, lm.tokenizer, bos_id=lm.bos_id, total_tokens=cfg.total_tokens, context_size=cfg.context_size,
        cache_dir=store.cache_dir, progress=progress))


def _pass_tables(lm: HookedLM, targets: Sequence[_Target], windows: Windows, cfg: CollectConfig,
                 opts: ModelOptions, progress: ProgressSink) -> dict[str, dict[str, pa.Table]]:
    """One shared pass for ``targets``: each SAE's ``collect:pass`` tables, by SAE name."""
    results = collect_pass_many(lm, [t.sae for t in targets], windows, cfg, progress, batch_size=opts.batch_size,
                                checkpoints=[t.checkpoint for t in targets],
                                checkpoint_every_s=opts.checkpoint_every if opts.checkpoint_every is not None else 120.0)
    return {t.name: {"latents": r.latents_table(), "candidates": r.candidates_table()}
            for t, r in zip(targets, results, strict=True)}


def _collect_one(
    store: Store,
    run: str,
    target: _Target,
    lm: HookedLM,
    windows: Callable[[], Windows],
    source: CorpusSource,
    cfg: CollectConfig,
    opts: ModelOptions,
    pass_tables: dict[str, pa.Table] | None,
    pass_started: str,
    *,
    force: bool,
    progress: ProgressSink,
) -> StageOutcome:
    """Record one SAE's pass (``pass_tables`` when the shared pass made them) and run its selection."""
    name, sae = target.name, target.sae

    def do_pass() -> dict[str, pa.Table]:
        if pass_tables is not None:
            return pass_tables
        # Only when the shared pass did not cover this SAE, e.g. the same SAE listed twice with force.
        return _pass_tables(lm, [target], windows(), cfg, opts, progress)[name]

    pass_outcome = run_stage(store, run, name, PASS_STAGE, config=cfg.pass_config(), inputs=target.inputs,
                             compute=do_pass, force=force, progress=progress,
                             started_at=pass_started if pass_tables is not None else None,
                             extra=lambda: {"corpus": source.describe(), "windows": len(windows()),
                                            "batch_size": opts.batch_size, **_model_extra(opts)})
    target.checkpoint.unlink(missing_ok=True)
    sel_inputs = {**target.inputs, **table_inputs(store, run, name, ["latents", "candidates"])}
    cfg = _grown(store, run, target, cfg, progress)
    summary: dict[str, Any] = {}

    def do_select() -> dict[str, pa.Table]:
        latents = store.read_table(run, name, "latents")
        candidates = store.read_table(run, name, "candidates")
        selected = select_features(latents, cfg, progress)
        features = features_table(latents, selected, cfg)
        examples = build_examples(lm, sae, windows(), candidates, latents, selected, cfg,
                                  batch_size=opts.batch_size, progress=progress)
        summary.update(n_latents=latents.num_rows, n_alive=int(np.sum(features["alive"].to_numpy())),
                       n_selected=len(selected), n_examples=examples.num_rows,
                       counted_tokens=_counted_tokens(latents), alive_rule=cfg.alive_rule, **_model_extra(opts))
        return {"features": features, "examples": examples}

    outcome = run_stage(store, run, name, SELECT_STAGE, config=cfg.select_config(), inputs=sel_inputs,
                        compute=do_select, force=force, progress=progress, extra=lambda: dict(summary))
    outcome.extra = {**outcome.extra, "pass_skipped": pass_outcome.skipped}
    return outcome


def _model_extra(opts: ModelOptions) -> dict[str, Any]:
    flags = model_options(opts)
    return {"model_options": flags} if flags else {}


def _previous_selection(store: Store, run: str, target: _Target, progress: ProgressSink) -> list[int]:
    """The features the run × SAE already selected, when they still name the same latents (same SAE
    weights, model and hook); [] when there is none or its tables cannot be read."""
    rec = store.manifest(run, target.name).stage(SELECT_STAGE)
    if rec is None or not store.has_table(run, target.name, "features"):
        return []
    same = all(rec.inputs.get(k) == v for k, v in target.inputs.items() if k != "corpus")
    if not same:
        progress.log(f"collect: {target.name} changed since its last selection: a new selection")
        return []
    if store.table_problem(run, target.name, "features"):
        progress.log(f"collect: {target.name}'s features table is damaged: its selection cannot be kept")
        return []
    features = store.read_table(run, target.name, "features")
    ids = features["feature_index"].to_numpy(zero_copy_only=False)
    chosen = features["selected"].to_numpy(zero_copy_only=False).astype(bool)
    return [int(i) for i in ids[chosen]]


def _grown(store: Store, run: str, target: _Target, cfg: CollectConfig, progress: ProgressSink) -> CollectConfig:
    """The configuration whose selection is the run's earlier one plus what ``cfg`` asks for.

    A selection grows: ``--feature-ids 26`` on a collected run adds feature 26 and keeps every feature
    selected before, with the same examples (they are drawn per feature). Only ``cfg.replace`` starts
    over, and it names what it drops. When nothing is added the request stands as given, so a rerun of
    the first command is fresh; otherwise the union is recorded as explicit ``feature_ids``.
    """
    before = _previous_selection(store, run, target, progress)
    if not before:
        return cfg
    latents = store.read_table(run, target.name, "latents")
    requested = select_features(latents, cfg)  # dead ones are logged below, once, for the final list
    if cfg.replace:
        dropped = sorted(set(before) - set(requested))
        if dropped:
            progress.log(f"collect: --replace drops features {_ids(dropped)} of {target.name} and their examples")
        return cfg
    union = sorted(set(before) | set(requested))
    if union == sorted(requested):
        return cfg
    added = sorted(set(requested) - set(before))
    if added:
        progress.log(f"collect: adds features {_ids(added)} to the {len(before)} already selected for "
                     f"{target.name} (--replace starts a new selection)")
    return dataclasses.replace(cfg, features=None, feature_ids=tuple(union))


def _ids(ids: Sequence[int], limit: int = 12) -> str:
    return ", ".join(map(str, ids[:limit])) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")
