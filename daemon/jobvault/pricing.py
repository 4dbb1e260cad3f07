"""Offline, versioned model prices and the cost of one assistant message.

Prices are public per-model list prices in USD per million tokens, kept here so costs never
need the network; `PRICING_VERSION` is recorded on every job so a later table change is
visible. Bump it whenever a figure changes. Rules (see docs/architecture.md):

- cost = input × input + output × output + cache_5m × cache_write + cache_1h × 2 × input
  + cache_read × cache_read + web-search requests × web_search / 1,000;
- Anthropic's long-context tier (Sonnet 4 / 4.5) charges the tier price for the tokens of
  each kind beyond 200k *within that message*; OpenAI's (GPT-5.4 and later) charges the
  whole message at the tier prices when its prompt is longer than 272k tokens;
- `speed: "fast"` (Claude) or the priority service tier (Codex) multiplies the message's
  cost by the model's fast multiplier.

The user's own figures (`[pricing."model"]` in the config file, `configure`) are looked up
before the table; records priced with them carry `version()`, the table version plus a hash
of the overrides, so a record always says which prices made it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

PRICING_VERSION = "2026.12.1"
LONG_CONTEXT_THRESHOLD = 200_000  # Anthropic's long-context tier
OPENAI_LONG_THRESHOLD = 272_000
MTOK = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens (`web_search`: USD per 1,000 requests)."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    # Long-context tier, when the model has one (see `long_whole`).
    input_long: float | None = None
    output_long: float | None = None
    cache_write_long: float | None = None
    cache_read_long: float | None = None
    fast_multiplier: float = 1.0
    context_window: int = 200_000
    long_threshold: int = LONG_CONTEXT_THRESHOLD
    # False: only the tokens beyond the threshold pay the tier, kind by kind (Anthropic).
    # True: a message whose prompt passes the threshold pays the tier for all of it (OpenAI).
    long_whole: bool = False
    web_search: float = 0.0


# The fields a table entry (and a `[pricing."model"]` override) may set, by type.
FLOAT_FIELDS = ("input", "output", "cache_write", "cache_read", "input_long", "output_long",
                "cache_write_long", "cache_read_long", "fast_multiplier", "web_search")  # fmt: skip
INT_FIELDS = ("context_window", "long_threshold")
BOOL_FIELDS = ("long_whole",)
ANTHROPIC_WEB_SEARCH = 10.0  # $10 per 1,000 web-search requests, every Claude model


def _claude(inp: float, out: float, write: float, read: float, fast: float = 1.0) -> Price:
    return Price(inp, out, write, read, fast_multiplier=fast, web_search=ANTHROPIC_WEB_SEARCH)


def _sonnet_long(inp: float, out: float, write: float, read: float) -> Price:
    """A Sonnet 4/4.5 price with its long-context tier (beyond 200k tokens in one message)."""
    return dataclasses.replace(
        _claude(inp, out, write, read),
        input_long=6.0, output_long=22.5, cache_write_long=7.5, cache_read_long=0.6,
    )  # fmt: skip


def _openai(
    inp: float,
    out: float,
    read: float,
    context_window: int = 272_000,
    *,
    write: float | None = None,
    fast: float = 1.0,
    long: tuple[float, float, float, float] | None = None,
) -> Price:
    """An OpenAI price. Without a listed cache-write price, writes cost the input price (as
    OpenAI bills them); `long` = (input, output, cached, write) for prompts beyond 272k."""
    price = Price(inp, out, inp if write is None else write, read, context_window=context_window,
                  fast_multiplier=fast)  # fmt: skip
    if long is None:
        return price
    return dataclasses.replace(
        price, input_long=long[0], output_long=long[1], cache_read_long=long[2],
        cache_write_long=long[3], long_threshold=OPENAI_LONG_THRESHOLD, long_whole=True,
    )  # fmt: skip


_GPT_56_WINDOW = 1_050_000
# Family name (date suffix stripped) -> price, USD per million tokens: input, output,
# 5-minute cache write, cache read. Longest matching prefix wins. Sources: LiteLLM's public
# model_prices_and_context_window.json (the table ccusage builds its offline prices from)
# and the providers' list prices; every Claude figure equals ccusage 20.0.24's offline
# price, and the OpenAI ones where LiteLLM and ccusage differ are LiteLLM's (the
# differences are listed in docs/benchmarks.md).
PRICES: dict[str, Price] = {
    "claude-opus-5": _claude(5.0, 25.0, 6.25, 0.5, fast=2.0),
    "claude-opus-4-8": _claude(5.0, 25.0, 6.25, 0.5, fast=2.0),
    "claude-opus-4-7": _claude(5.0, 25.0, 6.25, 0.5, fast=6.0),
    "claude-opus-4-6": _claude(5.0, 25.0, 6.25, 0.5, fast=6.0),
    "claude-opus-4-5": _claude(5.0, 25.0, 6.25, 0.5),
    "claude-opus-4-1": _claude(15.0, 75.0, 18.75, 1.5),
    "claude-opus-4": _claude(15.0, 75.0, 18.75, 1.5),
    "claude-4-opus": _claude(15.0, 75.0, 18.75, 1.5),
    "claude-sonnet-5": _claude(2.0, 10.0, 2.5, 0.2),
    "claude-sonnet-4-6": _claude(3.0, 15.0, 3.75, 0.3),
    "claude-sonnet-4-5": _sonnet_long(3.0, 15.0, 3.75, 0.3),
    "claude-sonnet-4": _sonnet_long(3.0, 15.0, 3.75, 0.3),
    "claude-4-sonnet": _sonnet_long(3.0, 15.0, 3.75, 0.3),
    "claude-haiku-4-5": _claude(1.0, 5.0, 1.25, 0.1),
    "claude-3-7-sonnet": _claude(3.0, 15.0, 3.75, 0.3),
    "claude-3-5-sonnet": _claude(3.0, 15.0, 3.75, 0.3),
    "claude-3-sonnet": _claude(3.0, 15.0, 3.75, 0.3),
    "claude-3-5-haiku": _claude(0.8, 4.0, 1.0, 0.08),
    "claude-3-opus": _claude(15.0, 75.0, 18.75, 1.5),
    "claude-3-haiku": _claude(0.25, 1.25, 0.3, 0.03),
    "claude-fable-5-1": _claude(10.0, 50.0, 12.5, 0.25),
    "claude-mythos-5-1": _claude(10.0, 50.0, 12.5, 0.25),
    "claude-fable-5": _claude(10.0, 50.0, 12.5, 1.0),
    "claude-mythos-5": _claude(10.0, 50.0, 12.5, 1.0),
    "claude-mythos-preview": _claude(10.0, 50.0, 12.5, 1.0),
    # OpenAI models used by Codex CLI (cached input at the cache-read figure; cache writes,
    # which Codex reports since 0.15x, at the cache-write figure). `fast` is the priority
    # tier's multiplier (Codex's service_tier "fast"/"priority"), from LiteLLM's
    # *_priority prices. Other OpenAI models can be priced with `[pricing."model"]`.
    "gpt-5": _openai(1.25, 10.0, 0.125, fast=2.0),
    "gpt-5-codex": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025, fast=1.8),
    "gpt-5-nano": _openai(0.05, 0.4, 0.005),
    "gpt-5-pro": _openai(15.0, 120.0, 15.0, 400_000),
    "gpt-5.1": _openai(1.25, 10.0, 0.125, fast=2.0),
    "gpt-5.1-codex": _openai(1.25, 10.0, 0.125, fast=2.0),
    "gpt-5.1-codex-max": _openai(1.25, 10.0, 0.125),
    "gpt-5.1-codex-mini": _openai(0.25, 2.0, 0.025, fast=1.8),
    "gpt-5.2": _openai(1.75, 14.0, 0.175, fast=2.0),
    "gpt-5.2-codex": _openai(1.75, 14.0, 0.175, fast=2.0),
    "gpt-5.2-pro": _openai(21.0, 168.0, 21.0),
    "gpt-5.3-codex": _openai(1.75, 14.0, 0.175, fast=2.0),
    "gpt-5.4": _openai(2.5, 15.0, 0.25, 1_050_000, fast=2.0, long=(5.0, 22.5, 0.5, 5.0)),
    "gpt-5.4-mini": _openai(0.75, 4.5, 0.075, 1_050_000, fast=2.0),
    "gpt-5.4-nano": _openai(0.2, 1.25, 0.02, 1_050_000),
    "gpt-5.4-pro": _openai(30.0, 180.0, 3.0, 1_050_000, long=(60.0, 270.0, 6.0, 60.0)),
    "gpt-5.5": _openai(5.0, 30.0, 0.5, 1_050_000, fast=2.0, long=(10.0, 45.0, 1.0, 10.0)),
    "gpt-5.5-pro": _openai(30.0, 180.0, 3.0, 1_050_000, long=(60.0, 270.0, 6.0, 60.0)),
    "gpt-5.6": _openai(
        5.0, 30.0, 0.5, _GPT_56_WINDOW, write=6.25, fast=2.0, long=(10.0, 45.0, 1.0, 12.5)
    ),
    "gpt-5.6-sol": _openai(
        5.0, 30.0, 0.5, _GPT_56_WINDOW, write=6.25, fast=2.0, long=(10.0, 45.0, 1.0, 12.5)
    ),
    "gpt-5.6-terra": _openai(
        2.5, 15.0, 0.25, _GPT_56_WINDOW, write=3.125, fast=2.0, long=(5.0, 22.5, 0.5, 6.25)
    ),
    "gpt-5.6-luna": _openai(
        1.0, 6.0, 0.1, _GPT_56_WINDOW, write=1.25, fast=2.0, long=(2.0, 9.0, 0.2, 2.5)
    ),
    "gpt-4.1": _openai(2.0, 8.0, 0.5, 1_047_576, fast=1.75),
    "gpt-4.1-mini": _openai(0.4, 1.6, 0.1, 1_047_576, fast=1.75),
    "gpt-4.1-nano": _openai(0.1, 0.4, 0.025, 1_047_576, fast=2.0),
    "gpt-4o": _openai(2.5, 10.0, 1.25, 128_000, fast=1.7),
    "gpt-4o-mini": _openai(0.15, 0.6, 0.075, 128_000),
    "o3": _openai(2.0, 8.0, 0.5, 200_000, fast=1.75),
    "o3-mini": _openai(1.1, 4.4, 0.55, 200_000),
    "o3-pro": _openai(20.0, 80.0, 20.0, 200_000),
    "o4-mini": _openai(1.1, 4.4, 0.275, 200_000),
    "codex-mini-latest": _openai(1.5, 6.0, 0.375, 200_000),
}
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")  # Anthropic / OpenAI styles

# The user's overrides (normalized name -> price) and the version string they give records.
# Set once at start-up (and on SIGHUP) by `configure`; read by the record builders.
_overrides: dict[str, Price] = {}
_version = PRICING_VERSION
_lock = threading.Lock()


def normalize(model: str) -> str:
    """The name a model is priced by: lower case, no provider prefix, no date, no [1m]."""
    name = model.lower().split("/")[-1].strip()
    name = name.removesuffix("[1m]")
    return _DATE_SUFFIX.sub("", name)


def configure(overrides: Mapping[str, Price]) -> None:
    """Price with the user's figures first (model or family name -> price); {} resets."""
    global _overrides, _version
    table = {normalize(name): price for name, price in overrides.items()}
    if table:
        text = repr(sorted(table.items()))
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        version = f"{PRICING_VERSION}+user.{digest}"
    else:
        version = PRICING_VERSION
    with _lock:
        _overrides, _version = table, version
        lookup.cache_clear()


def version() -> str:
    """The pricing version records carry: the table's, plus a hash of the user's overrides."""
    return _version


def table_price(model: str) -> Price | None:
    """The built-in table's price of `model` (overrides not applied)."""
    return _family(normalize(model), PRICES)


def _family(name: str, table: Mapping[str, Price]) -> Price | None:
    best: str | None = None
    for family in table:
        if (name == family or name.startswith(family + "-")) and (
            best is None or len(family) > len(best)
        ):
            best = family
    return table[best] if best else None


@functools.lru_cache(maxsize=512)
def lookup(model: str | None) -> Price | None:
    """Return the price of `model`, or None when it is unknown (its cost is then 0).

    The user's overrides win over the table: an override names a model or a family (the
    longest matching one counts), then the table's longest matching family.
    """
    if not model:
        return None
    name = normalize(model)
    overrides = _overrides
    if overrides:
        price = _family(name, overrides)
        if price is not None:
            return price
    return _family(name, PRICES)


def _tiered(tokens: int, base: float, long: float | None, threshold: int) -> float:
    if long is None or tokens <= threshold:
        return tokens * base
    return threshold * base + (tokens - threshold) * long


def message_cost(
    price: Price,
    input_tokens: int,
    output_tokens: int,
    cache_5m_tokens: int,
    cache_1h_tokens: int,
    cache_read_tokens: int,
    fast: bool = False,
    web_searches: int = 0,
) -> float:
    """Return the USD cost of one (deduplicated) assistant message."""
    if price.long_whole:
        prompt = input_tokens + cache_5m_tokens + cache_1h_tokens + cache_read_tokens
        long = prompt > price.long_threshold
        inp = price.input_long if long and price.input_long is not None else price.input
        out = price.output_long if long and price.output_long is not None else price.output
        write = price.cache_write
        if long and price.cache_write_long is not None:
            write = price.cache_write_long
        read = price.cache_read_long if long and price.cache_read_long is not None else None
        cost = (
            input_tokens * inp
            + output_tokens * out
            + cache_5m_tokens * write
            + cache_1h_tokens * inp * 2
            + cache_read_tokens * (price.cache_read if read is None else read)
        ) / MTOK
    else:
        t = price.long_threshold
        cost = (
            _tiered(input_tokens, price.input, price.input_long, t)
            + _tiered(output_tokens, price.output, price.output_long, t)
            + _tiered(cache_5m_tokens, price.cache_write, price.cache_write_long, t)
            + _tiered(cache_1h_tokens, price.input * 2, (price.input_long or price.input) * 2, t)
            + _tiered(cache_read_tokens, price.cache_read, price.cache_read_long, t)
        ) / MTOK
    if fast:
        cost *= price.fast_multiplier
    # Web search is billed per request, whatever the speed.
    return cost + web_searches * price.web_search / 1000


# -- the user's overrides ([pricing."model"] in the config file) ---------------------------

MAX_PRICE = 1e6  # USD per million tokens (or per 1,000 requests): anything above is a typo


def parse_overrides(value: object, key: str = "pricing") -> dict[str, Price]:
    """Validate `[pricing."model"]` tables into prices; ConfigError names the bad key.

    An entry for a model the table knows changes only the figures it gives; an entry for
    another model must give `input` and `output` (cache writes and reads then cost the
    input price, web search nothing, unless given too).
    """
    from jobvault.errors import ConfigError

    if isinstance(value, str):  # JOBVAULT_PRICING: the same tables as a JSON object
        import orjson

        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ConfigError(key, "expected a JSON object of model tables") from None
    if not isinstance(value, Mapping):
        raise ConfigError(key, f'expected tables such as [pricing."model-name"], got {value!r}')
    out: dict[str, Price] = {}
    for model, entry in value.items():
        where = f'{key}."{model}"'
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(where, "a model name must be a non-empty string")
        if not isinstance(entry, Mapping):
            raise ConfigError(where, f"expected a table of prices, got {entry!r}")
        given: dict[str, object] = {}
        for name, figure in entry.items():
            given[name] = _figure(f"{where}.{name}", name, figure)
        base = table_price(model)
        if base is None:
            missing = [f for f in ("input", "output") if f not in given]
            if missing:
                raise ConfigError(
                    where,
                    f"{model!r} is not in the built-in price table: give at least "
                    f"{' and '.join(missing)} (USD per million tokens)",
                )
            inp = float(given["input"])  # type: ignore[arg-type]
            base = Price(inp, float(given["output"]), inp, inp)  # type: ignore[arg-type]
        out[model] = dataclasses.replace(base, **given)  # type: ignore[arg-type]
    return out


def _figure(where: str, name: str, figure: object) -> object:
    from jobvault.errors import ConfigError

    known = FLOAT_FIELDS + INT_FIELDS + BOOL_FIELDS
    if name not in known:
        raise ConfigError(where, f"unknown price field (known: {', '.join(known)})")
    if name in BOOL_FIELDS:
        if not isinstance(figure, bool):
            raise ConfigError(where, f"expected true or false, got {figure!r}")
        return figure
    if isinstance(figure, bool) or not isinstance(figure, int | float):
        raise ConfigError(where, f"expected a number, got {figure!r}")
    if name in INT_FIELDS:
        if not isinstance(figure, int) or figure < 1 or figure > 10**9:
            raise ConfigError(where, f"expected a whole number of tokens, got {figure!r}")
        return figure
    if not 0 <= figure <= MAX_PRICE:  # (NaN fails both comparisons)
        raise ConfigError(where, f"expected a price between 0 and {MAX_PRICE:g}, got {figure!r}")
    if name == "fast_multiplier" and figure == 0:
        raise ConfigError(where, "a multiplier must be above 0")
    return float(figure)
