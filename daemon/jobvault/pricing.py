"""Offline, versioned model prices and the cost of one assistant message.

Prices are public per-model list prices in USD per million tokens, kept here so costs never
need the network; `PRICING_VERSION` is recorded on every job so a later table change is
visible. Bump it whenever a figure changes. Rules (see docs/architecture.md):

- cost = input × input + output × output + cache_5m × cache_write + cache_1h × 2 × input
  + cache_read × cache_read;
- models with a long-context tier charge the tier price for the tokens of each kind beyond
  200k *within that message*;
- `speed: "fast"` multiplies the message's cost by the model's fast multiplier.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

PRICING_VERSION = "2026.11.2"
LONG_CONTEXT_THRESHOLD = 200_000
MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    # Long-context tier (beyond 200k tokens in one message), when the model has one.
    input_long: float | None = None
    output_long: float | None = None
    cache_write_long: float | None = None
    cache_read_long: float | None = None
    fast_multiplier: float = 1.0
    context_window: int = 200_000


def _sonnet_long(inp: float, out: float, write: float, read: float) -> Price:
    """A Sonnet 4/4.5 price with its long-context tier (beyond 200k tokens in one message)."""
    return Price(inp, out, write, read, input_long=6.0, output_long=22.5, cache_write_long=7.5,
                 cache_read_long=0.6)  # fmt: skip


def _openai(inp: float, out: float, read: float, context_window: int = 272_000) -> Price:
    """An OpenAI price: no cache writes, so the write figure is the input price (unused)."""
    return Price(inp, out, inp, read, context_window=context_window)


# Family name (date suffix stripped) -> price, USD per million tokens: input, output,
# 5-minute cache write, cache read. The figures agree with the public list prices and with
# the offline table ccusage 20 embeds, so totals can be compared with it. Longest matching
# prefix wins.
PRICES: dict[str, Price] = {
    "claude-opus-5": Price(5.0, 25.0, 6.25, 0.5, fast_multiplier=2.0),
    "claude-opus-4-8": Price(5.0, 25.0, 6.25, 0.5, fast_multiplier=2.0),
    "claude-opus-4-7": Price(5.0, 25.0, 6.25, 0.5, fast_multiplier=6.0),
    "claude-opus-4-6": Price(5.0, 25.0, 6.25, 0.5, fast_multiplier=6.0),
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.5),
    "claude-opus-4-1": Price(15.0, 75.0, 18.75, 1.5),
    "claude-opus-4": Price(15.0, 75.0, 18.75, 1.5),
    "claude-4-opus": Price(15.0, 75.0, 18.75, 1.5),
    "claude-sonnet-5": Price(2.0, 10.0, 2.5, 0.2),
    "claude-sonnet-4-6": Price(3.0, 15.0, 3.75, 0.3),
    "claude-sonnet-4-5": _sonnet_long(3.0, 15.0, 3.75, 0.3),
    "claude-sonnet-4": _sonnet_long(3.0, 15.0, 3.75, 0.3),
    "claude-4-sonnet": _sonnet_long(3.0, 15.0, 3.75, 0.3),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.1),
    "claude-3-7-sonnet": Price(3.0, 15.0, 3.75, 0.3),
    "claude-3-5-sonnet": Price(3.0, 15.0, 3.75, 0.3),
    "claude-3-5-haiku": Price(0.8, 4.0, 1.0, 0.08),
    "claude-3-opus": Price(15.0, 75.0, 18.75, 1.5),
    "claude-3-haiku": Price(0.25, 1.25, 0.3, 0.03),
    "claude-fable-5-1": Price(10.0, 50.0, 12.5, 0.25),
    "claude-mythos-5-1": Price(10.0, 50.0, 12.5, 0.25),
    "claude-fable-5": Price(10.0, 50.0, 12.5, 1.0),
    "claude-mythos-5": Price(10.0, 50.0, 12.5, 1.0),
    "claude-mythos-preview": Price(10.0, 50.0, 12.5, 1.0),
    # OpenAI models used by Codex CLI. OpenAI has no cache writes: cache_write is set to
    # the input price and never used (Codex reports none). Cached input is priced at the
    # cache-read figure. Figures as ccusage 20.0.24 prices them offline, except o3,
    # o4-mini (ccusage resolves them to $0.55/$2.20, not OpenAI's list price) and
    # codex-mini-latest (unpriced there). The gpt-5.4/5.5 surcharge on prompts beyond
    # 272k tokens is not modelled.
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-5-codex": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5-nano": _openai(0.05, 0.4, 0.005),
    "gpt-5-pro": _openai(15.0, 120.0, 15.0),
    "gpt-5.1": _openai(1.25, 10.0, 0.125),
    "gpt-5.1-codex": _openai(1.25, 10.0, 0.125),
    "gpt-5.1-codex-max": _openai(1.25, 10.0, 0.125),
    "gpt-5.1-codex-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5.2": _openai(1.75, 14.0, 0.175),
    "gpt-5.2-codex": _openai(1.75, 14.0, 0.175),
    "gpt-5.3-codex": _openai(1.75, 14.0, 0.175),
    "gpt-5.4": _openai(2.5, 15.0, 0.25, 1_050_000),
    "gpt-5.4-mini": _openai(0.75, 4.5, 0.075),
    "gpt-5.5": _openai(5.0, 30.0, 0.5, 1_050_000),
    "gpt-4.1": _openai(2.0, 8.0, 0.5, 1_047_576),
    "gpt-4.1-mini": _openai(0.4, 1.6, 0.1, 1_047_576),
    "gpt-4.1-nano": _openai(0.1, 0.4, 0.025, 1_047_576),
    "gpt-4o": _openai(2.5, 10.0, 1.25, 128_000),
    "gpt-4o-mini": _openai(0.15, 0.6, 0.075, 128_000),
    "o3": _openai(2.0, 8.0, 0.5, 200_000),
    "o3-mini": _openai(1.1, 4.4, 0.55, 200_000),
    "o4-mini": _openai(1.1, 4.4, 0.275, 200_000),
    "codex-mini-latest": _openai(1.5, 6.0, 0.375, 200_000),
}
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")  # Anthropic / OpenAI styles


@functools.lru_cache(maxsize=512)
def lookup(model: str | None) -> Price | None:
    """Return the price of `model`, or None when it is unknown (its cost is then 0)."""
    if not model:
        return None
    name = model.lower().split("/")[-1]
    name = name.removesuffix("[1m]")
    name = _DATE_SUFFIX.sub("", name)
    best: str | None = None
    for family in PRICES:
        if (name == family or name.startswith(family + "-")) and (
            best is None or len(family) > len(best)
        ):
            best = family
    return PRICES[best] if best else None


def _tiered(tokens: int, base: float, long: float | None) -> float:
    if long is None or tokens <= LONG_CONTEXT_THRESHOLD:
        return tokens * base
    return LONG_CONTEXT_THRESHOLD * base + (tokens - LONG_CONTEXT_THRESHOLD) * long


def message_cost(
    price: Price,
    input_tokens: int,
    output_tokens: int,
    cache_5m_tokens: int,
    cache_1h_tokens: int,
    cache_read_tokens: int,
    fast: bool = False,
) -> float:
    """Return the USD cost of one (deduplicated) assistant message."""
    cost = (
        _tiered(input_tokens, price.input, price.input_long)
        + _tiered(output_tokens, price.output, price.output_long)
        + _tiered(cache_5m_tokens, price.cache_write, price.cache_write_long)
        + _tiered(cache_1h_tokens, price.input * 2, (price.input_long or price.input) * 2)
        + _tiered(cache_read_tokens, price.cache_read, price.cache_read_long)
    ) / MTOK
    return cost * price.fast_multiplier if fast else cost
