"""DuckDB views over the artifact store: one view per table, plus ``saes`` and ``runs``.

Table views read ``<store>/*/*/<table>.parquet`` lazily (nothing is loaded until a query
touches them) and are unioned by name with an empty relation of the table's schema, so every
column in ``schemas.SCHEMAS`` exists with its declared type even before the stage that writes
it has run, and a query never fails only because a stage is missing.

``saes`` (what each SAE is: model, width, architecture, sparsity, ...) and ``runs`` / ``stages``
(status of each stage) come from the manifests, which are small JSON files; they are read once
per connection, into Arrow tables registered with DuckDB.

SQL over the store is read-only and stays inside it: user SQL (``query``) may only be SELECT-like
statements (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN), checked with DuckDB's own
parser, and every connection is locked down after its views exist: no file access outside the store,
no extension installs, no changing settings (``lockdown_settings``). The ``duckdb`` CLI gets a
snapshot instead (``write_snapshot_sql``): a database of its own, opened read-only in safe mode.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import MissingTableError, SqlError, UsageError
from ..freshness import FAMILIES, Notice, family_state, notices, stage_states

# the name rules are names.py's (one copy): what a name says about its SAE, for the saes view
from ..names import ARCHITECTURES, MODEL_CODES, parse_sae_name, parse_width  # noqa: F401
from ..schemas import SCHEMAS
from ..store import MANIFEST, Store, read_manifest

TABLE_VIEWS = ("features", "latents", "examples", "candidates", "queries", "generations", "scores",
               "feature_stats", "judgments", "labels")
META_VIEWS = ("saes", "runs", "stages")
STAGE_FAMILIES = FAMILIES  # collect, generate, score, judge

SAES_SCHEMA = pa.schema([
    ("run", pa.string()),
    ("sae", pa.string()),
    ("model", pa.string()),
    ("width", pa.int64()),          # number of latents
    ("architecture", pa.string()),  # SAEBench code: relu, topk, btopk, matbtopk, gated, jumprelu, pan
    ("sparsity", pa.string()),      # SAEBench s0..s5, GemmaScope l0_<N>
    ("l0", pa.float64()),           # target or measured L0 when known
    ("layer", pa.int64()),
    ("hook", pa.string()),
    ("source", pa.string()),        # saebench | gemmascope | saelens | local | demo
    ("format", pa.string()),
    ("d_in", pa.int64()),
    ("d_sae", pa.int64()),
])
RUNS_SCHEMA = pa.schema(
    [("run", pa.string()), ("sae", pa.string())]
    + [(f, pa.string()) for f in STAGE_FAMILIES]
    + [(f"{f}_finished_at", pa.string()) for f in STAGE_FAMILIES]
    + [("n_generators", pa.int64())]
)
STAGES_SCHEMA = pa.schema([
    ("run", pa.string()),
    ("sae", pa.string()),
    ("stage", pa.string()),
    ("family", pa.string()),
    ("status", pa.string()),        # done | stale | damaged | incomplete
    ("started_at", pa.string()),
    ("finished_at", pa.string()),
    ("config_hash", pa.string()),
    ("rows", pa.int64()),           # rows written, over all its output tables
])


def _find_l0(obj: Any) -> float | None:
    """The first numeric ``l0`` anywhere inside SAEBench's nested eval_results."""
    if isinstance(obj, dict):
        v = obj.get("l0")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        for child in obj.values():
            found = _find_l0(child)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class Scope:
    """Which runs and SAEs a connection sees (None: all)."""

    runs: tuple[str, ...] | None = None
    saes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, runs: Iterable[str] | None = None, saes: Iterable[str] | None = None) -> Scope:
        return cls(tuple(runs) if runs else None, tuple(saes) if saes else None)

    def run_dirs(self, store: Store) -> list[Path]:
        return [store.run_dir(r) for r in (self.runs if self.runs is not None else store.runs())]

    def sae_dirs(self, store: Store) -> list[Path]:
        out = []
        for rd in self.run_dirs(store):
            if self.saes is not None:
                out += [store.sae_dir(rd.name, s) for s in self.saes]
            elif rd.is_dir():
                out += sorted(p for p in rd.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        return [d for d in out if d.is_dir()]

    @property
    def filtered(self) -> bool:
        return self.runs is not None or self.saes is not None


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def duckdb_type(t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return duckdb_type(t.value_type) + "[]"
    simple = {
        pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.int16(): "SMALLINT", pa.int8(): "TINYINT",
        pa.float64(): "DOUBLE", pa.float32(): "FLOAT", pa.bool_(): "BOOLEAN",
        pa.string(): "VARCHAR", pa.large_string(): "VARCHAR",
    }
    if t in simple:
        return simple[t]
    raise TypeError(f"no DuckDB type for {t}")


def _empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {duckdb_type(f.type)}) AS {f.name}" for f in schema)
    return f"SELECT {cols} WHERE false"


def table_view_sql(store: Store, table: str, scope: Scope, sae_dirs: Sequence[Path], *, as_table: bool = False) -> str:
    """``CREATE VIEW <table>`` over the store's Parquet files (an empty typed view when none exist);
    ``as_table`` copies the rows instead (``CREATE TABLE`` over the files found now, for a snapshot)."""
    schema = pa.schema([("run", pa.string()), ("sae", pa.string()), *SCHEMAS[table]])
    files = (d / f"{table}.parquet" for d in sae_dirs)
    body = _empty_select(schema)
    if scope.filtered or as_table:
        source = ", ".join(_sql_str(str(f.resolve())) for f in files if f.exists())
        source = f"[{source}]" if source else ""
    elif any(f.exists() for f in files):  # a glob: sees SAEs added later, and reads well in `sae-sens sql`
        source = _sql_str(str(store.root.resolve() / "*" / "*" / f"{table}.parquet"))
    else:
        source = ""
    if source:
        body += f" UNION ALL BY NAME SELECT * FROM read_parquet({source}, union_by_name=true)"
    return f"CREATE {'TABLE' if as_table else 'OR REPLACE VIEW'} {table} AS {body}"


Manifests = list[tuple[Path, dict[str, Any]]]


def read_manifests(sae_dirs: Sequence[Path]) -> Manifests:
    out = []
    for d in sae_dirs:
        path = d / MANIFEST
        data = read_manifest(path)  # a damaged one is a one-line error naming it
        if data is not None:
            out.append((path, data))
    return out


def saes_table(manifests: Manifests) -> pa.Table:
    """One row per run × SAE: the manifest's ``sae_info``, with gaps filled from the SAE's name."""
    rows = []
    for path, data in manifests:
        run, sae = data.get("run", path.parent.parent.name), data.get("sae", path.parent.name)
        info = data.get("sae_info") or {}
        parsed = parse_sae_name(str(info.get("name") or sae))
        info = {"model": info.get("model_id"), **info}  # SaeSpec calls it model_id
        row = {f: info.get(f) if info.get(f) is not None else parsed.get(f) for f in SAES_SCHEMA.names}
        row.update(run=run, sae=sae)
        row["width"] = row["width"] or info.get("d_sae")
        if row["l0"] is None:
            row["l0"] = _find_l0(info.get("eval_results"))
        rows.append({f.name: _coerce(row[f.name], f.type) for f in SAES_SCHEMA})
    return pa.Table.from_pylist(rows, schema=SAES_SCHEMA)


def _coerce(value: Any, type_: pa.DataType) -> Any:
    """A manifest value as the column's type (hand-edited or older manifests may say "4k" or 2)."""
    if value is None:
        return None
    try:
        if pa.types.is_integer(type_):
            return parse_width(value) if isinstance(value, str) else int(value)
        if pa.types.is_floating(type_):
            return float(value)
    except (TypeError, ValueError):
        return None
    return str(value)


def stage_tables(store: Store, manifests: Manifests) -> tuple[pa.Table, pa.Table]:
    """(``runs``, ``stages``): per run × SAE the status of each stage family, and per stage the detail.

    Status comes from ``freshness.stage_states`` and ``family_state`` (done, stale, damaged,
    incomplete, missing), the one rule ``sae-sens runs`` shows too.
    """
    runs, stages = [], []
    for path, data in manifests:
        run, sae = data.get("run", path.parent.parent.name), data.get("sae", path.parent.name)
        status = stage_states(store, run, sae)
        row: dict[str, Any] = {"run": run, "sae": sae}
        mine = []
        for key, rec in sorted((data.get("stages") or {}).items()):
            if key.startswith("_"):
                continue
            mine.append({
                "run": run, "sae": sae, "stage": key, "family": key.split(":", 1)[0], "status": status.get(key),
                "started_at": rec.get("started_at"), "finished_at": rec.get("finished_at"),
                "config_hash": rec.get("config_hash"),
                "rows": sum(int(o.get("rows", 0)) for o in (rec.get("outputs") or {}).values()),
            })
        for family in STAGE_FAMILIES:
            fam = [s for s in mine if s["family"] == family]
            row[family] = family_state(status, family)
            row[f"{family}_finished_at"] = max((s["finished_at"] or "" for s in fam), default="") or None
        row["n_generators"] = sum(s["family"] == "generate" for s in mine)
        stages += mine
        runs.append(row)
    return pa.Table.from_pylist(runs, schema=RUNS_SCHEMA), pa.Table.from_pylist(stages, schema=STAGES_SCHEMA)


def scope_notices(store: Store, runs: Sequence[str] | None = None,
                  saes: Sequence[str] | None = None) -> list[Notice]:
    """The stale, damaged or incomplete stages of every run × SAE a report over this scope reads
    (plain data: the CLI prints one warning line each)."""
    pairs = []
    for path, data in read_manifests(Scope.of(runs, saes).sae_dirs(store)):
        pairs.append((data.get("run", path.parent.parent.name), data.get("sae", path.parent.name)))
    return notices(store, pairs)


def _check_scope(store: Store, scope: Scope, dirs: Sequence[Path]) -> None:
    """A --run or --sae that matches nothing is a typo, not an empty report."""
    for run in scope.runs or ():
        Store.check_run(run)
        if not store.run_dir(run).is_dir():
            raise UsageError(f"no run {run!r} in store {store.root}",
                             f"runs there: {', '.join(store.runs()) or 'none yet'}")
    found = set(dirs)
    missing = [s for s in scope.saes or () if not any(store.sae_dir(rd.name, s) in found for rd in scope.run_dirs(store))]
    if missing:
        known = sorted({sae for _, sae in store.iter_run_saes()})
        raise UsageError(f"no SAE {', '.join(map(repr, missing))} in store {store.root}"
                         + (f" run {', '.join(scope.runs)}" if scope.runs else ""),
                         f"SAEs there: {', '.join(known) or 'none yet'}")


def _view_statements(store: Store, scope: Scope, status: bool, *,
                     as_table: bool = False) -> tuple[list[str], dict[str, pa.Table]]:
    """The table views' SQL, and the manifest-derived tables (saes; runs and stages if ``status``)."""
    dirs = scope.sae_dirs(store)
    _check_scope(store, scope, dirs)
    manifests = read_manifests(dirs)
    meta = {"saes": saes_table(manifests)}
    if status:
        meta["runs"], meta["stages"] = stage_tables(store, manifests)
    return [table_view_sql(store, t, scope, dirs, as_table=as_table) for t in TABLE_VIEWS], meta


# What user SQL may be: statements that only read (DESCRIBE, SHOW, SUMMARIZE and FROM-first parse as SELECT).
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")


def lockdown_settings(*, directories: Sequence[Path] = ()) -> list[str]:
    """SET statements that confine a connection: files only under ``directories``, no extension
    installs, every setting then locked. Run them after the views are defined; DuckDB refuses to
    re-enable external access or widen the allowed directories afterwards."""
    out = []
    if directories:
        out.append(f"SET allowed_directories = [{', '.join(_sql_str(str(d.resolve()) + '/') for d in directories)}]")
    return out + [
        "SET autoinstall_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ]


def check_read_only(sql: str) -> None:
    """Refuse, with one line, any statement that is not a read: COPY, ATTACH, INSTALL/LOAD, CREATE,
    DROP, INSERT, SET, EXPORT, ... (parsed by DuckDB itself, so comments and case do not matter)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise sql_error(e) from None
    for st in statements:
        kind = st.type.name
        if kind not in READ_ONLY_STATEMENTS:
            words = re.sub(r"--[^\n]*|/\*.*?\*/", " ", st.query, flags=re.S).split()
            verb = words[0].upper() if words else kind
            raise SqlError(f"{verb} is not allowed: SQL over the store is read-only",
                           "use SELECT (or DESCRIBE, SHOW, SUMMARIZE); to save a result pass --output FILE "
                           "or --format csv")


def connect(
    store: Store,
    runs: Sequence[str] | None = None,
    saes: Sequence[str] | None = None,
    *,
    status: bool = True,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per store table plus ``saes``, ``runs`` and ``stages``.

    ``runs`` / ``saes`` restrict every view to those runs and SAE names. ``status=False`` leaves
    out ``runs`` and ``stages``, which check every stage's inputs and outputs on disk: summaries
    do not need them.
    """
    statements, meta = _view_statements(store, Scope.of(runs, saes), status)
    con = duckdb.connect(":memory:")
    con.execute("SET parquet_metadata_cache = true")  # every query re-binds the views' file globs
    for sql in statements:
        con.execute(sql)
    for name, table in meta.items():
        con.register(f"_{name}_arrow", table)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM _{name}_arrow")
    for sql in lockdown_settings(directories=[store.root]):
        con.execute(sql)
    return con


def write_snapshot_sql(store: Store, folder: Path, runs: Sequence[str] | None = None,
                       saes: Sequence[str] | None = None) -> Path:
    """A script that copies every view's rows into tables of a fresh DuckDB database, for the ``duckdb``
    CLI (the manifest tables are written next to it as Parquet first, since the CLI cannot see Python
    objects).

    The CLI then opens that database ``-safe -readonly``: external access is off and locked from its first
    statement, so nothing typed there can write a file (not even over a store table, which ``allowed_paths``
    alone would permit: DuckDB does not tell a read of an allowed file from a write to it), attach,
    install, or run a shell command; the store's files are not open at all while it runs.
    """
    scope = Scope.of(runs, saes)
    statements, meta = _view_statements(store, scope, status=True, as_table=True)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [sql + ";" for sql in statements]
    for name, table in meta.items():
        pq.write_table(table, folder / f"{name}.parquet")
        lines.append(f"CREATE TABLE {name} AS SELECT * FROM read_parquet({_sql_str(str(folder / f'{name}.parquet'))});")
    path = folder / "snapshot.sql"
    path.write_text("\n".join(lines) + "\n")
    return path


def snapshot_bytes(store: Store, runs: Sequence[str] | None = None, saes: Sequence[str] | None = None) -> int:
    """How many bytes of Parquet a snapshot of this scope copies (to say so when it takes a while)."""
    total = 0
    for d in Scope.of(runs, saes).sae_dirs(store):
        for t in TABLE_VIEWS:
            try:
                total += (d / f"{t}.parquet").stat().st_size
            except OSError:
                pass
    return total


def has_results(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute("SELECT count(*) FROM saes").fetchall()[0][0])


def require_results(con: duckdb.DuckDBPyConnection, store: Store, table: str = "feature_stats") -> None:
    """Raise a clear error when there is nothing to report yet."""
    n = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    if n:
        return
    if not has_results(con):
        raise MissingTableError(
            f"no runs found in store {store.root}",
            "run `sae-sens run --sae NAME` (or collect, generate and score) first, or pass --store",
        )
    raise MissingTableError(
        f"no {table} in store {store.root} yet",
        "run `sae-sens score` (or `sae-sens run`) for these SAEs first",
    )


def sql_error(e: duckdb.Error) -> SqlError:
    """A DuckDB error as one line: its first line plus any "did you mean" hint, without the caret
    diagram or long candidate-function lists."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    keep = lines[:1] + [line for line in lines[1:] if line.startswith(("Candidate bindings", "Did you mean"))]
    return SqlError(
        "SQL error: " + " ".join(keep),
        f"views: {', '.join(TABLE_VIEWS + META_VIEWS)}; list columns with --sql \"DESCRIBE scores\"",
    )


def query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Run SQL over the views; DuckDB errors become ``SqlError`` (one clear line)."""
    if not sql.strip():
        raise SqlError("empty SQL query", 'pass a query, e.g. --sql "SELECT * FROM saes"')
    check_read_only(sql)
    try:
        rel = con.sql(sql, params=list(params) if params else None)
        return pa.table({}) if rel is None else rel.to_arrow_table()
    except duckdb.Error as e:
        raise sql_error(e) from None
