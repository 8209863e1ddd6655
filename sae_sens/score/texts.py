"""The text rules of scoring: marks stripped, the original tool's example builder byte for byte,
tokens decoded one by one, a window's ids after a fresh BOS."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def strip_marks(text: str) -> str:
    """The original's mark stripping before scoring: every ``{{`` removed, then every ``}}``."""
    return text.replace("{{", "").replace("}}", "")


def original_text(marked: str) -> str:
    """A marked text without token ids (a SAEBench import) as the original re-scores it: marks
    stripped, newlines as ``↵``."""
    return strip_marks(marked.replace("\n", "↵"))


def original_marked_text(str_tokens: Sequence[str], activations: Sequence[float] | None, threshold: float) -> str:
    """An example as the original tool's builder writes it (``Example.to_str(mark_toks=True)``, its
    ``Sequence`` column): tokens decoded one by one, each one with activation > ``threshold``
    wrapped in its own ``{{ }}``, every U+FFFD dropped, newlines as ``↵``."""
    acts = activations if activations is not None and len(activations) == len(str_tokens) else None
    marked = "".join("{{" + tok + "}}" if acts is not None and acts[i] > threshold else tok
                     for i, tok in enumerate(str_tokens))
    return marked.replace("\ufffd", "").replace("\n", "↵")


def original_builder_text(str_tokens: Sequence[str], activations: Sequence[float] | None, threshold: float) -> str:
    """The text the original tool scores for an example, byte for byte: its builder's marked text
    (``original_marked_text``) after its scoring step's mark stripping. The marks matter only where
    tokens hold braces."""
    return strip_marks(original_marked_text(str_tokens, activations, threshold))


def decode_each(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> list[list[str]]:
    """Every token decoded on its own, as TransformerLens's ``to_str_tokens`` (which the original
    builder uses): a piece of a multi-byte character decodes to U+FFFD."""
    unique = sorted({int(t) for s in seqs for t in s})
    strs = tokenizer.batch_decode([[t] for t in unique], clean_up_tokenization_spaces=False) if unique else []
    of = dict(zip(unique, strs, strict=True))
    return [[of[int(t)] for t in s] for s in seqs]


def window_ids(token_ids: Sequence[int], bos_id: int | None, max_length: int) -> tuple[list[int], bool]:
    """A collected window as model input: BOS + its exact tokens, truncated at ``max_length``."""
    ids = list(token_ids)
    if bos_id is not None and (not ids or ids[0] != bos_id):
        ids = [bos_id, *ids]
    return ids[:max_length], len(ids) > max_length
