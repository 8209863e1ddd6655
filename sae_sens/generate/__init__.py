"""The generate stage: an LLM (remote, local or an imported table) writes new texts per feature.

    from sae_sens.generate import GenerateConfig, run_generate
    run_generate(Store("evals"), "default", "py_4k_topk_s0", GenerateConfig(generator="openai:gpt-4.1-mini"))

Generators: ``openai:<model>`` (any OpenAI-compatible server via ``base_url``), ``hf:<hub id or folder>``
(local transformers chat model), ``table:<file>`` or ``from_table=`` with any label (import).
Each writes its rows, labelled, into ``queries`` and ``generations``; other generators' rows stay.
The manifest records the stage as ``generate:<label>``.

On disk, besides the tables: ``<run>/<sae>/.checkpoints/generate_<label>/answers.jsonl`` journals each
answer as it arrives (fsynced; removed once the tables are written), and ``<store>/_cache/generate/``
keeps every answer by the hash of (generator, model, server, prompts, sampling settings, seed), shared
by all runs, so the same request is never sent twice. Neither holds API keys.
"""

from .backends import BACKENDS, Completion, Request, open_generator
from .config import DEFAULT_GENERATOR, GenerateConfig, GeneratorSpec, parse_generator
from .core import (
    GenerateResult,
    generate,
    import_generations,
    make_requests,
    plan_generate,
    plan_uncollected,
    run_generate,
    run_generate_many,
)
from .parsing import parse_samples
from .pricing import OPENAI_PRICES, Price, lookup_price
from .prompts import PromptTemplate, build_prompts, load_template

__all__ = [
    "run_generate_many",
    "BACKENDS",
    "DEFAULT_GENERATOR",
    "OPENAI_PRICES",
    "Completion",
    "GenerateConfig",
    "GenerateResult",
    "GeneratorSpec",
    "Price",
    "PromptTemplate",
    "Request",
    "build_prompts",
    "generate",
    "import_generations",
    "load_template",
    "lookup_price",
    "make_requests",
    "open_generator",
    "parse_generator",
    "parse_samples",
    "plan_generate",
    "plan_uncollected",
    "run_generate",
]
