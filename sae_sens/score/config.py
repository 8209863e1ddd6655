"""How to score: the threshold, the relative levels and the length cap (``ScoreConfig``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

DEFAULT_RELATIVE_THRESHOLDS = (0.01, 0.1, 0.5)


@dataclass(frozen=True)
class ScoreConfig:
    threshold: float = 1e-6
    max_length: int = 128  # tokens per scored text, BOS included; longer texts are truncated
    generator: str | None = None  # score only this generator's samples (default: all)
    chunk_tokens: int = 4096  # tokens per SAE encode call: bounds memory, never changes results
    # thresholds as fractions of the feature's top activation: a text counts at level r when its max
    # activation is above r * top_activation (1e-6 alone lets noise-level activations count)
    relative_thresholds: tuple[float, ...] = DEFAULT_RELATIVE_THRESHOLDS

    def stage_config(self) -> dict[str, Any]:
        """What the results depend on (recorded in the manifest; chunking is not part of it)."""
        return {"threshold": self.threshold, "max_length": self.max_length, "generator": self.generator,
                "relative_thresholds": list(self.relative_thresholds)}

    def validate(self) -> None:
        bad = [r for r in self.relative_thresholds if not 0 < r <= 1]
        if bad:
            raise ConfigError(f"relative thresholds must be fractions of the top activation in (0, 1], got {bad}",
                              "e.g. --relative-thresholds 0.01,0.1,0.5")
        if self.max_length < 2:
            raise ConfigError(f"--max-length {self.max_length} leaves no token to score", "use at least 2 (BOS + 1)")
        if self.chunk_tokens < 1:
            raise ConfigError(f"chunk_tokens must be positive, got {self.chunk_tokens}")
