"""The blind pairs a human labels: the same pairs the LLM judge gets for the same seed.

Each pair is one generated text and one held-out real example (``judge.heldout``), with the
feature's marked examples as that generator saw them. The side of the real example is never sent
to the page; it stays here and in the ``labels`` rows.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..generate.prompts import feature_examples
from ..hashing import hash_config
from ..judge.core import assign_pair, held_out_by_feature
from ..judge.prompts import unmarked
from ..schemas import is_control, is_reference


@dataclass(frozen=True)
class Pair:
    pair_id: str
    run: str
    sae: str
    feature_index: int
    generator: str
    sample_index: int
    examples: tuple[str, ...]  # marked, as the generator saw them
    text: str  # the generated text (unmarked)
    real_text: str
    real_example: str  # <pool>:<rank>
    real_position: str  # A | B

    @property
    def text_a(self) -> str:
        return self.real_text if self.real_position == "A" else self.text

    @property
    def text_b(self) -> str:
        return self.text if self.real_position == "A" else self.real_text

    @property
    def trial(self) -> str:
        """``test`` (a generated text vs a real one) or ``calibration`` (the corpus control: both real)."""
        return "calibration" if is_control(self.generator) else "test"

    def public(self) -> dict[str, Any]:
        """What the page may see: nothing that says which text is real."""
        return {"pair_id": self.pair_id, "sae": self.sae, "feature_index": self.feature_index,
                "examples": list(self.examples), "text_a": self.text_a, "text_b": self.text_b}


_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>|</?s>|<pad>|<unk>|\[(?:CLS|SEP|PAD|UNK)\]")


def normalise_edges(text: str) -> str:
    """The same cut for a real window and a generated text, so their edges tell a rater nothing:
    special tokens (``<|im_end|>``, ``</s>``, ...) removed, and the first and last word fragments
    dropped (a real window starts and ends mid-word; a generated text does not)."""
    words = _SPECIAL.sub(" ", text).split()
    return " ".join(words[1:-1]) if len(words) > 2 else " ".join(words)


def build_pairs(run: str, sae: str, examples: pa.Table, generations: pa.Table, held_out: pa.Table,
                shown: dict[str, tuple[int, int, int]], seed: int = 42, *,
                include_control: bool = False) -> list[Pair]:
    """Every generated text with a held-out partner, in a seeded order that mixes features (a rater
    should not see one feature's texts in a row). Both texts of a pair are cut by ``normalise_edges``.

    The corpus control's texts are real, so a pair of one with a real example has no LLM-written side:
    they are left out unless ``include_control`` asks for such real-vs-real calibration trials."""
    held = held_out_by_feature(held_out)
    shown_by: dict[str, dict[int, list[str]]] = {}
    out = []
    for r in generations.select(["generator", "feature_index", "sample_index", "text"]).to_pylist():
        g, f, s = r["generator"], int(r["feature_index"]), int(r["sample_index"])
        if (is_control(g) and not include_control) or is_reference(g):  # no LLM-written side, or no positive
            continue
        text = normalise_edges(unmarked(r["text"] or "").strip())
        if not text or not held.get(f):
            continue
        if g not in shown_by:
            shown_by[g] = feature_examples(examples, *shown[g])
        if f not in shown_by[g]:
            continue
        real_id, real, pos = assign_pair(held[f], seed, g, f, s)
        real = normalise_edges(real)
        pid = hash_config([run, sae, g, f, s, real_id, pos])[:16]
        out.append(Pair(pid, run, sae, f, g, s, tuple(shown_by[g][f]), text, real, real_id, pos))
    out.sort(key=lambda p: (p.generator, p.feature_index, p.sample_index))
    random.Random(seed).shuffle(out)
    return out


PAIR_COLUMNS = ("order", "pair_id", "run", "sae", "feature_index", "generator", "trial", "sample_index",
                "real_position", "real_example", "text_a", "text_b", "text", "real_text", "examples")


def pairs_table(pairs: list[Pair]) -> pa.Table:
    """The pairs a study serves, in the order it serves them, with everything needed to audit it:
    what the page shows (examples, text A, text B) and what it never does (which side is real, the
    real text's candidate, the generator)."""
    rows = [{"order": i, "pair_id": p.pair_id, "run": p.run, "sae": p.sae, "feature_index": p.feature_index,
             "generator": p.generator, "trial": p.trial, "sample_index": p.sample_index,
             "real_position": p.real_position, "real_example": p.real_example, "text_a": p.text_a,
             "text_b": p.text_b, "text": p.text, "real_text": p.real_text, "examples": list(p.examples)}
            for i, p in enumerate(pairs)]
    schema = pa.schema([("order", pa.int64()), ("pair_id", pa.string()), ("run", pa.string()), ("sae", pa.string()),
                        ("feature_index", pa.int64()), ("generator", pa.string()), ("trial", pa.string()),
                        ("sample_index", pa.int64()), ("real_position", pa.string()), ("real_example", pa.string()),
                        ("text_a", pa.string()), ("text_b", pa.string()), ("text", pa.string()),
                        ("real_text", pa.string()), ("examples", pa.list_(pa.string()))])
    return pa.Table.from_pylist(rows, schema=schema)
