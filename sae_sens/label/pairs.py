"""The blind pairs a human labels: the same pairs the LLM judge gets for the same seed.

Each pair is one generated text and one held-out real example (``judge.heldout``), with the
feature's marked examples as that generator saw them. The side of the real example is never sent
to the page; it stays here and in the ``labels`` rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..generate.prompts import feature_examples
from ..hashing import hash_config
from ..judge.core import assign_pair, held_out_by_feature
from ..judge.prompts import unmarked


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

    def public(self) -> dict[str, Any]:
        """What the page may see: nothing that says which text is real."""
        return {"pair_id": self.pair_id, "sae": self.sae, "feature_index": self.feature_index,
                "examples": list(self.examples), "text_a": self.text_a, "text_b": self.text_b}


def build_pairs(run: str, sae: str, examples: pa.Table, generations: pa.Table, held_out: pa.Table,
                shown: dict[str, tuple[int, int, int]], seed: int = 42) -> list[Pair]:
    """Every generated text with a held-out partner, in a seeded order that mixes features (a rater
    should not see one feature's texts in a row)."""
    held = held_out_by_feature(held_out)
    shown_by: dict[str, dict[int, list[str]]] = {}
    out = []
    for r in generations.select(["generator", "feature_index", "sample_index", "text"]).to_pylist():
        g, f, s = r["generator"], int(r["feature_index"]), int(r["sample_index"])
        text = unmarked(r["text"] or "").strip()
        if not text or not held.get(f):
            continue
        if g not in shown_by:
            shown_by[g] = feature_examples(examples, *shown[g])
        if f not in shown_by[g]:
            continue
        real_id, real, pos = assign_pair(held[f], seed, g, f, s)
        pid = hash_config([run, sae, g, f, s, real_id, pos])[:16]
        out.append(Pair(pid, run, sae, f, g, s, tuple(shown_by[g][f]), text, real, real_id, pos))
    out.sort(key=lambda p: (p.generator, p.feature_index, p.sample_index))
    random.Random(seed).shuffle(out)
    return out
