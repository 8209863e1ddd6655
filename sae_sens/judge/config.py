"""What a judge run is asked to do: which LLM judges, which generators' texts, which checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..generate.config import DEFAULT_GENERATOR, GenerateConfig, GeneratorSpec, parse_generator, public_url

TASKS = ("pair", "direct")


@dataclass(frozen=True)
class JudgeConfig:
    """Settings of one judge run. As for generate, only what changes the requests goes into the
    manifest's config hash; concurrency, retries and budget do not."""

    judge: str = DEFAULT_GENERATOR  # openai:<model> | hf:<id or folder>: any generate backend
    generator: str | None = None  # judge only this generator's texts (default: every generator's)
    tasks: tuple[str, ...] = TASKS  # pair: blind pairwise test; direct: does the text show the pattern?
    max_texts: int | None = None  # judge at most this many non-blank texts per feature and generator
    base_url: str | None = None
    temperature: float = 0.0
    max_tokens: int = 128
    seed: int = 42  # pair order and held-out assignment, and the backend's sampling seed
    max_workers: int = 10
    timeout: float = 60.0
    max_retries: int = 6
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0
    price_in: float | None = None
    price_out: float | None = None
    max_cost: float | None = None
    batch_size: int = 8  # hf
    device: str | None = None  # hf
    dtype: str | None = None  # hf
    batch: bool = False  # --batch: the OpenAI Batch API (see generate.batch)
    batch_wait: bool = True
    batch_poll_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_texts is not None and self.max_texts < 1:
            raise UsageError(f"--max-texts must be at least 1, not {self.max_texts}", "omit it to judge every text")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise UsageError(f"unknown judge task {', '.join(bad) or '(none)'}", f"use {' and/or '.join(TASKS)}")
        if self.spec.kind == "table":
            raise UsageError(f"{self.judge!r} cannot judge: a table has no answers to give",
                             "use --judge openai:<model> or hf:<model>")
        self.generate_config()  # its checks (max_tokens, workers, prices, ...) apply here too

    @property
    def spec(self) -> GeneratorSpec:
        return parse_generator(self.judge)

    def generate_config(self) -> GenerateConfig:
        """The same settings as a generate config, so the judge runs on generate's backends and runner."""
        return GenerateConfig(
            generator=self.judge, base_url=self.base_url, temperature=self.temperature, max_tokens=self.max_tokens,
            seed=self.seed, max_workers=self.max_workers, timeout=self.timeout, max_retries=self.max_retries,
            retry_base_s=self.retry_base_s, retry_max_s=self.retry_max_s, price_in=self.price_in,
            price_out=self.price_out, max_cost=self.max_cost, batch_size=self.batch_size, device=self.device,
            dtype=self.dtype, batch=self.batch, batch_wait=self.batch_wait, batch_poll_s=self.batch_poll_s,
        )

    def manifest_config(self, prompt_hash: str) -> dict[str, Any]:
        spec = self.spec
        cfg: dict[str, Any] = {"judge": spec.label, "kind": spec.kind, "model": spec.target, "generator": self.generator,
                               "tasks": list(self.tasks), "max_texts": self.max_texts,
                               "temperature": self.temperature,
                               "max_tokens": self.max_tokens, "seed": self.seed, "prompts": prompt_hash}
        if spec.kind == "openai":
            cfg["base_url"] = public_url(self.base_url)
        return cfg
