"""Corpora: where documents come from, and how they become fixed-length token windows.

Sources (``resolve_corpus``):

- a Hugging Face dataset name, streamed (``datasets.load_dataset(name, split=, streaming=True)``);
- a local file or folder: ``.txt`` (one document per file), ``.jsonl`` / ``.json`` / ``.csv`` /
  ``.parquet`` (one document per row, read from the text column);
- a Parquet table of pre-tokenized windows (a ``token_ids`` list column), used as is;
- ``demo:<id>``, resolved to a local file through ``CORPUS_RESOLVERS``.

Windowing follows SAEBench's tokenisation: every document's tokens are followed by EOS, the
documents are concatenated, chunked into ``context_size - 1`` pieces, and each piece is prefixed
with the model's BOS. For every position the window keeps the source document index and the token
offset inside that document (-1 for the BOS/EOS tokens we add), so examples can say where they
came from.

Windows are cached under ``<store>/_cache/windows``, keyed by tokenizer, corpus, token budget and
context size, so SAEs that read the same model share one tokenisation.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import assets
from .errors import CorpusError
from .hashing import hash_bytes, hash_config, hash_file
from .locking import file_lock
from .progress import NULL_PROGRESS, ProgressSink
from .store import atomic_write_parquet

DEFAULT_DATASET = "monology/pile-uncopyrighted"
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
_DOC_BATCH = 256  # documents tokenized per tokenizer call


# Corpus ids with a prefix resolve to a local file first (e.g. "demo:wiki" -> a .jsonl of summaries);
# the prefixes are registered in ``assets``.
CORPUS_RESOLVERS = assets.CORPUS_RESOLVERS


@dataclass(frozen=True)
class CorpusSource:
    """A resolved corpus: what to read, and a fingerprint that changes when its content does."""

    label: str  # what the user gave
    kind: str  # hf | files | windows
    split: str
    text_column: str
    files: tuple[Path, ...] = ()
    fingerprint: str = ""

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"corpus": self.label, "kind": self.kind}
        if self.kind == "hf":
            d.update(split=self.split, text_column=self.text_column)
        elif self.kind == "files":
            d["text_column"] = self.text_column
        return d


def _list_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(
            f"folder {path} has no corpus files",
            f"put {', '.join(TEXT_SUFFIXES)} files in it, or pass a dataset name",
        )
    return files


def _is_pretokenized(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" and "token_ids" in pq.read_schema(path).names


def resolve_corpus(corpus: str, *, split: str = "train", text_column: str = "text") -> CorpusSource:
    """Decide what ``corpus`` names (demo id, local path, pre-tokenized table or HF dataset)."""
    label = corpus
    for prefix, fn in CORPUS_RESOLVERS.items():
        if corpus.startswith(prefix):
            corpus = str(fn(corpus))
    path = Path(corpus).expanduser()
    if path.exists():
        files = _list_files(path)
        kind = "windows" if len(files) == 1 and _is_pretokenized(files[0]) else "files"
        # Content hashes, not mtimes: a copied store stays fresh, an edited file does not.
        fp = hash_config({"kind": kind, "column": text_column,
                          "files": [[str(f.relative_to(path) if path.is_dir() else f.name), hash_file(f)]
                                    for f in files]})
        return CorpusSource(label, kind, split, text_column, tuple(files), fp)
    if corpus.startswith((".", "/", "~")) or corpus.endswith(TEXT_SUFFIXES):
        raise CorpusError(f"corpus file {corpus} does not exist", "check the path, or pass a Hugging Face dataset name")
    fp = hash_config({"kind": "hf", "name": corpus, "split": split, "column": text_column})
    return CorpusSource(label, "hf", split, text_column, (), fp)


# ----- documents ----------------------------------------------------------------------------------
def _column(row: dict[str, Any], column: str, where: str) -> str:
    if column not in row:
        raise CorpusError(f"{where} has no column {column!r} (columns: {', '.join(map(str, row))})",
                          "pass --text-column with the column that holds the text")
    value = row[column]
    return "" if value is None else str(value)


def _file_documents(path: Path, column: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            head = f.read(1)
            f.seek(0)
            if suffix == ".json" and head == "[":
                rows = json.load(f)
            else:
                rows = (json.loads(line) for line in f if line.strip())
            for row in rows:
                yield row if isinstance(row, str) else _column(row, column, str(path))
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                yield _column(row, column, str(path))
    elif suffix == ".parquet":
        pf = pq.ParquetFile(path)
        if column not in pf.schema_arrow.names:
            raise CorpusError(f"{path} has no column {column!r} (columns: {', '.join(pf.schema_arrow.names)})",
                              "pass --text-column with the column that holds the text")
        for batch in pf.iter_batches(columns=[column], batch_size=1024):
            yield from (t or "" for t in batch.column(0).to_pylist())


def _hf_documents(source: CorpusSource) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(source.label, split=source.split, streaming=True)
    except Exception as e:  # network, unknown name, bad split: all say the same thing to the user
        raise CorpusError(
            f"could not stream dataset {source.label!r} (split {source.split!r}): {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            "check the dataset name and --split, or pass a local file or folder with --corpus",
        ) from e
    for row in ds:
        yield _column(row, source.text_column, f"dataset {source.label}")


def iter_documents(source: CorpusSource) -> Iterator[str]:
    if source.kind == "hf":
        yield from _hf_documents(source)
    else:
        for f in source.files:
            yield from _file_documents(f, source.text_column)


# ----- windows ------------------------------------------------------------------------------------
@dataclass
class Windows:
    """Fixed-length token windows plus, per position, the source document and its token offset."""

    token_ids: np.ndarray  # [n, context] int32
    doc_index: np.ndarray  # [n, context] int64, -1 where we inserted BOS
    doc_pos: np.ndarray  # [n, context] int32, -1 for inserted BOS/EOS
    corpus_id: str = ""

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def context_size(self) -> int:
        return int(self.token_ids.shape[1])

    def to_table(self) -> pa.Table:
        n, c = self.token_ids.shape

        def fixed(a: np.ndarray, t: pa.DataType) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), t), c)

        return pa.table({
            "token_ids": fixed(self.token_ids, pa.int32()),
            "doc_index": fixed(self.doc_index, pa.int64()),
            "doc_pos": fixed(self.doc_pos, pa.int32()),
        })

    @classmethod
    def from_table(cls, table: pa.Table, corpus_id: str = "") -> Windows:
        def arr(name: str, dtype: Any) -> np.ndarray:
            col = table[name].combine_chunks()
            return col.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(table.num_rows, -1)

        return cls(arr("token_ids", np.int32), arr("doc_index", np.int64), arr("doc_pos", np.int32), corpus_id)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return f"{getattr(tokenizer, 'name_or_path', '')}#{hash_bytes(json.dumps(vocab).encode())}"


def window_documents(
    docs: Iterator[str],
    tokenizer: Any,
    *,
    bos_id: int | None,
    total_tokens: int,
    context_size: int,
    label: str = "corpus",
    progress: ProgressSink = NULL_PROGRESS,
) -> Windows:
    """Tokenize documents into ``total_tokens // context_size`` windows (see the module docstring)."""
    n_windows = total_tokens // context_size
    if n_windows < 1:
        raise CorpusError(f"--total-tokens {total_tokens} is less than one window of {context_size} tokens",
                          "raise --total-tokens or lower --context-size")
    prefix = [bos_id] if bos_id is not None else []
    piece = context_size - len(prefix)
    need = n_windows * piece
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos_id
    ids = np.empty(need, np.int32)
    dix = np.empty(need, np.int64)
    dpos = np.empty(need, np.int32)
    filled, n_docs = 0, 0
    progress.start("tokenize", need)

    def flush(batch: list[str]) -> None:
        nonlocal filled, n_docs
        for toks in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            toks = list(toks) + ([eos] if eos is not None else [])
            take = min(len(toks), need - filled)
            ids[filled:filled + take] = toks[:take]
            dix[filled:filled + take] = n_docs
            dpos[filled:filled + take] = np.arange(take)
            if eos is not None and take == len(toks):
                dpos[filled + take - 1] = -1
            filled += take
            n_docs += 1
            progress.advance("tokenize", take)
            if filled >= need:
                return

    batch: list[str] = []
    for doc in docs:
        if doc.strip():
            batch.append(doc)
        if len(batch) >= _DOC_BATCH:
            flush(batch)
            batch = []
            if filled >= need:
                break
    if batch and filled < need:
        flush(batch)
    if filled < need:
        raise CorpusError(
            f"{label} has only {filled:,} tokens ({n_docs:,} documents); {need:,} are needed for "
            f"{n_windows:,} windows of {context_size}",
            f"pass --total-tokens {max(filled // piece, 0) * context_size} or less, or a bigger corpus"
            if filled >= piece else "pass a corpus with text in it (check --text-column)",
        )
    progress.finish("tokenize")
    shape = (n_windows, piece)
    ids2, dix2, dpos2 = ids.reshape(shape), dix.reshape(shape), dpos.reshape(shape)
    if prefix:
        col = np.full((n_windows, 1), -1)
        ids2 = np.concatenate([np.full((n_windows, 1), bos_id, np.int32), ids2], 1)
        dix2 = np.concatenate([col.astype(np.int64), dix2], 1)
        dpos2 = np.concatenate([col.astype(np.int32), dpos2], 1)
    return Windows(ids2, dix2, dpos2)


def _pretokenized(path: Path, total_tokens: int, context_size: int) -> Windows:
    table = pq.read_table(path, columns=["token_ids"])
    n_windows = total_tokens // context_size
    rows = [r for r in table["token_ids"].to_pylist() if r is not None]
    if len(rows) < n_windows:
        found = sum(len(r) for r in rows)
        raise CorpusError(
            f"{path} has only {len(rows):,} windows ({found:,} tokens); {n_windows:,} are needed",
            f"pass --total-tokens {len(rows) * context_size} or less",
        )
    rows = rows[:n_windows]
    if any(len(r) < context_size for r in rows):
        raise CorpusError(f"{path} has windows shorter than --context-size {context_size}",
                          "pass the --context-size the table was tokenized with")
    ids = np.asarray([r[:context_size] for r in rows], np.int32)
    doc = np.repeat(np.arange(n_windows, dtype=np.int64)[:, None], context_size, 1)
    pos = np.repeat(np.arange(context_size, dtype=np.int32)[None, :], n_windows, 0)
    return Windows(ids, doc, pos)


def load_windows(
    source: CorpusSource,
    tokenizer: Any,
    *,
    bos_id: int | None,
    total_tokens: int,
    context_size: int,
    cache_dir: Path | None = None,
    progress: ProgressSink = NULL_PROGRESS,
) -> Windows:
    """The corpus as windows, from the on-disk cache when the same tokenisation was done before."""
    key = hash_config({
        "tokenizer": tokenizer_fingerprint(tokenizer), "bos": bos_id, "corpus": source.fingerprint,
        "total_tokens": total_tokens, "context_size": context_size,
    })
    corpus_id = f"{source.label}#{source.fingerprint}"
    path = cache_dir / "windows" / f"{key}.parquet" if cache_dir is not None else None
    if path is not None and path.exists():
        return Windows.from_table(pq.read_table(path), corpus_id)
    # the shared cache's lock: two collects of one corpus tokenise it once, the second reads the first's
    with file_lock(path.with_suffix(".lock"), what=f"tokenizing {source.label}") if path else nullcontext():
        if path is not None and path.exists():
            return Windows.from_table(pq.read_table(path), corpus_id)
        if source.kind == "windows":
            windows = _pretokenized(source.files[0], total_tokens, context_size)
        else:
            windows = window_documents(iter_documents(source), tokenizer, bos_id=bos_id, total_tokens=total_tokens,
                                       context_size=context_size, label=f"corpus {source.label!r}", progress=progress)
        windows.corpus_id = corpus_id
        if path is not None:
            atomic_write_parquet(path, windows.to_table())
    return windows


def pack_windows(lm: Any, docs: list[str], n_tokens: int, context: int = 128) -> list[list[int]]:
    """Windows exactly as collect reads a corpus (``window_documents``), enough for ``n_tokens``
    counted tokens of ``lm`` (a ``HookedLM``; BOS/EOS positions do not count, hence the margin)."""
    n_windows = -(-int(n_tokens * 1.2) // (context - 1))
    windows = window_documents(iter(docs), lm.tokenizer, bos_id=lm.bos_id, total_tokens=n_windows * context,
                               context_size=context)
    return [[int(t) for t in row] for row in windows.token_ids]
