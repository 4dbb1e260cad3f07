"""Rate-limit readings: the usage of the subscription's windows, kept for the dashboard.

Claude Code's statusLine JSON carries `rate_limits.five_hour` / `seven_day` (percent used,
reset time) for Pro and Max plans; `jobvault statusline` sends them to the daemon, whose writer
thread calls `record` (the one writer: nothing else writes the database). A reading is stored
when it differs from its window's last one or that one is `HEARTBEAT` old, so a statusline
refreshed several times a second adds a handful of rows an hour.

Codex reports its own windows in each rollout; those are kept per job in `job_rate_limits`
(a later migration). `history` reads both, the second only when the table exists.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypedDict

from jobvault.errors import UsageError

Window = Literal["five_hour", "seven_day"]
WINDOWS: tuple[Window, ...] = ("five_hour", "seven_day")
HEARTBEAT = timedelta(minutes=15)
MAX_PERCENT = 10_000.0  # "can exceed 100": a bound against garbage, not a cap on real use
HISTORY_LIMIT = 5000  # rows per source in one answer (a week of changes every two minutes)
_EARLIEST, _LATEST = 946_684_800, 7_258_118_400  # 2000-01-01 .. 2200-01-01, Unix seconds


class Reading(TypedDict):
    window: Window
    used_percent: float
    resets_at: str | None


class Sample(TypedDict):
    at: str
    source: str
    window: str
    used_percent: float
    resets_at: str | None
    window_minutes: int | None
    job_id: str | None


class History(TypedDict):
    since: str | None
    until: str | None
    samples: list[Sample]
    codex_known: bool  # whether the vault has the per-job Codex table at all


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _reset_time(value: Any, window: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"rate_limits.{window}.resets_at must be Unix seconds or an ISO time")
    if isinstance(value, int | float):
        if not (math.isfinite(value) and _EARLIEST <= value <= _LATEST):
            raise UsageError(f"rate_limits.{window}.resets_at is out of range: {value!r}")
        return iso(datetime.fromtimestamp(value, UTC))
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"rate_limits.{window}.resets_at is not a time: {value!r}") from None
        return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    raise UsageError(f"rate_limits.{window}.resets_at must be Unix seconds or an ISO time")


def parse_rate_limits(value: Any) -> list[Reading]:
    """The readings in a statusLine `rate_limits` object; absent windows are skipped.

    A window present with a bad value is a UsageError naming it (never a stored guess).
    """
    if value is None:
        return []
    if not isinstance(value, dict):
        raise UsageError("rate_limits must be an object")
    readings: list[Reading] = []
    for window in WINDOWS:
        entry = value.get(window)
        if entry is None:
            continue
        if not isinstance(entry, dict):
            raise UsageError(f"rate_limits.{window} must be an object")
        used = entry.get("used_percentage")
        if used is None:
            continue
        if isinstance(used, bool) or not isinstance(used, int | float):
            raise UsageError(f"rate_limits.{window}.used_percentage must be a number")
        if not (math.isfinite(used) and 0 <= used <= MAX_PERCENT):
            raise UsageError(f"rate_limits.{window}.used_percentage is out of range: {used!r}")
        readings.append(
            {
                "window": window,
                "used_percent": float(used),
                "resets_at": _reset_time(entry.get("resets_at"), window),
            }
        )
    return readings


def record(
    conn: sqlite3.Connection,
    readings: list[Reading],
    *,
    session_id: str | None = None,
    source: str = "claude",
    now: datetime | None = None,
) -> int:
    """Store the readings that are news (writer thread only); return how many were stored."""
    if not readings:
        return 0
    moment = now or datetime.now(UTC)
    at = iso(moment)
    stored = 0
    # Between the engine's write rounds no transaction is open; should one be (a round still
    # in progress on this thread), a savepoint nests inside it instead of failing.
    nested = conn.in_transaction
    conn.execute("SAVEPOINT rate_limits" if nested else "BEGIN IMMEDIATE")
    try:
        for reading in readings:
            last = conn.execute(
                "SELECT at, used_percent, resets_at FROM rate_limit_samples "
                "WHERE source = ? AND window = ? ORDER BY at DESC, id DESC LIMIT 1",
                (source, reading["window"]),
            ).fetchone()
            if last is not None:
                same = last[1] == reading["used_percent"] and last[2] == reading["resets_at"]
                age = moment - datetime.fromisoformat(last[0].replace("Z", "+00:00"))
                if same and age < HEARTBEAT:
                    continue
            conn.execute(
                "INSERT INTO rate_limit_samples (at, source, session_id, window, used_percent, "
                "resets_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    at,
                    source,
                    session_id,
                    reading["window"],
                    reading["used_percent"],
                    reading["resets_at"],
                ),
            )
            stored += 1
        conn.execute("RELEASE rate_limits" if nested else "COMMIT")
    except BaseException:
        conn.execute("ROLLBACK TO rate_limits" if nested else "ROLLBACK")
        if nested:
            conn.execute("RELEASE rate_limits")
        raise
    return stored


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def history(conn: sqlite3.Connection, since: str | None, until: str | None) -> History:
    """Every reading in [since, until), oldest first: Claude's statusline samples, then
    Codex's per-job windows when the vault has them (`job_rate_limits`)."""
    where, params = [], []
    if since:
        where.append("at >= ?")
        params.append(since)
    if until:
        where.append("at < ?")
        params.append(until)
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    # The same columns from both tables: ours has no window length or job, Codex's no source.
    tables = {
        "rate_limit_samples": "at, source, window, used_percent, resets_at, NULL, NULL",
        "job_rate_limits": "at, 'codex', window, used_percent, resets_at, window_minutes, job_id",
    }
    keys = ("at", "source", "window", "used_percent", "resets_at", "window_minutes", "job_id")
    samples: list[Sample] = []
    present = {name: _has_table(conn, name) for name in tables}
    for table, columns in tables.items():
        if not present[table]:
            continue
        rows = conn.execute(
            f"SELECT {columns} FROM (SELECT * FROM {table}{cond} ORDER BY at DESC LIMIT ?) "
            "ORDER BY at, window",
            (*params, HISTORY_LIMIT),
        )
        samples += [dict(zip(keys, row, strict=True)) for row in rows]  # type: ignore[misc]
    codex = present["job_rate_limits"]
    return {"since": since, "until": until, "samples": samples, "codex_known": codex}
