"""The generate stage: examples in, ``queries`` and ``generations`` out.

``generate`` is the core (an examples table and a config in, tables out); ``run_generate`` is the
store wrapper: it skips fresh work, resumes from the stage's checkpoint, merges its rows with other
generators' rows in the same tables and records ``generate:<label>`` in the manifest.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, GenerationError, ImportTableError, StoreError
from ..hashing import hash_config, hash_file
from ..progress import NULL_PROGRESS, ProgressSink, some, warn_all
from ..schemas import make_table, role_of
from ..stages import StageOutcome, table_inputs
from ..store import Store, now_iso
from .backends import Backend, Request, open_generator
from .config import RETRIEVAL_KINDS, GenerateConfig, GeneratorSpec, public_url
from .imports import TableImport
from .parsing import parse_samples
from .pricing import Price, estimate_tokens, lookup_price
from .prompts import build_prompts, load_template
from .runner import Budget, Checkpoint, QueryCache, Runner, answer_record

_MARK_RE = re.compile(r"\{\{|\}\}")


@dataclass
class GenerateResult:
    queries: pa.Table
    generations: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pa.Table]:
        return {"queries": self.queries, "generations": self.generations}


def _base_url(cfg: GenerateConfig) -> str | None:
    return cfg.base_url or os.environ.get("OPENAI_BASE_URL") or None


def price_of(cfg: GenerateConfig, batch: bool | None = None) -> Price | None:
    """The price of ``cfg``'s requests: the Batch API's with ``--batch`` (or ``batch=True``)."""
    spec = cfg.spec
    return lookup_price(spec.kind, spec.target, _base_url(cfg), cfg.price_in, cfg.price_out,
                        batch=cfg.batch if batch is None else batch)


def make_requests(examples: pa.Table, cfg: GenerateConfig) -> list[Request]:
    """One request per feature. Its hash covers everything that decides the answer, so the cache can
    serve it to any run: generator, model, server, both prompts, sampling settings and seed."""
    spec = cfg.spec
    template = load_template(cfg.prompt_template, negatives=cfg.spec.negatives)
    server = public_url(_base_url(cfg)) if spec.kind == "openai" else None
    out = []
    for p in build_prompts(examples, cfg, template):
        key = {"generator": spec.label, "model": spec.target, "base_url": server, "system": p.system,
               "user": p.user, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
        out.append(Request(p.feature_index, p.system, p.user, hash_config(key)))
    return out


def _rows(spec: GeneratorSpec, cfg: GenerateConfig, requests: list[Request], answers: dict[str, dict[str, Any]],
          price: Price | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    queries, generations = [], []
    # an answer costs what its way of asking cost: one from a batch (also when cached) the batch price
    by_batch = price_of(cfg, batch=True) if price is not None else None
    for r in requests:
        a = answers[r.query_hash]
        paid = by_batch if a.get("batch_id") else price_of(cfg, batch=False) if price is not None else None
        error = a.get("error")
        samples, method = ([], None) if error else parse_samples(a["response"], cfg.separator)
        queries.append({
            "feature_index": r.feature_index, "generator": spec.label, "system_prompt": r.system,
            "user_prompt": r.user, "response": a["response"], "status": "error" if error else "ok",
            "attempts": a["attempts"], "prompt_tokens": a["prompt_tokens"],
            "completion_tokens": a["completion_tokens"], "latency_s": a["latency_s"], "n_parsed": len(samples),
            "parse_method": method, "query_hash": r.query_hash, "error": error,
            "cost_usd": paid.cost(a["prompt_tokens"], a["completion_tokens"]) if paid else None,
            "batch_id": a.get("batch_id"),
        })
        for i, text in enumerate(samples[: cfg.samples_per_feature]):
            generations.append({"feature_index": r.feature_index, "generator": spec.label, "sample_index": i,
                                "text": text})
    return queries, generations


def import_generations(examples: pa.Table, source: TableImport, progress: ProgressSink = NULL_PROGRESS) -> GenerateResult:
    """``table:<file>``: validate an existing table of texts against the run's features."""
    features = set(examples["feature_index"].to_pylist())
    result = source.read(features)
    warnings = result.warnings
    if not result.generations:
        raise ImportTableError(f"no usable rows in {source.path}: {'; '.join(warnings) or 'it is empty'}",
                               "fix the rows listed (feature_index must name features of this run)")
    warn_all(progress, source.label, warnings)
    stats = {"n_features": len(result.queries), "n_rows": result.n_rows, "n_imported": len(result.generations),
             "n_dropped": sum(len(v) for v in result.dropped.values())}
    return GenerateResult(make_table("queries", result.queries), make_table("generations", result.generations),
                          stats, warnings)


def fetch_answers(
    requests: list[Request],
    cfg: GenerateConfig,
    price: Price | None,
    backend: Backend | None = None,
    *,
    checkpoint: Checkpoint | None = None,
    cache: QueryCache | None = None,
    progress: ProgressSink = NULL_PROGRESS,
    task: str = "generate",
    what: str = "features",
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Answers to ``requests`` by query hash, and counts for the stage record. Answers already in
    ``checkpoint`` (this stage, interrupted) or ``cache`` (any run) are reused; only the rest is sent,
    through ``cfg``'s backend (or ``backend``) with its concurrency, retries and ``--max-cost``. Each
    new answer is journaled before the next request is handed out. Shared by generate and judge.
    """
    journal = checkpoint.load() if checkpoint else {}
    answers: dict[str, dict[str, Any]] = {}
    todo = []
    n_resumed = n_cached = 0
    for r in requests:
        if r.query_hash in journal and not journal[r.query_hash].get("error"):  # refused ones are asked again
            answers[r.query_hash], n_resumed = journal[r.query_hash], n_resumed + 1
        elif cache is not None and (hit := cache.get(r.query_hash)) is not None:
            answers[r.query_hash], n_cached = hit, n_cached + 1
        else:
            todo.append(r)
    own = backend is None and bool(todo)
    llm: Backend = backend or (open_generator(cfg, progress) if todo else None)  # type: ignore[assignment]  # key checked here
    progress.start(task, total=len(requests))
    if len(requests) > len(todo):
        progress.advance(task, len(requests) - len(todo), f"{n_resumed} resumed, {n_cached} cached")
    stats: dict[str, Any] = {"n_requests_total": len(requests), "n_resumed": n_resumed, "n_cached": n_cached,
                             "n_requests": len(todo), "n_sent": 0, "n_retries": 0, "n_rejected": 0,
                             "spent_usd": 0.0 if price else None}
    if todo:

        def on_answer(r: Request, c: Any, error: str | None) -> float:
            rec = answer_record(r, c, error)
            if cache is not None and error is None:
                cache.put(r.query_hash, rec)
            if checkpoint is not None:
                checkpoint.append(rec)
            answers[r.query_hash] = rec
            return price.cost(c.prompt_tokens, c.completion_tokens) if price else 0.0

        if cfg.batch:
            try:
                stats.update(_batch_answers(todo, cfg, price, llm, checkpoint, cache, answers, progress, task))
            finally:
                if own:
                    llm.close()
            progress.finish(task)
            return answers, stats
        budget = Budget(cfg.max_cost, price, cfg.max_tokens) if cfg.max_cost is not None and price else None
        runner = Runner(llm, max_workers=cfg.max_workers, max_retries=cfg.max_retries, retry_base_s=cfg.retry_base_s,
                        retry_max_s=cfg.retry_max_s, budget=budget, progress=progress, task=task)
        try:
            run = runner.run(todo, on_answer)
        finally:
            if own:
                llm.close()
        stats.update(n_sent=run.sent, n_retries=run.retries, n_rejected=run.rejected,
                     spent_usd=run.spent_usd if price else None)
        if run.failed:
            raise GenerationError(
                f"{run.failed} of {len(requests)} {what} got no answer after {cfg.max_retries + 1} attempts "
                f"(last: {run.errors[-1]})",
                "rerun the same command to retry only those; finished features are kept",
            )
    progress.finish(task)
    return answers, stats


def _batch_answers(todo: list[Request], cfg: GenerateConfig, price: Price | None, llm: Backend,
                   checkpoint: Checkpoint | None, cache: QueryCache | None, answers: dict[str, dict[str, Any]],
                   progress: ProgressSink, task: str) -> dict[str, Any]:
    """``--batch``: ``todo`` through the Batch API (``generate.batch``), each answer journaled and cached
    as its batch is collected, exactly as a synchronous answer is."""
    from .backends import OpenAIBackend
    from .batch import BatchClient, BatchJournal, run_batches

    if not isinstance(llm, OpenAIBackend):
        raise ConfigError(f"--batch needs an openai: generator, not {cfg.spec.label!r}",
                          "drop --batch, or use --generator openai:<model>")
    if checkpoint is None:
        raise ConfigError("--batch needs a store to journal its batches in", "use run_generate or the CLI")

    def on_answer(r: Request, c: Any, error: str | None, batch_id: str) -> None:
        rec = {**answer_record(r, c, error), "batch_id": batch_id}
        if cache is not None and error is None:
            cache.put(r.query_hash, rec)
        checkpoint.append(rec)
        answers[r.query_hash] = rec
        progress.advance(task, 1)

    b = run_batches(todo, model=llm.model, temperature=cfg.temperature, max_tokens=cfg.max_tokens, seed=cfg.seed,
                    journal=BatchJournal(checkpoint.path.parent / "batches.jsonl", checkpoint.stage), client=BatchClient(llm),
                    on_answer=on_answer, price=price, max_cost=cfg.max_cost, max_requests=cfg.batch_max_requests,
                    poll_s=cfg.batch_poll_s, wait=cfg.batch_wait, max_rounds=cfg.max_retries + 1, progress=progress)
    return {"n_sent": b.answered + b.refused, "n_rejected": b.refused, "n_batches": b.submitted,
            "n_batches_adopted": b.adopted, "n_resubmitted": b.resubmitted, "batch_ids": b.batch_ids,
            "spent_usd": b.spent_usd if price else None}


def generate(
    examples: pa.Table,
    cfg: GenerateConfig,
    backend: Backend | TableImport | None = None,
    *,
    checkpoint: Checkpoint | None = None,
    cache: QueryCache | None = None,
    progress: ProgressSink = NULL_PROGRESS,
    task: str = "generate",
) -> GenerateResult:
    """Generate ``cfg.samples_per_feature`` texts per feature of ``examples``.

    Answers already in ``checkpoint`` (this stage, interrupted) or ``cache`` (any run) are reused;
    only the rest is sent. Each new answer is journaled before the next request is handed out.
    """
    spec = cfg.spec
    if spec.kind == "table":
        source = backend if isinstance(backend, TableImport) else TableImport(spec.target, spec.label)
        return import_generations(examples, source, progress)
    if spec.kind in RETRIEVAL_KINDS:
        raise ConfigError(f"{spec.label} retrieves passages from the store's collect pass",
                          "use run_generate (or `sae-sens generate`) with a store")
    requests = make_requests(examples, cfg)
    price = price_of(cfg)
    if cfg.max_cost is not None and price is None:
        raise ConfigError(f"--max-cost needs the price of {spec.target!r}, which is not in the price table",
                          "pass --price-in and --price-out (USD per 1M tokens)")
    llm = backend if not isinstance(backend, TableImport) else None
    answers, stats = fetch_answers(requests, cfg, price, llm, checkpoint=checkpoint, cache=cache,
                                   progress=progress, task=task, what="features")
    stats = {"n_features": stats.pop("n_requests_total"), **stats}
    refused = [a for a in answers.values() if a.get("error")]
    stats["n_failed_features"] = len(refused)
    if requests and len(refused) == len(requests):
        raise GenerationError(
            f"the generator refused all {len(requests)} requests (e.g. feature {refused[0]['feature_index']}: "
            f"{refused[0]['error']})",
            "fix the prompt, model or server and rerun the same command; nothing was recorded as done",
        )
    queries, generations = _rows(spec, cfg, requests, answers, price)
    stats["cost_usd"] = sum(q["cost_usd"] or 0.0 for q in queries) if price else None
    stats["prompt_tokens"] = sum(q["prompt_tokens"] or 0 for q in queries)
    stats["completion_tokens"] = sum(q["completion_tokens"] or 0 for q in queries)
    short = [q["feature_index"] for q in queries if q["status"] == "ok" and q["n_parsed"] < cfg.samples_per_feature]
    warnings = []
    if short:
        warnings.append(f"{len(short)} features got fewer than {cfg.samples_per_feature} samples "
                        f"(see queries.n_parsed): {some(short)}")
    rejected = [q for q in queries if q["status"] == "error"]
    if rejected:
        warnings.append(f"{len(rejected)} prompts were refused by the generator (see queries.error), "
                        f"e.g. feature {rejected[0]['feature_index']}: {rejected[0]['error']}")
    warn_all(progress, spec.label, warnings)
    return GenerateResult(make_table("queries", queries), make_table("generations", generations), stats, warnings)


def merge_generator_rows(store: Store, run: str, sae: str, table: str, new: pa.Table, label: str,
                         column: str = "generator") -> pa.Table:
    """``new`` plus the rows of other generators (or other values of ``column``) already in ``table``
    (this generator's old rows go)."""
    if not store.has_table(run, sae, table):
        return new
    try:
        old = store.read_table(run, sae, table)
    except StoreError:  # damaged: other generators' rows are gone already; their stages rerun from the cache
        return new
    old = old.drop_columns([c for c in ("run", "sae") if c in old.column_names])
    keep = old.filter(pc.not_equal(old[column], pa.scalar(label)))
    if set(keep.column_names) == set(new.column_names):
        merged = pa.concat_tables([keep.select(new.column_names).cast(new.schema), new])
    else:
        merged = pa.concat_tables([keep, new], promote_options="permissive")
    keys = [(column, "ascending"), ("feature_index", "ascending")]
    if "sample_index" in merged.column_names:
        keys.append(("sample_index", "ascending"))
    return merged.sort_by(keys)


def _stage_setup(store: Store, run: str, sae: str, cfg: GenerateConfig) -> tuple[GenerateConfig, str, dict, dict]:
    spec = cfg.spec
    if spec.kind == "openai" and not cfg.base_url and os.environ.get("OPENAI_BASE_URL"):
        cfg = replace(cfg, base_url=os.environ["OPENAI_BASE_URL"])  # recorded, so a new server means new work
    inputs = table_inputs(store, run, sae, ["examples"])
    if spec.kind in RETRIEVAL_KINDS:  # real passages: they depend on the collect pass and the corpus read
        from ..corpus import resolve_corpus

        inputs.update(table_inputs(store, run, sae, ["candidates"]))
        inputs["corpus"] = resolve_corpus(spec.target).fingerprint
        config = cfg.manifest_config("")
    elif spec.kind == "table":
        path = Path(spec.target).expanduser()
        if not path.is_file():
            raise ImportTableError(f"import table {path} does not exist", "pass an existing file to --from-table")
        inputs["import_file"] = hash_file(path)
        config = cfg.manifest_config("")
    else:
        config = cfg.manifest_config(load_template(cfg.prompt_template, negatives=cfg.spec.negatives).hash)
    return cfg, f"generate:{spec.label}", config, inputs


def run_generate(
    store: Store,
    run: str,
    sae: str,
    cfg: GenerateConfig,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> StageOutcome:
    """Generate (or import) texts for one run × SAE and merge them into its ``queries`` and
    ``generations`` tables, alongside other generators' rows.

    The stage holds the run × SAE lock from its freshness check to its record, so a second process
    (the same generator or another) waits, then re-reads the journal, the cache and the tables: no
    answer is paid for twice and no generator's rows are lost. Before the first request it checks that
    it can write the store, the journal and the cache.
    """
    label = cfg.spec.label
    with store.lock(run, sae, what=f"generate:{label}"):
        cfg, stage, config, inputs = _stage_setup(store, run, sae, cfg)
        owned: dict[str, tuple[str, Any] | None] = {"queries": ("generator", label),
                                                    "generations": ("generator", label)}
        rec = store.manifest(run, sae).stage(stage)
        refused_before = int((rec.extra.get("n_failed_features") or 0) if rec else 0)
        if not force and not refused_before and store.is_fresh(run, sae, stage, config, inputs):
            progress.log(f"{stage}: {sae} is up to date (use --force to rerun)")
            return StageOutcome(stage, True, {t: int(o.get("rows", 0)) for t, o in rec.outputs.items()},  # type: ignore[union-attr]
                                rec.extra)  # type: ignore[union-attr]
        started = now_iso()
        examples = store.read_table(run, sae, "examples")
        checkpoint = Checkpoint(store.checkpoint_dir(run, sae, stage) / "answers.jsonl", stage)
        cache = QueryCache(store.cache_dir / "generate")
        if cfg.spec.kind not in ("table", *RETRIEVAL_KINDS):
            store.check_writable(store.sae_dir(run, sae), checkpoint.path.parent, cache.folder)
        if cfg.spec.kind == "corpus":
            from .corpus_control import corpus_generations

            result = GenerateResult(*corpus_generations(store, run, sae, cfg.spec.target, label,
                                                        cfg.samples_per_feature, device=cfg.device, progress=progress))
        elif cfg.spec.kind in ("baseline", "inject"):
            from .references import reference_generations

            result = GenerateResult(*reference_generations(store, run, sae, cfg, progress=progress))
        else:
            result = generate(examples, cfg, checkpoint=checkpoint, cache=cache, progress=progress,
                              task=f"generate {sae} · {label}")
        for name, table in result.tables().items():
            if name == "generations":  # what the texts are for, by the label (schemas.role_of)
                table = table.drop_columns([c for c in ("role",) if c in table.column_names]).append_column(
                    "role", pa.array([role_of(label)] * table.num_rows, pa.string()))
            store.write_table(run, sae, name, merge_generator_rows(store, run, sae, name, table, label))
        extra = {**result.stats, "warnings": result.warnings}
        rec = store.record_stage(run, sae, stage, config=config, inputs=inputs, outputs=owned, started_at=started,
                                 extra=extra)
        checkpoint.clear()  # the tables now hold every answer, the cache keeps them for other runs
    return StageOutcome(stage, False, {t: int(o["rows"]) for t, o in rec.outputs.items()}, extra)


def plan_generate(store: Store, run: str, sae: str, cfg: GenerateConfig) -> dict[str, Any]:
    """``--dry-run``: what ``run_generate`` would send and roughly cost, sending nothing."""
    cfg, stage, _config, _inputs = _stage_setup(store, run, sae, cfg)
    examples = store.read_table(run, sae, "examples")
    spec = cfg.spec
    if spec.kind == "table":
        res = TableImport(spec.target, spec.label).read(set(examples["feature_index"].to_pylist()))
        return {"sae": sae, "generator": spec.label, "features": len(res.queries), "rows": res.n_rows,
                "imported": len(res.generations), "dropped": res.n_rows - len(res.generations),
                "warnings": res.warnings}
    if spec.kind in RETRIEVAL_KINDS:
        return {"sae": sae, "generator": spec.label, "features": len(set(examples["feature_index"].to_pylist())),
                "done": 0, "requests": 0, "est_prompt_tokens": 0, "est_completion_tokens": 0, "est_cost_usd": 0.0}
    requests = make_requests(examples, cfg)
    journal = Checkpoint(store.checkpoint_dir(run, sae, stage) / "answers.jsonl").load()
    cache = QueryCache(store.cache_dir / "generate")
    todo = [r for r in requests if r.query_hash not in journal and cache.get(r.query_hash) is None]
    return {"sae": sae, "generator": spec.label, "features": len(requests), "done": len(requests) - len(todo),
            **estimate_requests(todo, examples, cfg)}


def estimate_requests(todo: list[Request], examples: pa.Table, cfg: GenerateConfig) -> dict[str, Any]:
    """Requests, estimated prompt and completion tokens and cost of sending ``todo``: a completion is
    ``n_request`` samples as long as the feature's examples (at most ``max_tokens``)."""
    texts = {f: [_MARK_RE.sub("", t or "") for t in ts]
             for f, ts in _example_texts(examples).items()}
    prompt_tokens = sum(estimate_tokens(r.system + r.user) + 10 for r in todo)  # + chat framing
    completion_tokens = 0
    for r in todo:
        ts = texts.get(r.feature_index) or [""]
        per_sample = sum(estimate_tokens(t) for t in ts) / len(ts)
        completion_tokens += min(cfg.max_tokens, math.ceil(cfg.n_request * (per_sample + 3)))
    price = price_of(cfg)
    return {"requests": len(todo), "est_prompt_tokens": prompt_tokens, "est_completion_tokens": completion_tokens,
            "est_cost_usd": price.cost(prompt_tokens, completion_tokens) if price else None}


def plan_uncollected(features: list[int], n_top: int, n_iw: int, window: int, cfg: GenerateConfig) -> dict[str, Any]:
    """``run --dry-run`` before collect: the requests for ``features`` with ``n_top`` + ``n_iw``
    examples of ``window`` tokens each (stand-ins of that length, one token marked): an estimate,
    since the examples' real text is not known yet."""
    from ..schemas import make_table

    if cfg.spec.kind == "table" or cfg.spec.kind in RETRIEVAL_KINDS:
        return {"features": len(features), "done": 0, "requests": 0, "est_prompt_tokens": 0,
                "est_completion_tokens": 0, "est_cost_usd": 0.0}
    text = "{{ word}}" + " word" * (window - 1)
    examples = make_table("examples", [
        {"feature_index": f, "example_index": i, "kind": "top" if i < n_top else "iw", "text": text}
        for f in features for i in range(n_top + n_iw)])
    return {"features": len(features), "done": 0, **estimate_requests(make_requests(examples, cfg), examples, cfg)}


def _example_texts(examples: pa.Table) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for f, t in zip(examples["feature_index"].to_pylist(), examples["text"].to_pylist(), strict=True):
        out.setdefault(int(f), []).append(t)
    return out


def run_generate_many(
    store: Store,
    run: str,
    saes: list[str],
    cfg: GenerateConfig,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> list[StageOutcome]:
    """``run_generate`` for several SAEs with ONE ``--max-cost`` budget across all of them."""
    from dataclasses import replace

    from ..errors import BudgetExceededError

    outcomes, spent = [], 0.0
    for sae in saes:
        this = cfg
        if cfg.max_cost is not None:
            if spent >= cfg.max_cost:
                raise BudgetExceededError(f"--max-cost ${cfg.max_cost:g} is spent before SAE {sae}",
                                          "raise --max-cost and rerun the same command to continue")
            this = replace(cfg, max_cost=cfg.max_cost - spent)
        out = run_generate(store, run, sae, this, force=force, progress=progress)
        if not out.skipped:
            spent += out.extra.get("spent_usd") or 0.0
        outcomes.append(out)
    return outcomes
