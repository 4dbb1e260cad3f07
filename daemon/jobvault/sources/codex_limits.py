"""The plan's rate-limit windows a Codex rollout reports, read into typed samples.

`token_count` events carry `rate_limits` (also with `info: null`, a refresh only): the
`primary` window (the short one, 5 hours) and the `secondary` one (weekly), each with
`used_percent`, `window_minutes` and `resets_at` (Unix seconds). Older versions wrote
`resets_in_seconds` instead, or a flat `{primary_used_percent, primary_window_minutes, …}`;
`account/rateLimits/updated` events say `reset_at`. Every value is checked: a percent
outside 0..10,000 or a reset time outside year 1..9999 is a bad value, read as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobvault.records import RateLimitSample, RateWindow, count, number
from jobvault.sources import spill

MAX_PERCENT = 10_000.0  # Codex reports percents above 100 when a plan is over its limit
MAX_UNIX = 253_402_300_799  # 9999-12-31T23:59:59Z
WINDOWS: tuple[RateWindow, ...] = ("primary", "secondary")

Order = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Reading:
    """One window's reading, with the line it came from (the order key)."""

    order: Order
    window: str
    used_percent: float | None
    window_minutes: int | None
    resets_at: str | None

    def sample(self) -> RateLimitSample:
        window: RateWindow = "secondary" if self.window == "secondary" else "primary"
        return RateLimitSample(
            self.order[0], window, self.used_percent, self.window_minutes, self.resets_at
        )

    def same_values(self, other: Reading | None) -> bool:
        return other is not None and (
            self.used_percent,
            self.window_minutes,
            self.resets_at,
        ) == (other.used_percent, other.window_minutes, other.resets_at)


def readings(limits: Any, order: Order, bad: list[str]) -> list[Reading]:
    """The windows of a `rate_limits` object (none when the line has no usable time)."""
    at = order[0]
    if not isinstance(limits, dict) or not (at[:4].isdigit() and "T" in at):
        return []
    out: list[Reading] = []
    for window in WINDOWS:
        entry = limits.get(window)
        if isinstance(entry, dict):
            used = _percent(entry.get("used_percent"), f"{window}.used_percent", bad)
            minutes = _minutes(entry.get("window_minutes"), f"{window}.window_minutes", bad)
            resets = _reset(entry, at, window, bad)
        elif f"{window}_used_percent" in limits:  # the flat shape of older versions
            used = _percent(limits.get(f"{window}_used_percent"), f"{window}_used_percent", bad)
            minutes = _minutes(
                limits.get(f"{window}_window_minutes"), f"{window}_window_minutes", bad
            )
            resets = None
        else:
            continue
        if used is None and minutes is None and resets is None:
            continue
        out.append(Reading(order, window, used, minutes, resets))
    return out


def _percent(value: Any, name: str, bad: list[str]) -> float | None:
    return number(value, f"rate_limits.{name}", bad, MAX_PERCENT)


def _minutes(value: Any, name: str, bad: list[str]) -> int | None:
    if value.__class__ is not int:
        return None
    before = len(bad)
    minutes = count(value, f"rate_limits.{name}", bad)
    return None if len(bad) > before else minutes


def _reset(entry: dict[str, Any], at: str, window: str, bad: list[str]) -> str | None:
    stamp = entry.get("resets_at", entry.get("reset_at"))
    if stamp.__class__ in (int, float):
        if 0 <= stamp <= MAX_UNIX:
            return _iso(datetime.fromtimestamp(stamp, UTC))
        bad.append(f"bad value: rate_limits.{window}.resets_at = {str(stamp)[:24]} is no time")
        return None
    if isinstance(stamp, str) and stamp[:4].isdigit():
        return stamp
    seconds = entry.get("resets_in_seconds")
    if seconds.__class__ is int:
        if not 0 <= seconds <= 10**9:
            bad.append(f"bad value: rate_limits.{window}.resets_in_seconds = {str(seconds)[:24]}")
            return None
        try:
            start = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            return None
        return _iso(start + timedelta(seconds=seconds))
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_READING = spill.Codec.of_dataclass(Reading)


def _later(new: Reading, old: Reading) -> bool:
    return new.order > old.order


class RateLog:
    """One file's rate-limit history: a reading is kept when its window's values change."""

    def __init__(self) -> None:
        self.readings: spill.SpillMap[Reading] = spill.SpillMap(_READING, lambda r: r.order, _later)
        self._last: dict[str, Reading] = {}

    def read(self, limits: Any, order: Order, bad: list[str]) -> None:
        for reading in readings(limits, order, bad):
            if reading.same_values(self._last.get(reading.window)):
                continue  # unchanged since the last reading: no new point of history
            self._last[reading.window] = reading
            self.readings.offer(f"{reading.order[0]}|{reading.window}", reading)


def merged(logs: list[RateLog]) -> list[RateLimitSample]:
    """Several files' readings in time order, one per (time, window): the latest line wins."""
    kept: dict[tuple[str, str], Reading] = {}
    for _, _, reading in spill.ordered([log.readings for log in logs]):
        key = (reading.order[0], reading.window)
        old = kept.get(key)
        if old is None or reading.order > old.order:
            kept[key] = reading
    return [r.sample() for _, r in sorted(kept.items())]
