"""The collect stage's configuration and its stage names: what every part of collect agrees on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..corpus import DEFAULT_DATASET
from ..errors import ConfigError

PASS_STAGE = "collect:pass"
PASS_TASK = "collect pass"  # the progress bar of the pass
SELECT_STAGE = "collect"
ALIVE_RULES = ("original", "count")
# How the pass draws its importance-weighted peaks (the tracker's keyed A-Res). Part of the pass's
# config: a pass drawn another way is recomputed once, never mixed with this one.
SAMPLER = "hash-ares/1"


@dataclass(frozen=True)
class CollectConfig:
    corpus: str = DEFAULT_DATASET
    split: str = "train"
    text_column: str = "text"
    total_tokens: int = 2_000_000
    context_size: int = 128
    features: int | None = 50  # sample this many alive latents (seed) ...
    feature_ids: tuple[int, ...] | None = None  # ... or take exactly these
    n_top_ex_for_generation: int = 10
    n_iw_ex_for_generation: int = 5
    n_top_candidates: int = 12
    n_iw_candidates: int = 7
    buffer: int = 10
    dead_min_firings: int = 15
    alive_rule: str = "original"  # see alive_latents
    act_threshold_frac: float = 0.01
    seed: int = 42
    # latents tracked at once (None: 256 on a CPU, the whole width up to 65,536 on a GPU); bounds the
    # [batch, context, chunk] temporaries. Results do not depend on it.
    latent_chunk: int | None = None
    # A selection grows: features already selected in the run keep their place (and, drawn per feature,
    # the very same examples) unless this asks to start over. Not part of any stage's config.
    replace: bool = False

    def __post_init__(self) -> None:
        if self.context_size <= 2 * self.buffer:
            raise ConfigError(f"--context-size {self.context_size} leaves no room for peaks",
                              f"use a context size above {2 * self.buffer} (twice the {self.buffer}-token buffer)")
        if self.n_top_ex_for_generation > self.n_top_candidates or self.n_iw_ex_for_generation > self.n_iw_candidates:
            raise ConfigError("more examples per feature requested than candidates drawn",
                              f"use at most {self.n_top_candidates} top and {self.n_iw_candidates} importance-weighted")
        if self.features is not None and self.features < 1:
            raise ConfigError("--features must be at least 1")
        if self.alive_rule not in ALIVE_RULES:
            raise ConfigError(f"unknown alive rule {self.alive_rule!r}", f"use one of: {', '.join(ALIVE_RULES)}")

    def pass_config(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "split": self.split, "text_column": self.text_column,
                "total_tokens": self.total_tokens, "context_size": self.context_size, "buffer": self.buffer,
                "n_top_candidates": self.n_top_candidates, "n_iw_candidates": self.n_iw_candidates,
                "seed": self.seed, "sampler": SAMPLER}

    def select_config(self) -> dict[str, Any]:
        return {**self.pass_config(), "features": self.features,
                "feature_ids": list(self.feature_ids) if self.feature_ids is not None else None,
                "n_top_ex_for_generation": self.n_top_ex_for_generation,
                "n_iw_ex_for_generation": self.n_iw_ex_for_generation,
                "dead_min_firings": self.dead_min_firings, "alive_rule": self.alive_rule,
                "act_threshold_frac": self.act_threshold_frac}
