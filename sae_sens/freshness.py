"""One freshness rule for every reader: each stage's state and each stage family's, and the command
that brings a stage back.

``Store.status`` gives each recorded stage its own state (done, stale, damaged). Here that is
completed with what only the whole run × SAE shows, so ``runs``, ``report``, ``export``, ``show``,
``sql`` and ``score`` all say the same thing:

* a stage built on a table whose producer is stale, damaged or incomplete is stale too (score on
  stale generations is as stale as they are), so no stage reads ``done`` above a stale one;
* a multi-part stage is done only when its last part is: collect's pass (``collect:pass``) without
  its selection (``collect``) is ``incomplete``.

Every hint printed for a stage (a rerun, a repair) is built here from the stage's own record, so
copied verbatim it reruns that stage as it was: same store, run, SAE, generator, corpus and budget.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import DEFAULT_STORE, PRODUCED_BY, Store

FAMILIES = ("collect", "generate", "score", "judge")
# worst first: what a family (or a summary over several stages) shows when any of its stages is so
BAD_STATES = ("damaged", "stale", "incomplete")
WAITING = "waiting (batch)"  # --batch: batches at the server, not collected yet (a rerun collects them)


def open_batches(journal: Path) -> tuple[int, str | None]:
    """Batches in a ``batches.jsonl`` journal (generate.batch) not collected yet, and the stage key
    its ``file`` events name (journals written before they did: None)."""
    from .jsonl import read_records

    open_: set[str] = set()
    stage = None
    for rec in read_records(journal):
        if rec.get("event") == "collected":
            open_.discard(str(rec.get("key")))
        elif rec.get("event") == "file":
            open_.add(str(rec.get("key")))
            stage = rec.get("stage") or stage
    return len(open_), stage


def _waiting(store: Store, run: str, sae: str, keys: list[str]) -> list[str]:
    """Stage keys with batches at the server: as their journal names them, else by their checkpoint
    folder (named after the stage key)."""
    folder = store.sae_dir(run, sae) / ".checkpoints"
    if not folder.is_dir():
        return []
    known = {store.checkpoint_dir(run, sae, k).name: k for k in keys}
    out = []
    for journal in sorted(folder.glob("*/batches.jsonl")):
        n, stage = open_batches(journal)
        if n:
            name = journal.parent.name
            out.append(stage or known.get(name) or name.replace("_", ":", 1))
    return out


def stage_states(store: Store, run: str, sae: str, *, verify: bool = False) -> dict[str, str]:
    """Each recorded stage key -> done | stale | damaged | incomplete, plus ``missing`` for the
    collect, generate and score families that have no record."""
    manifest = store.manifest(run, sae)
    records = {k: r for k, r in manifest.stages.items() if not k.startswith("_")}
    states = dict(store.status(run, sae, verify=verify))
    if "collect:pass" in records and "collect" not in records and states.get("collect:pass") == "done":
        states["collect:pass"] = "incomplete"  # the pass is half of collect: no features or examples yet
    producers: dict[str, list[str]] = {}
    for key, rec in records.items():
        for table in rec.outputs:
            producers.setdefault(table, []).append(key)
    changed = True
    while changed:  # staleness flows down the tables: a fixpoint over a graph of a handful of stages
        changed = False
        for key, rec in records.items():
            if states.get(key) != "done":
                continue
            upstream = [p for name in rec.inputs if name.startswith("table:")
                        for p in producers.get(name[len("table:"):], ()) if p != key]
            if any(states.get(p) in BAD_STATES for p in upstream):
                states[key] = "stale"
                changed = True
    for key in _waiting(store, run, sae, list(records)):
        if states.get(key) in (None, "done", "missing"):
            states[key] = WAITING
    if any(k.startswith("generate:") and v != "missing" for k, v in states.items()) and states.get("generate") == "missing":
        del states["generate"]
    return states


def family_state(states: dict[str, str], family: str) -> str:
    """One state for a stage family (generate has one record per generator): the worst of its
    stages; ``missing`` when none ran; collect without its selection is ``incomplete``."""
    mine = {k: s for k, s in states.items() if (k == family or k.startswith(family + ":")) and s != "missing"}
    if not mine:
        return "missing"
    for worst in BAD_STATES:
        if worst in mine.values():
            return worst
    if WAITING in mine.values():
        return WAITING
    if family == "collect" and "collect" not in mine:
        return "incomplete"
    return "done"


def family_states(states: dict[str, str]) -> dict[str, str]:
    return {f: family_state(states, f) for f in FAMILIES}


# ----- hints ----------------------------------------------------------------------------------

# collect's record config -> its CLI option, and the CLI default (an option at its default is left out)
_COLLECT_OPTIONS: tuple[tuple[str, str, Any], ...] = (
    ("corpus", "--corpus", "monology/pile-uncopyrighted"),
    ("split", "--split", "train"),
    ("text_column", "--text-column", "text"),
    ("total_tokens", "--total-tokens", 2_000_000),
    ("context_size", "--context-size", 128),
    ("n_top_ex_for_generation", "--n-top-ex-for-generation", 10),
    ("n_iw_ex_for_generation", "--n-iw-ex-for-generation", 5),
    ("dead_min_firings", "--dead-min-firings", 15),
    ("alive_rule", "--alive-rule", "original"),
    ("seed", "--seed", 42),
)
_GENERATE_OPTIONS: tuple[tuple[str, str, Any], ...] = (
    ("samples_per_feature", "--samples-per-feature", 10),
    ("temperature", "--temperature", 1.0),
    ("max_tokens", "--max-tokens", 2000),
    ("seed", "--seed", 42),
    ("base_url", "--base-url", None),
)
_SCORE_OPTIONS: tuple[tuple[str, str, Any], ...] = (
    ("threshold", "--threshold", 1e-6),
    ("max_length", "--max-length", 128),
)


def _store_args(store: Store) -> list[str]:
    return [] if str(store.root) in (DEFAULT_STORE, f"./{DEFAULT_STORE}") else ["--store", str(store.root)]


def _options(config: dict[str, Any], table: tuple[tuple[str, str, Any], ...]) -> list[str]:
    out: list[str] = []
    for key, flag, default in table:
        value = config.get(key)
        if key in config and value is not None and value != default:
            out += [flag, str(value)]
    return out


def _command(words: list[str]) -> str:
    return "sae-sens " + " ".join(shlex.quote(w) for w in words)


def _model_args(store: Store, run: str, sae: str, stage: str) -> list[str]:
    """The model flags (``--model``, ``--hook``, ``--dtype``) the stage last ran with."""
    rec = store.manifest(run, sae).stage(stage)
    flags = (rec.extra.get("model_options") if rec else None) or {}
    return [w for key in ("model", "hook", "dtype") if flags.get(key) for w in (f"--{key}", str(flags[key]))]


def collect_settings(store: Store, run: str, sae: str) -> dict[str, Any]:
    """The run's collect settings as recorded: the pass's (corpus, budget, windows), then the
    selection's (features, examples per feature) over them."""
    manifest = store.manifest(run, sae)
    out: dict[str, Any] = {}
    for stage in ("collect:pass", "collect"):
        rec = manifest.stage(stage)
        out.update(rec.config if rec else {})
    return out


def collect_command(store: Store, run: str, sae: str, config: dict[str, Any] | None,
                    feature_ids: list[int] | None = None) -> str:
    """The collect command that reuses this run's pass (same corpus, budget and window settings,
    the same model flags) and selects ``feature_ids`` (or the recorded selection)."""
    config = config or {}
    words = ["collect", *_store_args(store), "--run", run, "--sae", sae, *_options(config, _COLLECT_OPTIONS),
             *_model_args(store, run, sae, "collect:pass")]
    ids = feature_ids if feature_ids is not None else config.get("feature_ids")
    if ids:
        words += ["--feature-ids", ",".join(str(int(i)) for i in ids)]
    elif config.get("features") is not None and config.get("features") != 50:
        words += ["--features", str(config["features"])]
    return _command(words)


def stage_command(store: Store, run: str, sae: str, stage: str, *, force: bool = False) -> str:
    """The command that reruns ``stage`` (a manifest key such as ``generate:hf:x``) as it last ran."""
    rec = store.manifest(run, sae).stage(stage)
    config = rec.config if rec else {}
    family, _, label = stage.partition(":")
    if family == "collect":
        return collect_command(store, run, sae, collect_settings(store, run, sae)) + (" --force" if force else "")
    words = [family, *_store_args(store), "--run", run, "--sae", sae]
    if family == "generate":
        gen = str(config.get("generator") or label)
        if config.get("kind") == "table" and config.get("file"):
            words += ["--generator", gen, "--from-table", str(config["file"])]
        else:
            words += ["--generator", gen]
            if config.get("kind") != "corpus":
                words += _options(config, _GENERATE_OPTIONS)
            elif config.get("samples_per_feature") not in (None, 10):
                words += ["--samples-per-feature", str(config["samples_per_feature"])]
    elif family == "judge":
        words += ["--generator", str(config.get("generator") or label)]
        if config.get("judge"):
            words += ["--judge", str(config["judge"])]
    elif family == "score":
        words += _model_args(store, run, sae, "score")
        if config.get("generator"):
            words += ["--generator", str(config["generator"])]
        words += _options(config, _SCORE_OPTIONS)
    if force:
        words.append("--force")
    return _command(words)


def table_command(store: Store, run: str, sae: str, table: str, *, force: bool = False) -> str:
    """The command that rebuilds ``table``: its producer's stage as recorded, else the bare stage."""
    manifest = store.manifest(run, sae)
    writers = sorted(k for k, r in manifest.stages.items() if not k.startswith("_") and table in r.outputs)
    if not writers:
        return _command([PRODUCED_BY.get(table, "run"), *_store_args(store), "--run", run, "--sae", sae])
    if table in ("latents", "candidates") and "collect" in writers:
        writers = ["collect"]
    # a table several generators write (generations, queries): one command per writer, joined
    return " && ".join(stage_command(store, run, sae, w, force=force) for w in writers)


@dataclass(frozen=True)
class Notice:
    """A stage whose results a reader must not take at face value: plain data; the CLI renders it."""

    run: str
    sae: str
    stage: str
    state: str  # stale | damaged | incomplete
    command: str

    def line(self) -> str:
        why = {"stale": "an upstream table changed after it ran",
               "damaged": "a table it wrote no longer matches the manifest",
               "incomplete": "it stopped before its last table"}[self.state]
        return f"{self.run}/{self.sae}: {self.stage} is {self.state} ({why}); run `{self.command}`"


def notices(store: Store, pairs: list[tuple[str, str]]) -> list[Notice]:
    """One notice per run × SAE whose results are not all fresh: its most upstream bad stage (fixing
    it is the first step; the stages below it follow with `sae-sens run` or one command each)."""
    order = {"collect:pass": 0, "collect": 1}
    out = []
    for run, sae in pairs:
        if not store.manifest(run, sae).stages:
            continue
        states = stage_states(store, run, sae)
        bad = [k for k, s in states.items() if s in BAD_STATES]
        if not bad:
            continue
        first = min(bad, key=lambda k: (order.get(k, {"generate": 2, "judge": 3, "score": 4}.get(k.split(":")[0], 5)), k))
        state = states[first]
        out.append(Notice(run, sae, first, state, stage_command(store, run, sae, first, force=state == "damaged")))
    return out
