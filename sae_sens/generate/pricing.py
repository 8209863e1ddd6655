"""What requests cost: a price table for OpenAI models and a rough token estimate for dry runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlsplit

# USD per 1M tokens (input, output), OpenAI list prices for standard processing.
# Dated snapshots ("gpt-4o-mini-2024-07-18") match by longest prefix.
OPENAI_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return ((prompt_tokens or 0) * self.input_per_1m + (completion_tokens or 0) * self.output_per_1m) / 1e6


FREE = Price(0.0, 0.0)


def is_openai_url(base_url: str | None) -> bool:
    return not base_url or (urlsplit(base_url).hostname or "").endswith("openai.com")


def lookup_price(kind: str, model: str, base_url: str | None = None,
                 price_in: float | None = None, price_out: float | None = None) -> Price | None:
    """The price of one model, or None when unknown. Explicit prices win; the table applies only
    to OpenAI's own API (a local server may serve any name); local hf models are free."""
    if price_in is not None and price_out is not None:
        return Price(price_in, price_out)
    if kind == "hf":
        return FREE
    if kind != "openai" or not is_openai_url(base_url):
        return None
    matches = [name for name in OPENAI_PRICES if model == name or model.startswith(name + "-")]
    if not matches:
        return None
    return Price(*OPENAI_PRICES[max(matches, key=len)])


def estimate_tokens(text: str) -> int:
    """About four characters per token for English with GPT-style tokenizers."""
    return max(1, math.ceil(len(text) / 4))
