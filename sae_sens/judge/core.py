"""The judge stage: an LLM checks the generated texts, so a low sensitivity can be told apart from a
generator that misread the pattern.

For each generated text of each generator (or only ``--generator``), two checks, each one request:

* ``pair`` (blind pairwise test, as the paper's human study): the judge sees the marked examples
  the generator saw (same selection and order as that generator's prompt), then two unmarked texts
  A and B in a seeded random order, recorded in ``real_position``: the generated text and a held-out
  real example (``heldout.py``: a candidate collect drew but the generator was not shown). It
  answers which one is real. ``correct`` is true when it found the real one; over a feature's texts,
  the share it got wrong is the *indistinguishable rate* (0.5 = the judge cannot tell them apart).
  Held-out examples are spread over a feature's texts by a seeded permutation, reused in turn when
  there are fewer than texts. A feature with no held-out example gets no pair rows (a warning says
  how many), never a pair against something the generator saw.
* ``direct``: does the text show the pattern of the examples? yes/no plus a one-line reason
  (``valid``, ``reason``).

Requests go through generate's backends and ``fetch_answers`` (concurrency, retries, the journal
for resuming after a kill, the store-wide cache so nothing is paid twice, ``--max-cost``). Rows go
to ``judgments`` (other judges' rows stay); the manifest records ``judge:<judge>``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError
from ..generate.backends import Request
from ..generate.config import public_url
from ..generate.core import _base_url, fetch_answers, merge_generator_rows, price_of
from ..generate.pricing import Price, estimate_tokens
from ..generate.prompts import feature_examples
from ..generate.runner import Checkpoint, QueryCache
from ..hashing import hash_config
from ..progress import NULL_PROGRESS, ProgressSink, some, warn_all
from ..schemas import is_reference, make_table
from ..stages import ModelOptions, StageOutcome, run_stage, table_inputs
from ..store import Store
from .config import JudgeConfig
from .heldout import held_out_examples
from .prompts import PROMPTS_HASH, direct_prompt, pair_prompt, parse_direct, parse_pair, unmarked


@dataclass(frozen=True)
class JudgeItem:
    """One judgement to make: which text, which check, and (pairs) what it is paired with."""

    feature_index: int
    generator: str
    task: str  # pair | direct
    sample_index: int
    text: str  # the generated text as shown (unmarked)
    request: Request
    real_text: str | None = None
    real_example: str | None = None  # "<pool>:<rank>" of the held-out candidate
    real_position: str | None = None  # A | B


@dataclass
class JudgeResult:
    judgments: pa.Table
    stats: dict[str, Any]
    warnings: list[str]


def _seed(*parts: Any) -> int:
    return int(hash_config(list(parts))[:15], 16)


def held_out_by_feature(held_out: pa.Table) -> dict[int, list[tuple[str, str]]]:
    """Feature -> [(``<pool>:<rank>``, unmarked text)] of its held-out real examples."""
    held: dict[int, list[tuple[str, str]]] = {}
    for f, pool, rank, text in zip(*(held_out[c].to_pylist() for c in ("feature_index", "pool", "rank", "text")),
                                   strict=True):
        held.setdefault(int(f), []).append((f"{pool}:{rank}", unmarked(text or "")))
    return held


def assign_pair(pool: list[tuple[str, str]], seed: int, generator: str, feature: int,
                sample: int) -> tuple[str, str, str]:
    """(held-out id, its text, where the real one goes: A | B) for one generated text. A seeded
    permutation spreads the held-out examples over the feature's texts; the side is a seeded coin.
    The LLM judge and the human labelling page use the same pairs for the same seed."""
    order = list(range(len(pool)))
    random.Random(_seed(seed, "held-out", generator, feature)).shuffle(order)
    real_id, real = pool[order[sample % len(pool)]]
    return real_id, real, "A" if random.Random(_seed(seed, "order", generator, feature, sample)).random() < 0.5 else "B"


def shown_settings(store: Store, run: str, sae: str, generator: str) -> tuple[int, int, int]:
    """(n_top, n_iw, seed) of the prompt ``generator`` was sent, from its manifest record (generate's
    defaults for imported tables and older records)."""
    rec = store.manifest(run, sae).stage(f"generate:{generator}")
    config = rec.config if rec is not None else {}
    return int(config.get("n_top", 10)), int(config.get("n_iw", 5)), int(config.get("seed", 42))


def build_items(
    examples: pa.Table,
    generations: pa.Table,
    held_out: pa.Table,
    cfg: JudgeConfig,
    shown: dict[str, tuple[int, int, int]],
) -> tuple[list[JudgeItem], dict[str, Any]]:
    """Every judgement to make, in a stable order, and what could not be set up (counts)."""
    spec = cfg.spec
    server = public_url(_base_url(cfg.generate_config())) if spec.kind == "openai" else None
    held = held_out_by_feature(held_out)
    gens = sorted(generations.select(["generator", "feature_index", "sample_index", "text"]).to_pylist(),
                  key=lambda r: (r["generator"], r["feature_index"], r["sample_index"]))
    items: list[JudgeItem] = []
    no_held_out: set[tuple[str, int]] = set()
    n_blank = 0
    shown_by: dict[str, dict[int, list[str]]] = {}
    taken: dict[tuple[str, int], int] = {}  # non-blank texts judged so far per generator and feature
    for r in gens:
        g, f, s = r["generator"], int(r["feature_index"]), int(r["sample_index"])
        if g not in shown_by:
            n_top, n_iw, seed = shown[g]
            shown_by[g] = feature_examples(examples, n_top, n_iw, seed)
        exs = shown_by[g].get(f)
        text = unmarked(r["text"] or "").strip()
        if exs is None:
            continue  # a generation for a feature that has no examples (imports are checked at import)
        if not text:
            n_blank += 1
            continue
        # a cost cap that keeps the lowest sample indices, so a larger cap only adds judgements
        if cfg.max_texts is not None and taken.get((g, f), 0) >= cfg.max_texts:
            continue
        taken[(g, f)] = taken.get((g, f), 0) + 1

        def request(system: str, user: str, f: int = f) -> Request:
            key = {"judge": spec.label, "model": spec.target, "base_url": server, "system": system, "user": user,
                   "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
            return Request(f, system, user, hash_config(key))

        if "pair" in cfg.tasks:
            pool = held.get(f, [])
            if pool:
                real_id, real, real_pos = assign_pair(pool, cfg.seed, g, f, s)
                a, b = (real, text) if real_pos == "A" else (text, real)
                items.append(JudgeItem(f, g, "pair", s, text, request(*pair_prompt(exs, a, b)), real, real_id, real_pos))
            else:
                no_held_out.add((g, f))
        if "direct" in cfg.tasks:
            items.append(JudgeItem(f, g, "direct", s, text, request(*direct_prompt(exs, text))))
    notes = {"n_blank": n_blank, "features_without_held_out": sorted({f for _, f in no_held_out})}
    return items, notes


def _rows(items: list[JudgeItem], answers: dict[str, dict[str, Any]], label: str,
          price: Price | None) -> list[dict[str, Any]]:
    rows = []
    for it in items:
        a = answers[it.request.query_hash]
        error = a.get("error")
        row: dict[str, Any] = {
            "feature_index": it.feature_index, "generator": it.generator, "judge": label, "task": it.task,
            "sample_index": it.sample_index, "text": it.text, "real_text": it.real_text,
            "real_example": it.real_example, "real_position": it.real_position, "response": a["response"],
            "attempts": a["attempts"], "prompt_tokens": a["prompt_tokens"],
            "completion_tokens": a["completion_tokens"], "latency_s": a["latency_s"],
            "cost_usd": price.cost(a["prompt_tokens"], a["completion_tokens"]) if price else None,
            "query_hash": it.request.query_hash, "error": error,
        }
        if error:
            row["status"] = "error"
        elif it.task == "pair":
            answer = parse_pair(a["response"])
            row.update(answer=answer, correct=None if answer is None else answer == it.real_position,
                       status="ok" if answer else "unparsed")
        else:
            valid, reason = parse_direct(a["response"])
            row.update(answer=None if valid is None else ("yes" if valid else "no"), valid=valid, reason=reason,
                       status="ok" if valid is not None else "unparsed")
        rows.append(row)
    return rows


def _unique(items: list[JudgeItem]) -> list[Request]:
    seen: dict[str, Request] = {}
    for it in items:
        seen.setdefault(it.request.query_hash, it.request)
    return list(seen.values())


def judge(
    examples: pa.Table,
    generations: pa.Table,
    held_out: pa.Table,
    cfg: JudgeConfig,
    shown: dict[str, tuple[int, int, int]],
    *,
    checkpoint: Checkpoint | None = None,
    cache: QueryCache | None = None,
    progress: ProgressSink = NULL_PROGRESS,
    task: str = "judge",
) -> JudgeResult:
    """Tables in, the ``judgments`` table out."""
    gen_cfg = cfg.generate_config()
    price = price_of(gen_cfg)
    if cfg.max_cost is not None and price is None:
        raise ConfigError(f"--max-cost needs the price of {cfg.spec.target!r}, which is not in the price table",
                          "pass --price-in and --price-out (USD per 1M tokens)")
    items, notes = build_items(examples, generations, held_out, cfg, shown)
    answers, stats = fetch_answers(_unique(items), gen_cfg, price, checkpoint=checkpoint, cache=cache,
                                   progress=progress, task=task, what="judgements")
    rows = _rows(items, answers, cfg.spec.label, price)
    warnings = []
    if notes["features_without_held_out"]:
        fs = notes["features_without_held_out"]
        warnings.append(f"{len(fs)} features have no held-out real example (every candidate collect drew was shown "
                        f"to the generator, or the examples were imported), so they get no pairwise test: "
                        f"{some(fs)}")
    unparsed = [r for r in rows if r["status"] == "unparsed"]
    if unparsed:
        warnings.append(f"{len(unparsed)} of {len(rows)} answers gave no verdict (judgments.status = 'unparsed'; "
                        f"left out of every rate), e.g. {unparsed[0]['response'][:60]!r}")
    warn_all(progress, cfg.spec.label, warnings)
    stats.update(n_judgments=len(rows), n_pairs=sum(r["task"] == "pair" for r in rows),
                 n_direct=sum(r["task"] == "direct" for r in rows), n_unparsed=len(unparsed),
                 n_blank_texts=notes["n_blank"], features_without_held_out=notes["features_without_held_out"],
                 cost_usd=sum(r["cost_usd"] or 0.0 for r in rows) if price else None)
    return JudgeResult(make_table("judgments", rows), stats, warnings)


def _generations(store: Store, run: str, sae: str, only: str | None) -> pa.Table:
    gens = store.read_table(run, sae, "generations")
    present = sorted(set(gens["generator"].to_pylist()))
    if only is not None:
        if only not in present:
            raise ConfigError(f"no generations from generator {only!r}", f"generators in this run: {', '.join(present)}")
        gens = gens.filter(pc.equal(gens["generator"], only))
    else:  # base-rate passages, injections and negatives are not texts meant to show the pattern
        gens = gens.filter(pa.array([not is_reference(g) for g in gens["generator"].to_pylist()], pa.bool_()))
    return gens


def _setup(store: Store, run: str, sae: str, cfg: JudgeConfig) -> tuple[JudgeConfig, str, dict[str, Any], dict[str, str]]:
    import os

    if cfg.spec.kind == "openai" and not cfg.base_url and os.environ.get("OPENAI_BASE_URL"):
        cfg = replace(cfg, base_url=os.environ["OPENAI_BASE_URL"])
    tables = ["examples", "generations", "features"]
    if store.has_table(run, sae, "candidates"):
        tables.append("candidates")
    inputs = table_inputs(store, run, sae, tables)
    gens = _generations(store, run, sae, cfg.generator)
    config = cfg.manifest_config(PROMPTS_HASH)
    config["shown"] = {g: list(shown_settings(store, run, sae, g)) for g in sorted(set(gens["generator"].to_pylist()))}
    return cfg, f"judge:{cfg.spec.label}", config, inputs


def run_judge(
    store: Store,
    run: str,
    sae: str,
    cfg: JudgeConfig,
    opts: ModelOptions | None = None,
    *,
    force: bool = False,
    progress: ProgressSink = NULL_PROGRESS,
) -> StageOutcome:
    """Judge one run × SAE's generated texts; merges its rows into ``judgments`` beside other judges'."""
    cfg, stage, config, inputs = _setup(store, run, sae, cfg)
    label = cfg.spec.label
    checkpoint = Checkpoint(store.checkpoint_dir(run, sae, stage) / "answers.jsonl", stage)
    extra: dict[str, Any] = {}

    def compute() -> dict[str, pa.Table]:
        held = held_out_examples(store, run, sae, opts or ModelOptions(), progress)
        gens = _generations(store, run, sae, cfg.generator)
        result = judge(store.read_table(run, sae, "examples"), gens, held, cfg,
                       {g: tuple(v) for g, v in config["shown"].items()},  # type: ignore[misc]
                       checkpoint=checkpoint, cache=QueryCache(store.cache_dir / "judge"), progress=progress,
                       task=f"judge {sae} · {label}")
        extra.update(result.stats, warnings=result.warnings, n_held_out=held.num_rows)
        merged = merge_generator_rows(store, run, sae, "judgments", result.judgments, label, column="judge")
        if cfg.generator is not None and store.has_table(run, sae, "judgments"):
            # judging one generator keeps this judge's verdicts on the others
            old = store.read_table(run, sae, "judgments")
            old = old.drop_columns([c for c in ("run", "sae") if c in old.column_names])
            keep = old.filter(pc.and_(pc.equal(old["judge"], label), pc.not_equal(old["generator"], cfg.generator)))
            if keep.num_rows:
                merged = pa.concat_tables([merged, keep.select(merged.column_names).cast(merged.schema)])
        return {"judgments": merged}

    outcome = run_stage(store, run, sae, stage, config=config, inputs=inputs, compute=compute,
                        outputs={"judgments": ("judge", label)}, force=force, extra=lambda: dict(extra),
                        progress=progress)
    checkpoint.clear()  # the table holds every answer now; the cache keeps them for other runs
    return outcome


def plan_judge(store: Store, run: str, sae: str, cfg: JudgeConfig, opts: ModelOptions | None = None,
               progress: ProgressSink = NULL_PROGRESS) -> dict[str, Any]:
    """``--dry-run``: how many requests ``run_judge`` would send and roughly what they cost; sends nothing."""
    cfg, stage, config, _inputs = _setup(store, run, sae, cfg)
    held = held_out_examples(store, run, sae, opts or ModelOptions(), progress)
    items, notes = build_items(store.read_table(run, sae, "examples"), _generations(store, run, sae, cfg.generator),
                               held, cfg, {g: tuple(v) for g, v in config["shown"].items()})  # type: ignore[misc]
    requests = _unique(items)
    journal = Checkpoint(store.checkpoint_dir(run, sae, stage) / "answers.jsonl").load()
    cache = QueryCache(store.cache_dir / "judge")
    todo = [r for r in requests if r.query_hash not in journal and cache.get(r.query_hash) is None]
    prompt_tokens = sum(estimate_tokens(r.system + r.user) + 10 for r in todo)
    completion_tokens = sum(min(cfg.max_tokens, 3 if "A or B" in r.user else 30) for r in todo)
    price = price_of(cfg.generate_config())
    return {"sae": sae, "judge": cfg.spec.label, "judgements": len(items), "pairs": sum(i.task == "pair" for i in items),
            "done": len(requests) - len(todo), "requests": len(todo), "est_prompt_tokens": prompt_tokens,
            "est_completion_tokens": completion_tokens,
            "est_cost_usd": price.cost(prompt_tokens, completion_tokens) if price else None,
            "features_without_held_out": len(notes["features_without_held_out"])}

