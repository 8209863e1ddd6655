"""What a generate run is asked to do, and which generator that names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import UsageError
from ..schemas import CONTROL_PREFIX, NEGATIVES_PREFIX, ROLE_PREFIXES, is_control

DEFAULT_MODEL = "gpt-4.1-mini"
DEFAULT_GENERATOR = f"openai:{DEFAULT_MODEL}"
KINDS = ("openai", "hf", "table", "corpus", "baseline", "inject")
# real held-out passages, no LLM: the corpus control, the base-rate passages, the token injections
RETRIEVAL_KINDS = ("corpus", "baseline", "inject")
BASE_PASSAGES = 200  # baseline: shared random passages per run x SAE (binomial SE <= 0.036 on a base rate)


@dataclass(frozen=True)
class GenerateConfig:
    """Settings of one generate run. Only the fields that change the requests (and so the outputs)
    go into the manifest's config hash; concurrency, retries and budget do not."""

    # openai:<model> | hf:<id or folder> | table:<file>; with from_table, the label (default table:<file>);
    # None means openai:gpt-4.1-mini, or table:<file> when importing
    generator: str | None = None
    from_table: Path | None = None  # import this file under the label ``generator``
    base_url: str | None = None  # OpenAI-compatible server (default: OPENAI_BASE_URL, else OpenAI)
    samples_per_feature: int = 10
    extra_samples: int = 1  # ask for this many more than needed and keep the first samples_per_feature
    n_top: int = 10  # top-activating examples shown per feature
    n_iw: int = 5  # importance-weighted examples shown per feature
    temperature: float = 1.0
    max_tokens: int = 2000
    seed: int = 42
    prompt_template: Path | None = None
    separator: str = "<SEP>"
    max_workers: int = 10
    timeout: float = 60.0
    max_retries: int = 6
    retry_base_s: float = 1.0  # first backoff step; doubles per attempt, with jitter
    retry_max_s: float = 60.0
    price_in: float | None = None  # USD per 1M prompt tokens, for models missing from the price table
    price_out: float | None = None  # USD per 1M completion tokens
    max_cost: float | None = None  # USD
    batch_size: int = 8  # hf: prompts per generate() call
    device: str | None = None  # hf
    dtype: str | None = None  # hf
    n_passages: int = BASE_PASSAGES  # baseline: random held-out passages, shared by every feature
    # --batch: the OpenAI Batch API (half price, within 24 h); the same requests and cache keys, so
    # none of these is part of the manifest's config
    batch: bool = False
    batch_wait: bool = True  # False (--no-wait): submit, journal and exit; a rerun collects
    batch_poll_s: float = 60.0  # seconds between status polls while waiting
    batch_max_requests: int = 50_000  # requests per input file (the API's limit)

    def __post_init__(self) -> None:
        checks = [
            (self.samples_per_feature >= 1, "--samples-per-feature must be at least 1"),
            (self.extra_samples >= 0, "extra_samples must be >= 0"),
            (self.n_top >= 0 and self.n_iw >= 0 and self.n_top + self.n_iw >= 1, "show at least one example"),
            (self.temperature >= 0, "--temperature must be >= 0"),
            (self.max_tokens >= 1, "--max-tokens must be at least 1"),
            (self.max_workers >= 1, "--max-workers must be at least 1"),
            (self.timeout > 0, "--timeout must be positive"),
            (self.max_retries >= 0, "--max-retries must be >= 0"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.max_cost is None or self.max_cost > 0, "--max-cost must be positive"),
            (bool(self.separator.strip()), "the separator must not be blank"),
            (self.n_passages >= 1, "--passages must be at least 1"),
            (self.batch_poll_s > 0, "--batch-poll must be positive"),
            (1 <= self.batch_max_requests <= 50_000, "a batch file holds 1 to 50,000 requests"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        if (self.price_in is None) != (self.price_out is None):
            raise UsageError("--price-in and --price-out go together", "pass both, in USD per 1M tokens")

    @property
    def spec(self) -> GeneratorSpec:
        return parse_generator(self.generator, self.from_table)

    @property
    def n_request(self) -> int:
        return self.samples_per_feature + self.extra_samples

    def manifest_config(self, template_hash: str) -> dict[str, Any]:
        """The settings that decide the outputs (no secrets: the base URL loses any user:password)."""
        spec = self.spec
        if spec.kind == "table":
            return {"generator": spec.label, "kind": "table", "file": str(spec.target)}
        if spec.kind == "corpus":
            return {"generator": spec.label, "kind": "corpus", "source": spec.target,
                    "samples_per_feature": self.samples_per_feature}
        if spec.kind == "baseline":
            return {"generator": spec.label, "kind": "baseline", "source": spec.target, "passages": self.n_passages,
                    "seed": self.seed}
        if spec.kind == "inject":
            return {"generator": spec.label, "kind": "inject", "source": spec.target,
                    "samples_per_feature": self.samples_per_feature, "seed": self.seed}
        keep = ("samples_per_feature", "extra_samples", "n_top", "n_iw", "temperature", "max_tokens", "seed",
                "separator")
        cfg = {k: v for k, v in asdict(self).items() if k in keep}
        cfg.update(generator=spec.label, kind=spec.kind, model=spec.target, prompt_template=template_hash)
        if spec.kind == "openai":
            cfg["base_url"] = public_url(self.base_url)
        return cfg


@dataclass(frozen=True)
class GeneratorSpec:
    kind: str  # openai | hf | table | corpus | baseline | inject
    target: str  # the model name, hub id / folder, import file, or corpus
    label: str  # stored in every row; names the stage ``generate:<label>``
    negatives: bool = False  # near misses (label negatives:<generator>): the negatives prompt, role negative


def parse_generator(generator: str | None, from_table: Path | str | None = None) -> GeneratorSpec:
    """``openai:<model>``, ``hf:<id>``, ``table:<file>``, ``corpus:<corpus>``; with ``from_table`` the generator is
    only a label."""
    generator = (generator or "").strip()
    if generator.startswith(NEGATIVES_PREFIX):  # the same generator, asked for near misses
        inner = parse_generator(generator[len(NEGATIVES_PREFIX):] or None, from_table)
        if inner.kind in RETRIEVAL_KINDS or inner.negatives:
            raise UsageError(f"--negatives needs an LLM generator or an imported table, not {inner.label!r}",
                             "e.g. --generator openai:gpt-4.1-mini --negatives")
        return GeneratorSpec(inner.kind, inner.target, NEGATIVES_PREFIX + inner.label, negatives=True)
    if from_table is not None:
        # the file by its resolved path: one file given relatively and absolutely is one import
        from_table = Path(from_table).expanduser().resolve()
        label = generator or f"table:{from_table}"
        reserved = next((p for p in ROLE_PREFIXES if label.startswith(p) and p != NEGATIVES_PREFIX), None)
        if is_control(label) or reserved:  # reports keep such labels apart by their role
            whose = "the corpus control's" if is_control(label) else f"the {ROLE_PREFIXES[reserved or '']} control's"
            raise UsageError(f"--generator {label!r}: labels starting {reserved or CONTROL_PREFIX!r} are {whose}",
                             "name the imported texts otherwise, e.g. --generator table:mine")
        return GeneratorSpec("table", str(from_table), label)
    if not generator:
        generator = DEFAULT_GENERATOR
    kind, sep, target = generator.partition(":")
    if not sep and kind == "openai":
        target = DEFAULT_MODEL
    elif kind not in KINDS or not target.strip():
        raise UsageError(
            f"unknown generator {generator!r}",
            "use openai:<model> (e.g. openai:gpt-4.1-mini), hf:<hub id or folder>, table:<file>, "
            "corpus:<corpus> (real passages, no LLM), baseline:<corpus> (random passages: the base rate), "
            "inject:<corpus> (activating tokens put into unrelated passages), or --from-table FILE --generator NAME",
        )
    target = target.strip()
    return GeneratorSpec(kind, target, f"{kind}:{target}")


def public_url(url: str | None) -> str | None:
    """A URL without user:password, safe to store."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
