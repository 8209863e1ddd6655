"""Corpora: every source kind, the window layout, the on-disk cache and the too-small error."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_sens import corpus as corpus_mod
from sae_sens.corpus import CORPUS_RESOLVERS, iter_documents, load_windows, resolve_corpus, window_documents
from sae_sens.errors import CorpusError
from tests.support.testing import build_tokenizer, tiny_corpus

DOCS = tiny_corpus(40, seed=3)


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tokenizer(DOCS)


def test_windows_layout_keeps_document_and_offset(tok: Any) -> None:
    w = window_documents(iter(DOCS), tok, bos_id=tok.bos_token_id, total_tokens=20 * 32, context_size=32)
    assert w.token_ids.shape == (20, 32) and w.context_size == 32 and len(w) == 20
    assert (w.token_ids[:, 0] == tok.bos_token_id).all() and (w.doc_index[:, 0] == -1).all()
    stream = [t for d in DOCS for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    assert w.token_ids[:, 1:].reshape(-1).tolist() == stream[: 20 * 31]
    for i in range(20):
        for p in range(1, 32):
            d, off = int(w.doc_index[i, p]), int(w.doc_pos[i, p])
            doc_ids = tok(DOCS[d], add_special_tokens=False)["input_ids"]
            if off == -1:  # the EOS we appended after the document
                assert w.token_ids[i, p] == tok.eos_token_id
            else:
                assert doc_ids[off] == w.token_ids[i, p]
    round_trip = type(w).from_table(w.to_table())
    assert (round_trip.token_ids == w.token_ids).all() and (round_trip.doc_pos == w.doc_pos).all()


def test_too_small_corpus_says_how_many_tokens(tok: Any) -> None:
    with pytest.raises(CorpusError) as e:
        window_documents(iter(DOCS[:2]), tok, bos_id=tok.bos_token_id, total_tokens=100_000, context_size=32)
    n = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in DOCS[:2])
    assert f"only {n:,} tokens" in e.value.message and "--total-tokens" in e.value.one_line()
    with pytest.raises(CorpusError, match="only 0 tokens"):
        window_documents(iter(["", "  "]), tok, bos_id=tok.bos_token_id, total_tokens=64, context_size=32)


def write_formats(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.txt").write_text(DOCS[0])
    (folder / "b.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS[1:4]))
    with open(folder / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerows([[i, d] for i, d in enumerate(DOCS[4:6])])
    pq.write_table(pa.table({"body": DOCS[6:9]}), folder / "d.parquet")
    (folder / "ignored.bin").write_bytes(b"\0\1")


def test_local_folder_of_every_format(tmp_path: Path) -> None:
    write_formats(tmp_path / "docs")
    src = resolve_corpus(str(tmp_path / "docs"), text_column="body")
    assert src.kind == "files" and [f.name for f in src.files] == ["a.txt", "b.jsonl", "c.csv", "d.parquet"]
    assert list(iter_documents(src)) == DOCS[:9]
    with pytest.raises(CorpusError, match="no column 'text'"):
        list(iter_documents(resolve_corpus(str(tmp_path / "docs" / "b.jsonl"))))


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        resolve_corpus(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no corpus files"):
        resolve_corpus(str(tmp_path / "empty"))


def test_pretokenized_windows_are_used_as_is(tmp_path: Path, tok: Any) -> None:
    rows = [[1] + list(range(10 + i, 41 + i)) for i in range(5)]
    pq.write_table(pa.table({"token_ids": rows}), tmp_path / "win.parquet")
    src = resolve_corpus(str(tmp_path / "win.parquet"))
    assert src.kind == "windows"
    w = load_windows(src, tok, bos_id=1, total_tokens=4 * 32, context_size=32)
    assert w.token_ids.tolist() == rows[:4]
    with pytest.raises(CorpusError, match="only 5 windows"):
        load_windows(src, tok, bos_id=1, total_tokens=6 * 32, context_size=32)


def test_windows_cache_is_reused_and_keyed(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    cache = tmp_path / "cache"
    first = load_windows(resolve_corpus(str(path)), tok, bos_id=tok.bos_token_id, total_tokens=320,
                         context_size=32, cache_dir=cache)
    assert len(list((cache / "windows").glob("*.parquet"))) == 1

    def no_tokenizing(*_: Any, **__: Any) -> None:
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(corpus_mod, "window_documents", no_tokenizing)
    again = load_windows(resolve_corpus(str(path)), tok, bos_id=tok.bos_token_id, total_tokens=320,
                         context_size=32, cache_dir=cache)
    assert (again.token_ids == first.token_ids).all() and (again.doc_index == first.doc_index).all()
    monkeypatch.undo()
    load_windows(resolve_corpus(str(path)), tok, bos_id=tok.bos_token_id, total_tokens=640, context_size=32,
                 cache_dir=cache)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in reversed(DOCS)))
    changed = load_windows(resolve_corpus(str(path)), tok, bos_id=tok.bos_token_id, total_tokens=320,
                           context_size=32, cache_dir=cache)
    assert len(list((cache / "windows").glob("*.parquet"))) == 3
    assert (changed.token_ids != first.token_ids).any()


def test_demo_prefix_resolves_to_a_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "wiki.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    monkeypatch.setitem(CORPUS_RESOLVERS, "demo:", lambda _id: path)
    src = resolve_corpus("demo:wiki")
    assert src.label == "demo:wiki" and src.kind == "files" and list(iter_documents(src)) == ["hello"]


def test_hugging_face_dataset_is_streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    seen: dict[str, Any] = {}

    def fake_load(name: str, split: str, streaming: bool) -> list[dict[str, str]]:
        seen.update(name=name, split=split, streaming=streaming)
        return [{"content": "one"}, {"content": "two"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    src = resolve_corpus("someone/corpus", split="validation", text_column="content")
    assert src.kind == "hf" and list(iter_documents(src)) == ["one", "two"]
    assert seen == {"name": "someone/corpus", "split": "validation", "streaming": True}
    assert src.fingerprint != resolve_corpus("someone/corpus", split="train", text_column="content").fingerprint
