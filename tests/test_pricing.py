"""Costs from the offline price table, checked against worked figures."""

from __future__ import annotations

import pytest

from jobvault import pricing


def _cost(model: str, **tokens: int) -> float:
    price = pricing.lookup(model)
    assert price is not None, model
    args = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_5m_tokens": 0,
        "cache_1h_tokens": 0,
        "cache_read_tokens": 0,
    }
    fast = bool(tokens.pop("fast", 0))
    args.update(tokens)
    return pricing.message_cost(price, **args, fast=fast)


def test_worked_check_from_formats() -> None:
    cost = _cost(
        "claude-sonnet-4-20250514",
        input_tokens=100,
        output_tokens=2000,
        cache_5m_tokens=10_000,
        cache_read_tokens=200_000,
    )
    assert cost == pytest.approx(0.1278)


def test_one_hour_cache_is_twice_the_input_price() -> None:
    assert _cost("claude-3-haiku-20240307", cache_1h_tokens=1_000_000) == pytest.approx(0.5)
    assert _cost("claude-opus-4-1-20250805", cache_1h_tokens=100_000) == pytest.approx(3.0)


def test_long_context_tier_per_message_and_kind() -> None:
    # Only the tokens beyond 200k pay the tier price, kind by kind.
    assert _cost("claude-sonnet-4-5-20250929", input_tokens=300_000) == pytest.approx(1.2)
    assert _cost("claude-sonnet-4-20250514", output_tokens=300_000) == pytest.approx(5.25)
    assert _cost(
        "claude-sonnet-4-20250514", input_tokens=150_000, cache_read_tokens=150_000
    ) == pytest.approx(0.495)
    assert _cost("claude-sonnet-4-20250514", cache_1h_tokens=300_000) == pytest.approx(2.4)
    # A model without a tier stays flat.
    assert _cost("claude-opus-4-1-20250805", input_tokens=300_000) == pytest.approx(4.5)


def test_fast_mode_multiplies() -> None:
    each = {
        "input_tokens": 1000,
        "output_tokens": 1000,
        "cache_5m_tokens": 1000,
        "cache_read_tokens": 1000,
    }
    assert _cost("claude-opus-4-6", **each) == pytest.approx(0.03675)
    assert _cost("claude-opus-4-6", **each, fast=1) == pytest.approx(0.2205)
    assert _cost("claude-opus-4-5-20251101", **each, fast=1) == pytest.approx(0.03675)


@pytest.mark.parametrize(
    ("model", "family_input"),
    [
        ("claude-sonnet-4-20250514", 3.0),
        ("claude-sonnet-4-5-20250929", 3.0),
        ("claude-opus-4-1-20250805", 15.0),
        ("claude-opus-4-20250514", 15.0),
        ("claude-opus-4-5-20251101", 5.0),
        ("claude-haiku-4-5-20251001", 1.0),
        ("claude-3-5-haiku-20241022", 0.8),
        ("anthropic/claude-sonnet-4-20250514", 3.0),
        ("claude-sonnet-4-20250514[1m]", 3.0),
    ],
)
def test_lookup_strips_dates_and_prefixes(model: str, family_input: float) -> None:
    price = pricing.lookup(model)
    assert price is not None and price.input == family_input


@pytest.mark.parametrize("model", ["<synthetic>", "gpt-foo", "", None, "claude-unknown-9"])
def test_unknown_models_are_unpriced(model: str | None) -> None:
    assert pricing.lookup(model) is None
