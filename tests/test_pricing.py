"""Costs from the offline price table, checked against worked figures."""

from __future__ import annotations

from pathlib import Path

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


# -- issue 14: a current table, web search, OpenAI's long-context and priority tiers --------


@pytest.mark.parametrize(
    ("model", "figures"),
    [
        # Models seen in Codex 0.15x captures, LiteLLM's figures (input, cached, output, write).
        ("gpt-5.6-luna", (1.0, 0.1, 6.0, 1.25)),
        ("gpt-5.6-sol", (5.0, 0.5, 30.0, 6.25)),
        ("gpt-5.6-terra", (2.5, 0.25, 15.0, 3.125)),
        ("gpt-5.6", (5.0, 0.5, 30.0, 6.25)),
        ("gpt-5.5", (5.0, 0.5, 30.0, 5.0)),
        ("gpt-5.4", (2.5, 0.25, 15.0, 2.5)),
        ("gpt-5.4-mini", (0.75, 0.075, 4.5, 0.75)),
        ("gpt-5.3-codex", (1.75, 0.175, 14.0, 1.75)),
        ("gpt-5.3-codex-spark", (1.75, 0.175, 14.0, 1.75)),
        ("gpt-5.2", (1.75, 0.175, 14.0, 1.75)),
        ("gpt-5.1", (1.25, 0.125, 10.0, 1.25)),
        ("claude-3-sonnet-20240229", (3.0, 0.3, 15.0, 3.75)),
    ],
)
def test_current_table(model: str, figures: tuple[float, float, float, float]) -> None:
    price = pricing.lookup(model)
    assert price is not None, model
    assert (price.input, price.cache_read, price.output, price.cache_write) == figures


def test_web_search_is_priced_per_request() -> None:
    price = pricing.lookup("claude-sonnet-4-5-20250929")
    assert price is not None
    cost = pricing.message_cost(price, 0, 0, 0, 0, 0, web_searches=3)
    assert cost == pytest.approx(0.03)  # $10 per 1,000
    # Fast mode multiplies the tokens, not the searches.
    opus = pricing.lookup("claude-opus-4-6")
    assert opus is not None
    assert pricing.message_cost(opus, 1000, 0, 0, 0, 0, True, 1) == pytest.approx(
        1000 * 5 * 6 / 1e6 + 0.01
    )


@pytest.mark.parametrize(
    ("fresh", "cached", "output", "cost"),
    [
        # As ccusage 20.0.24 prices gpt-5.5 (probed with one-message sessions): a prompt over
        # 272k tokens pays the tier prices for all of the message, output included.
        (272_000, 0, 0, 1.36),
        (272_001, 0, 0, 2.72001),
        (300_000, 0, 0, 3.0),
        (10_000, 290_000, 0, 0.39),
        (300_000, 0, 100_000, 7.5),
        (100_000, 0, 300_000, 9.5),
    ],
)
def test_openai_long_context_is_the_whole_message(
    fresh: int, cached: int, output: int, cost: float
) -> None:
    price = pricing.lookup("gpt-5.5")
    assert price is not None
    assert pricing.message_cost(price, fresh, output, 0, 0, cached) == pytest.approx(cost)


def test_codex_cache_writes_and_priority_tier() -> None:
    price = pricing.lookup("gpt-5.6-luna")
    assert price is not None
    # 4,000 fresh + 8,000 written + 2,000 cached input, 600 output.
    base = (4000 * 1.0 + 8000 * 1.25 + 2000 * 0.1 + 600 * 6.0) / 1e6
    assert pricing.message_cost(price, 4000, 600, 8000, 0, 2000) == pytest.approx(base)
    assert pricing.message_cost(price, 4000, 600, 8000, 0, 2000, True) == pytest.approx(2 * base)


# -- the user's prices ---------------------------------------------------------------------


def test_overrides_win_and_are_versioned() -> None:
    table = pricing.parse_overrides({
        "gpt-5.6-luna": {"input": 0.2, "output": 1.2, "cache_read": 0.02, "cache_write": 0.25},
        "my-local-model": {"input": 0.5, "output": 1.0},
        "claude-sonnet-4-5": {"web_search": 0},
    })  # fmt: skip
    assert pricing.version() == pricing.PRICING_VERSION
    pricing.configure(table)
    try:
        luna = pricing.lookup("openai/gpt-5.6-luna-2026-08-01")  # prefix and date stripped
        assert luna is not None and (luna.input, luna.output) == (0.2, 1.2)
        assert luna.long_whole and luna.fast_multiplier == 2.0  # the table's other figures
        mine = pricing.lookup("my-local-model")
        assert mine is not None and (mine.cache_read, mine.cache_write) == (0.5, 0.5)
        sonnet = pricing.lookup("claude-sonnet-4-5-20250929")
        assert sonnet is not None and sonnet.web_search == 0 and sonnet.input == 3.0
        assert pricing.lookup("gpt-5.5") == pricing.table_price("gpt-5.5")
        version = pricing.version()
        assert version.startswith(pricing.PRICING_VERSION + "+user.") and len(version) > 20
        pricing.configure(dict(reversed(table.items())))
        assert pricing.version() == version  # the same overrides, the same version
        pricing.configure({**table, "my-local-model": pricing.Price(1, 1, 1, 1)})
        assert pricing.version() != version
    finally:
        pricing.configure({})
    assert pricing.version() == pricing.PRICING_VERSION
    assert pricing.lookup("my-local-model") is None


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        ({"gpt-x": {"input": 1}}, 'pricing."gpt-x"', "give at least output"),
        ({"gpt-5": {"inptu": 1}}, 'pricing."gpt-5".inptu', "unknown price field"),
        ({"gpt-5": {"input": -1}}, 'pricing."gpt-5".input', "between 0 and"),
        ({"gpt-5": {"input": "cheap"}}, 'pricing."gpt-5".input', "expected a number"),
        ({"gpt-5": {"input": True}}, 'pricing."gpt-5".input', "expected a number"),
        ({"gpt-5": {"context_window": 1.5}}, 'pricing."gpt-5".context_window', "whole number"),
        ({"gpt-5": {"long_whole": 1}}, 'pricing."gpt-5".long_whole', "true or false"),
        ({"gpt-5": {"fast_multiplier": 0}}, 'pricing."gpt-5".fast_multiplier', "above 0"),
        ({"gpt-5": 3}, 'pricing."gpt-5"', "a table of prices"),
        ({"": {"input": 1, "output": 1}}, 'pricing.""', "non-empty"),
        ([1, 2], "pricing", "tables such as"),
    ],
)
def test_override_errors_name_the_key(value: object, key: str, message: str) -> None:
    from jobvault.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        pricing.parse_overrides(value)
    assert info.value.key == key and message in str(info.value)


def test_config_file_pricing_tables(tmp_path: Path) -> None:
    from jobvault import config as config_mod
    from jobvault.errors import ConfigError

    cfg = tmp_path / "jobvault.toml"
    cfg.write_text('[pricing."gpt-5.6-luna"]\ninput = 0.2\noutput = 1.2\n', encoding="utf-8")
    config = config_mod.load(cfg)
    assert config.pricing["gpt-5.6-luna"].input == 0.2
    assert config.pricing["gpt-5.6-luna"].cache_read == 0.1  # the table's figure stays
    cfg.write_text('[pricing."gpt-5.6-luna"]\nimput = 0.2\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pricing.\"gpt-5.6-luna\".imput"):
        config_mod.load(cfg)
    env = {"JOBVAULT_PRICING": '{"my-model": {"input": 1, "output": 2}}'}
    assert config_mod.load(environ=env).pricing["my-model"].output == 2.0


def test_rebuild_reprices_the_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Import at the table's prices; add an override; `rebuild` re-prices every record,
    usage row and daily total, and the records say which prices made them."""
    import json
    import shutil
    import sqlite3

    from tests.helpers import run_json

    home = tmp_path / "codex"
    shutil.copytree(Path(__file__).parent / "fixtures" / "fidelity" / "codex", home)
    db = tmp_path / "vault" / "jobvault.db"
    run_json(capsys, "import", str(home / "sessions"), "--db", str(db), "--no-progress")
    luna = "codex:019fd0a1-2b3c-7d4e-8f50-617283940a1b"
    job = run_json(capsys, "show", luna, "--db", str(db))
    assert job["cost_usd"] == pytest.approx(0.05695)
    assert job["pricing_version"] == pricing.PRICING_VERSION
    cfg = tmp_path / "jobvault.toml"
    cfg.write_text(
        '[pricing."gpt-5.6-luna"]\ninput = 0.2\noutput = 1.2\ncache_read = 0.02\n'
        "cache_write = 0.25\n",
        encoding="utf-8",
    )
    out = run_json(capsys, "rebuild", "--db", str(db), "--config", str(cfg), "--no-progress")
    assert out["jobs"] == 2
    job = run_json(capsys, "show", luna, "--db", str(db), "--config", str(cfg))
    # ccusage 20.0.24's offline figures for luna, so its own total: $0.01139.
    assert job["cost_usd"] == pytest.approx(0.01139)
    assert job["pricing_version"].startswith(pricing.PRICING_VERSION + "+user.")
    conn = sqlite3.connect(db)
    try:
        usage = conn.execute(
            "SELECT SUM(cost_usd) FROM job_usage WHERE job_id = ?", (luna,)
        ).fetchone()[0]
        daily = conn.execute(
            "SELECT SUM(cost_usd) FROM daily_metrics WHERE model = 'gpt-5.6-luna'"
        ).fetchone()[0]
        stored = json.loads(
            conn.execute("SELECT record FROM jobs WHERE id = ?", (luna,)).fetchone()[0]
        )
    finally:
        conn.close()
    assert usage == pytest.approx(0.01139) and daily == pytest.approx(0.01139)
    assert stored["pricing_version"] == job["pricing_version"]
    # Without the override, `rebuild` brings the table's prices back.
    run_json(capsys, "rebuild", "--db", str(db), "--no-progress")
    assert run_json(capsys, "show", luna, "--db", str(db))["cost_usd"] == pytest.approx(0.05695)


def test_unknown_models_are_marked_unpriced(tmp_path: Path) -> None:
    from jobvault.sources.base import LineContext
    from jobvault.sources.codex import CodexJob

    job = CodexJob("019fd0a4-0000-7000-8000-000000000009")
    ctx = LineContext(1, "main", None, None, None, "/x/sessions/rollout-b.jsonl")
    usage = {"input_tokens": 100, "output_tokens": 10}
    for n, obj in enumerate([
        {"timestamp": "2026-08-03T10:00:00Z", "type": "session_meta", "payload": {"id": "x"}},
        {"timestamp": "2026-08-03T10:00:01Z", "type": "event_msg",
         "payload": {"type": "token_count", "info": {"total_token_usage": usage}}},
        {"timestamp": "2026-08-03T10:00:02Z", "type": "turn_context",
         "payload": {"model": "gpt-9-preview"}},
        {"timestamp": "2026-08-03T10:00:03Z", "type": "event_msg",
         "payload": {"type": "token_count", "info": {"total_token_usage":
                     {"input_tokens": 200, "output_tokens": 20}}}},
    ]):  # fmt: skip
        job.feed(obj, ctx, n)
    record = job.build(finalized=True, machine_id=None).record
    assert record.cost_usd == 0 and record.unpriced_models == ["gpt-9-preview", "unknown"]


async def test_sighup_applies_new_prices_to_the_records_written_after(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from jobvault.config import Config
    from jobvault.service.daemon import run_daemon
    from tests.helpers import SESSION, session_lines

    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    db = tmp_path / "v" / "j.db"
    config = Config(watch=(tmp_path / "projects",), db=db, idle_timeout=0.5,
                    rescan_interval=0.2, batch_interval=0.02)  # fmt: skip
    cheap = config.replace(pricing=pricing.parse_overrides({"claude-sonnet-4": {"output": 1.5}}))

    def record(session: str) -> tuple[float, str] | None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT cost_usd, pricing_version FROM jobs WHERE session_id = ? "
                "AND finalized_at IS NOT NULL",
                (session,),
            ).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()
        return (float(row[0]), str(row[1])) if row else None

    async def wait_for(session: str) -> tuple[float, str]:
        for _ in range(300):
            found = record(session)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no final record for {session}")

    later = "33333333-2222-4333-8444-555555555555"
    async with run_daemon(config, reloader=lambda: cheap) as daemon:
        (project / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(2)))
        before = await wait_for(SESSION)
        daemon.request_reload()
        await asyncio.sleep(0.5)
        (project / f"{later}.jsonl").write_bytes(b"".join(session_lines(2, session=later)))
        after = await wait_for(later)
    # session_lines(2): 20 input and 50 + 51 output tokens of claude-sonnet-4 ($3 / $15).
    assert before[0] == pytest.approx((20 * 3 + 101 * 15) / 1e6, abs=1e-6)
    assert before[1] == pricing.PRICING_VERSION
    assert after[0] == pytest.approx((20 * 3 + 101 * 1.5) / 1e6, abs=1e-6)
    assert after[0] < before[0] / 5
    assert after[1].startswith(pricing.PRICING_VERSION + "+user.")
