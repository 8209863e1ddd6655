"""What every stage shares: opening the SAE and its model once, freshness checks, manifest records.

A stage module (collect, generate, score) has a pure function (tables in, tables out) and a
``run_<stage>(store, run, sae, ...)`` wrapper that uses the helpers here to skip fresh work,
write its tables atomically and record what it did. The CLI calls only the wrappers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .errors import ConfigError, StoreError
from .progress import NULL_PROGRESS, ProgressSink, warn
from .store import Store, now_iso

if TYPE_CHECKING:  # torch is imported only by the stages that run a model
    from .model import HookedLM
    from .sae import Sae


@dataclass(frozen=True)
class ModelOptions:
    """How to run the model: all optional, defaults come from the SAE's spec."""

    model: str | None = None
    hook: str | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 32
    # seconds between checkpoints of a long stage (None: its default, collect 120 s, score 30 s)
    checkpoint_every: float | None = None


def model_options(opts: ModelOptions) -> dict[str, str]:
    """The model flags a user passed (a local model path, a hook), for a stage record's ``extra``: a
    rerun hint must repeat them. Device and batch size are left to the machine that reruns it."""
    return {k: v for k, v in (("model", opts.model), ("hook", opts.hook), ("dtype", opts.dtype)) if v}


_MODEL_CACHE: dict[tuple[str, str, str, str], HookedLM] = {}


def open_sae(name: str, opts: ModelOptions, progress: ProgressSink = NULL_PROGRESS) -> Sae:
    from .sae import load_sae

    progress.log(f"loading SAE {name} …")
    sae = load_sae(name, device=opts.device, dtype=opts.dtype)
    for warning in sae.spec.extra.get("warnings", []):  # e.g. GemmaScope '128k' read as 131k
        warn(progress, f"{warning}")
    return sae


def model_key(sae: Sae, opts: ModelOptions) -> tuple[str, str, str, str]:
    """(model, hook, device, dtype) that ``open_model`` gives this SAE: SAEs with equal keys get the
    very same ``HookedLM``, so callers can group SAEs by model before loading any."""
    model_id = opts.model or sae.spec.model_id
    if not model_id:
        raise ConfigError(f"SAE {sae.spec.name!r} does not say which model it reads", "pass --model <hub id or folder>")
    hook = opts.hook or sae.spec.hook
    if not hook:
        raise ConfigError(f"SAE {sae.spec.name!r} does not say which hook it reads", "pass --hook blocks.<L>.hook_resid_post")
    return (model_id, hook, str(opts.device), str(opts.dtype or sae.spec.default_dtype))


def open_model(sae: Sae, opts: ModelOptions, progress: ProgressSink = NULL_PROGRESS) -> HookedLM:
    """The model the SAE reads, at the SAE's hook; loaded once per process and reused across SAEs."""
    key = model_key(sae, opts)
    model_id = key[0]
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # one model in memory at a time
        from .model import load_model

        progress.log(f"loading model {model_id} (up to {key[1]}) …")

        _MODEL_CACHE[key] = load_model(model_id, key[1], device=opts.device, dtype=opts.dtype or sae.spec.default_dtype)
    lm = _MODEL_CACHE[key]
    if lm.d_model != sae.d_in:
        raise ConfigError(
            f"SAE {sae.spec.name!r} reads {sae.d_in}-dim activations but {model_id} has d_model {lm.d_model}",
            "pass the --model this SAE was trained on",
        )
    if sae.device != lm.device:
        sae.to(lm.device)
    return lm


def split_model_ref(ref: str | None) -> tuple[str | None, str | None]:
    """``model_id@revision`` as ``model_inputs`` records it -> (model id, revision); ``local`` (a
    folder) and a missing revision are None; an empty reference is (None, None)."""
    ref = str(ref or "")
    if not ref:
        return None, None
    model_id, at, rev = ref.rpartition("@")
    if not at:  # no revision recorded
        return ref, None
    return model_id or None, (None if rev in ("", "local") else rev)


def recorded_model(store: Store, run: str, sae: str, stage: str = "collect:pass") -> tuple[str | None, str | None]:
    """(model id, revision) that ``stage`` of run × SAE ran; (None, None) when it has no record."""
    rec = store.manifest(run, sae).stage(stage)
    return split_model_ref(rec.inputs.get("model") if rec else None)


def model_inputs(sae: Sae, lm: HookedLM) -> dict[str, str]:
    """The non-table inputs of a model stage, for the manifest (no secrets: ids and hashes only)."""
    return {
        "sae_weights": sae.weight_hash,
        "model": f"{lm.model_id}@{lm.revision or 'local'}",
        "hook": lm.hook.name,
    }


def record_sae_info(store: Store, run: str, sae_name: str, sae: Sae) -> None:
    info = {k: v for k, v in sae.spec.to_json().items() if k != "extra"}
    info.update({"d_in": sae.d_in, "d_sae": sae.d_sae})
    ev = sae.info.get("eval_results")
    if isinstance(ev, dict):
        info["eval_results"] = ev
    with store.lock(run, sae_name):
        manifest = store.manifest(run, sae_name)
        if manifest.data.get("sae_info") != json.loads(json.dumps(info, default=str)):
            manifest.data["sae_info"] = info
            manifest.save()


def refresh_table_inputs(store: Store, run: str, sae: str, inputs: dict[str, str]) -> dict[str, str]:
    """``inputs`` with each ``table:<name>`` hash re-read: called once the stage holds the run × SAE
    lock, since an upstream table may have been rewritten by another process while it waited."""
    tables = [k[len("table:"):] for k in inputs if k.startswith("table:")]
    return {**inputs, **table_inputs(store, run, sae, tables)} if tables else dict(inputs)


def table_inputs(store: Store, run: str, sae: str, tables: list[str]) -> dict[str, str]:
    """``table:<name>`` -> content hash, for each upstream table (read through the store so that a
    missing one is a clear error)."""
    from .freshness import stage_command, stage_states, table_command

    out = {}
    states: dict[str, str] | None = None
    for t in tables:
        h = store.table_hash(run, sae, t)
        if h is None:
            store.read_table(run, sae, t)  # raises MissingTableError with the fix
        problem = store.table_problem(run, sae, t)
        if problem is not None:  # truncated or replaced behind the manifest's back: do not build on it
            raise StoreError(f"{store.table_path(run, sae, t)} is damaged ({problem})",
                             f"rerun `{table_command(store, run, sae, t, force=True)}` to rebuild it, then this stage")
        # a table whose writer is stale (generations made from examples since replaced) would give
        # results that look fresh: refuse, naming the command that refreshes it
        states = states if states is not None else stage_states(store, run, sae)
        manifest = store.manifest(run, sae)
        stale = sorted(k for k, r in manifest.stages.items()
                       if not k.startswith("_") and t in r.outputs and states.get(k) == "stale")
        if stale:
            raise StoreError(f"run {run!r}, SAE {sae!r}: the {t} table comes from {', '.join(stale)}, which is stale "
                             "(an upstream table changed after it ran)",
                             f"refresh it first: `{stage_command(store, run, sae, stale[0])}` (or `sae-sens run`)")
        out[f"table:{t}"] = str(h)
    return out


@dataclass
class StageOutcome:
    stage: str
    skipped: bool
    rows: dict[str, int]
    extra: dict[str, Any]


def run_stage(
    store: Store,
    run: str,
    sae: str,
    stage: str,
    *,
    config: dict[str, Any],
    inputs: dict[str, str],
    compute: Callable[[], dict[str, pa.Table]],
    outputs: dict[str, tuple[str, Any] | None] | None = None,
    force: bool = False,
    extra: Callable[[], dict[str, Any]] | None = None,
    progress: ProgressSink = NULL_PROGRESS,
    started_at: str | None = None,
) -> StageOutcome:
    """Skip when fresh, else compute, write every returned table atomically and record the stage.

    ``outputs`` names the row filter a stage owns in a table other stages also write
    (``{"generations": ("generator", g)}``); tables not named are owned whole. ``started_at`` is for
    a ``compute`` that hands over tables made earlier (a pass shared by several SAEs), so the record
    says when that work began.

    The whole stage runs under the run × SAE lock: a second process waits (or is refused, with
    ``Store(wait=False)``), then finds the stage fresh instead of redoing it. ``compute`` must read
    its upstream tables itself (inside the lock), not before.
    """
    with store.lock(run, sae, what=stage):
        inputs = refresh_table_inputs(store, run, sae, inputs)
        if not force and store.is_fresh(run, sae, stage, config, inputs):
            rec = store.manifest(run, sae).stage(stage)
            rows = {t: int(o.get("rows", 0)) for t, o in (rec.outputs if rec else {}).items()}
            progress.log(f"{stage}: {sae} is up to date (use --force to rerun)")
            return StageOutcome(stage, True, rows, rec.extra if rec else {})
        started = started_at or now_iso()
        tables = compute()
        for name, table in tables.items():
            store.write_table(run, sae, name, table)
        owned = {name: (outputs or {}).get(name) for name in tables}
        ex = extra() if extra else {}
        rec = store.record_stage(run, sae, stage, config=config, inputs=inputs, outputs=owned, started_at=started,
                                 extra=ex)
    return StageOutcome(stage, False, {t: int(o["rows"]) for t, o in rec.outputs.items()}, ex)
