"""The generate stage: an LLM (remote, local or an imported table) writes new texts per feature.

    from sae_sens.generate import GenerateConfig, run_generate
    run_generate(Store("evals"), "default", "py_4k_topk_s0", GenerateConfig(generator="openai:gpt-4.1-mini"))
"""

from .backends import BACKENDS, Completion, Request, open_generator
from .config import DEFAULT_GENERATOR, GenerateConfig, GeneratorSpec, parse_generator
from .core import GenerateResult, generate, import_generations, make_requests, plan_generate, run_generate
from .parsing import parse_samples
from .pricing import OPENAI_PRICES, Price, lookup_price
from .prompts import PromptTemplate, build_prompts, load_template

__all__ = [
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
    "run_generate",
]
