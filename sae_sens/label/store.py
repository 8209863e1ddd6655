"""The pairs of one run × SAE, from the store (held-out examples are rebuilt as for the judge)."""

from __future__ import annotations

import pyarrow.compute as pc

from ..errors import ConfigError
from ..judge.core import shown_settings
from ..judge.heldout import held_out_examples
from ..progress import NULL_PROGRESS, ProgressSink
from ..stages import ModelOptions
from ..store import Store
from .pairs import Pair, build_pairs


def label_pairs(store: Store, run: str, sae: str, *, generator: str | None = None, seed: int = 42,
                calibration: bool = False, opts: ModelOptions | None = None,
                progress: ProgressSink = NULL_PROGRESS) -> list[Pair]:
    """The pairs of one run × SAE in the order a rater gets them; ``calibration`` adds the corpus
    control's real-vs-real trials (``build_pairs``)."""
    gens = store.read_table(run, sae, "generations")
    present = sorted(set(gens["generator"].to_pylist()))
    if generator is not None:
        if generator not in present:
            raise ConfigError(f"no generations from generator {generator!r}",
                              f"generators in this run: {', '.join(present)}")
        gens = gens.filter(pc.equal(gens["generator"], generator))
    held = held_out_examples(store, run, sae, opts or ModelOptions(), progress)
    shown = {g: shown_settings(store, run, sae, g) for g in set(gens["generator"].to_pylist())}
    return build_pairs(run, sae, store.read_table(run, sae, "examples"), gens, held, shown, seed,
                       include_control=calibration)
