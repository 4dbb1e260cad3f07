"""Usage reports: tokens and cost by period, model, project and source; tools; billing blocks.

Every figure comes from `job_usage` (tokens and cost per job, UTC hour and model), so reports
count exactly what job records count (ccusage's deduplication, subagents included). Periods
are local to a time zone: each UTC hour is placed in the local day, ISO week or month its
start falls in, which is exact for every zone whose offset is a whole number of hours (for
the few :30 / :45 zones, usage in the part-hour around local midnight lands on the day the
UTC hour started). UTC day reports without job filters read `daily_metrics`, the per-day
totals kept incrementally as jobs are written.

Billing blocks follow ccusage's `blocks`: a block starts at the UTC hour of its first
message and lasts `hours` (5); a message more than that after the block's start opens the
next block; a silence longer than that between blocks is reported as a gap. Block membership
only needs hours, and `job_usage.first_at` / `last_at` (the first and last message of each
hour) give the exact ends, gaps, burn rate and "active" state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, tzinfo

from jobvault.errors import UsageError
from jobvault.paths import UTC_NAMES as _UTC_NAMES
from jobvault.store.queries import job_filters, parse_time

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any, Literal, TypeAlias
    from zoneinfo import ZoneInfo

    GroupBy: TypeAlias = Literal["day", "week", "month", "model", "project", "source", "machine"]
    Zone: TypeAlias = "ZoneInfo | UtcZone"

GROUP_BY: tuple[GroupBy, ...] = ("day", "week", "month", "model", "project", "source", "machine")
PERIODS = ("day", "week", "month")
TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
              "reasoning_tokens")  # fmt: skip
_SUMS = (
    "SUM(u.messages), SUM(u.input_tokens), SUM(u.output_tokens), SUM(u.cache_creation_tokens), "
    "SUM(u.cache_read_tokens), SUM(u.reasoning_tokens), SUM(u.cost_usd)"
)
_ZERO = timedelta(0)


class UtcZone(tzinfo):
    """UTC under one of its IANA names (`key`, as ZoneInfo has it), without `zoneinfo`.

    Importing `zoneinfo` reads `sysconfig`: 3 ms of every report in UTC, a twentieth of a
    `jobvault stats daily --json` process.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return _ZERO

    def dst(self, dt: datetime | None) -> timedelta:
        return _ZERO

    def tzname(self, dt: datetime | None) -> str:
        return "UTC"

    def __repr__(self) -> str:
        return f"UtcZone({self.key!r})"


def zone(name: str) -> Zone:
    """The IANA time zone `name`, or a UsageError naming it."""
    if name in _UTC_NAMES:
        return UtcZone(name)
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Paris"
        ) from None


def parse_local_time(value: str, tz: Zone) -> str:
    """Like `queries.parse_time`, but a date or time without an offset is local to `tz`."""
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return parse_time(text)  # an age such as 7d, or an error naming the value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return parse_time(moment.isoformat())


def hour_bounds(since: str | None, until: str | None) -> tuple[str | None, str | None]:
    """UTC hour keys ("YYYY-MM-DDTHH") covering [since, until): hours are the resolution."""
    low = since[:13] if since else None
    high = None
    if until:
        moment = datetime.fromisoformat(until.replace("Z", "+00:00"))
        floor = moment.replace(minute=0, second=0, microsecond=0)
        high = (floor if floor == moment else floor + timedelta(hours=1)).strftime("%Y-%m-%dT%H")
    return low, high


def _hour_time(hour: str) -> datetime:
    return datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)


def period_of(day: date, group_by: str) -> str:
    """The label of the day / ISO week / month holding `day`."""
    if group_by == "day":
        return day.isoformat()
    if group_by == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year:04d}-{day.month:02d}"


def _empty() -> dict[str, Any]:
    return {"messages": 0, **dict.fromkeys(TOKEN_KEYS, 0), "cost_usd": 0.0}


def _add(target: dict[str, Any], values: Iterable[Any]) -> None:
    for key, value in zip(("messages", *TOKEN_KEYS, "cost_usd"), values, strict=True):
        target[key] += value or 0


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    row["total_tokens"] = sum(row[k] for k in TOKEN_KEYS[:4])
    row["cost_usd"] = round(row["cost_usd"], 6)
    return row


class _Scope:
    """The usage rows a report covers: an hour range, a model, and job filters."""

    __slots__ = ("hours", "joined", "model", "params", "plain", "source", "where")

    def __init__(
        self, since: str | None, until: str | None, model: str | None, filters: dict[str, Any]
    ) -> None:
        where, params = job_filters({k: v for k, v in filters.items() if k != "model"})
        self.joined = bool(where)  # a condition reads `jobs`: join it (else job_usage alone)
        low, high = hour_bounds(since, until)
        if low:
            where.append("u.hour >= ?")
            params.append(low)
        if high:
            where.append("u.hour < ?")
            params.append(high)
        if model:
            where.append("u.model = ?")
            params.append(model)
        self.where: list[str] = where
        self.params: list[Any] = params
        # No job filter but the source: the rollups can answer period reports.
        self.plain = {k for k, v in filters.items() if v is not None and k != "model"} <= {"source"}
        self.hours: tuple[str | None, str | None] = (low, high)  # the UTC hour range [low, high)
        self.model = model
        self.source: str | None = filters.get("source")

    def sql(self, join: bool = False) -> str:
        """FROM job_usage u (joined with jobs when needed or asked) and the conditions."""
        text = " FROM job_usage u"
        if join or self.joined:
            text += " JOIN jobs ON jobs.id = u.job_id"
        return text + ((" WHERE " + " AND ".join(self.where)) if self.where else "")


def usage(
    conn: sqlite3.Connection,
    group_by: str,
    *,
    timezone: str = "UTC",
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, Any] | None = None,
    top: int = 0,
) -> dict[str, Any]:
    """Tokens and cost grouped by period (local to `timezone`), model, project or source.

    `since` / `until` are UTC ISO times and select usage by the hour it happened in (not by
    when its job started); `filters` are the `jobs.list` filters on the jobs, except `model`,
    which selects usage rows of that model. `top` adds the most expensive sessions.
    """
    if group_by not in GROUP_BY:
        raise UsageError(f"unknown group_by {group_by!r} (one of {', '.join(GROUP_BY)})")
    tz = zone(timezone)
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    scope = _Scope(since, until, filters.get("model"), filters)
    if group_by in PERIODS:
        rows = _periods(conn, group_by, tz, scope, since, until, filters)
    else:
        rows = _by_key(conn, group_by, scope)
    top_rows = top_sessions(conn, scope, top) if top > 0 else None
    return usage_result(group_by, timezone, since, until, rows, top_rows)


def usage_result(
    group_by: str,
    timezone: str,
    since: str | None,
    until: str | None,
    rows: list[dict[str, Any]],
    top: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The `stats.usage` answer around its rows (shared with the team reports)."""
    totals = _empty()
    for row in rows:
        _add(totals, (row["messages"], *(row[k] for k in TOKEN_KEYS), row["cost_usd"]))
    result: dict[str, Any] = {
        "group_by": group_by,
        "timezone": timezone,
        "since": since,
        "until": until,
        "rows": rows,
        "totals": _finish(totals),
    }
    if group_by in PERIODS and rows:
        result["totals"]["average_cost_per_period"] = round(totals["cost_usd"] / len(rows), 6)
    if top is not None:
        result["top_sessions"] = top
    return result


def _utc_days(since: str | None, until: str | None) -> bool:
    return all(t is None or t[10:] in ("T00:00:00.000Z", "") for t in (since, until))


_FIELDS = ("messages", *TOKEN_KEYS, "cost_usd")


def _figures(values: list[Any]) -> dict[str, Any]:
    """A row's figures from its sums (the keys and order of `_empty` then `_finish`)."""
    row = dict(zip(_FIELDS, values, strict=True))
    row["cost_usd"] = round(float(row["cost_usd"]), 6)
    row["total_tokens"] = values[1] + values[2] + values[3] + values[4]
    return row


def _periods(
    conn: sqlite3.Connection,
    group_by: str,
    tz: Zone,
    scope: _Scope,
    since: str | None,
    until: str | None,
    filters: dict[str, Any],
) -> list[dict[str, Any]]:
    periods = PeriodTotals()
    if scope.plain and tz.key in _UTC_NAMES and _utc_days(since, until):
        # Whole UTC days and no job filter: the incrementally kept daily totals answer.
        where, params = [], []
        for key, column, op in (("since", "day", ">="), ("until", "day", "<")):
            value = since if key == "since" else until
            if value:
                where.append(f"{column} {op} ?")
                params.append(value[:10])
        for key in ("source", "model"):
            if filters.get(key):
                where.append(f"{key} = ?")
                params.append(filters[key])
        sql = (
            "SELECT day, model, SUM(messages), SUM(input_tokens), SUM(output_tokens), "
            "SUM(cache_creation_tokens), SUM(cache_read_tokens), SUM(reasoning_tokens), "
            "SUM(cost_usd) FROM daily_metrics"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " GROUP BY day, model"
        )
        found: Iterable[tuple[Any, ...]] = conn.execute(sql, params)
    else:
        found = _local_days(conn, scope, tz)
    labels: dict[str, str] = {}
    for day, model, *values in found:
        label = labels.get(day)
        if label is None:
            label = labels[day] = period_of(date.fromisoformat(day), group_by)
        periods.add(label, model, values)
    return periods.rows()


class PeriodTotals:
    """Usage summed per period and model; `rows` gives the report's rows (shared with the
    team reports, which also subtract duplicates: a model or period left with nothing is
    dropped). The sums are lists (a row per day and model comes in, a dict per period and
    model goes out; this loop is most of a report's time)."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, list[Any]]] = {}

    def add(self, label: str, model: str, values: Iterable[Any]) -> None:
        per = self.sums.get(label)
        if per is None:
            per = self.sums[label] = {}
        current = per.get(model)
        if current is None:
            per[model] = [v or 0 for v in values]
        else:
            for i, value in enumerate(values):
                if value:
                    current[i] += value

    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        previous: float | None = None
        for label in sorted(self.sums):
            per = self.sums[label]
            total = [sum(column) for column in zip(*per.values(), strict=True)]
            if _nothing_in(total):
                continue
            row = _figures(total)
            breakdown = [{"model": m, **_figures(v)} for m, v in per.items() if not _nothing_in(v)]
            breakdown.sort(key=lambda b: (-b["cost_usd"], b["model"]))
            change = None
            if previous:
                change = round(100.0 * (row["cost_usd"] - previous) / previous, 1)
            rows.append({"period": label, **row, "cost_change_pct": change, "models": breakdown})
            previous = row["cost_usd"]
        return rows


def _nothing(sums: dict[str, Any]) -> bool:
    return sums["messages"] == 0 and not any(sums[k] for k in TOKEN_KEYS)


def _nothing_in(values: list[Any]) -> bool:
    """`_nothing` for sums in the order of `_FIELDS`."""
    return values[0] == 0 and not any(values[1 : 1 + len(TOKEN_KEYS)])


def _offsets(tz: Zone, low: str, high: str) -> list[tuple[str, str, int]]:
    """[(first hour, hour after the last, UTC offset in minutes)] covering [low, high].

    The zone's offset changes a few times a year: the range is walked a day at a time and
    each change found to its hour, so a year of hours costs a few hundred offset lookups.
    """

    def minutes(moment: datetime) -> int:
        offset = moment.astimezone(tz).utcoffset()
        return int(offset.total_seconds() // 60) if offset is not None else 0

    start, end = _hour_time(low), _hour_time(high) + timedelta(hours=1)
    day, hour = timedelta(days=1), timedelta(hours=1)
    segments: list[tuple[str, str, int]] = []
    begin, current, moment = start, minutes(start), start
    while moment < end:
        step = min(moment + day, end)
        if minutes(step - hour) != current:  # the offset changed within this day: find when
            while minutes(moment) == current:
                moment += hour
            segments.append((begin.strftime("%Y-%m-%dT%H"), moment.strftime("%Y-%m-%dT%H"),
                             current))  # fmt: skip
            begin, current = moment, minutes(moment)
            continue
        moment = step
    segments.append((begin.strftime("%Y-%m-%dT%H"), end.strftime("%Y-%m-%dT%H"), current))
    return segments


def _day_shift(minutes: int) -> tuple[str, str]:
    """For a UTC offset: (first UTC hour still on the local day, first one on the next).

    A UTC hour H of day D starts at local D + (60 H + offset) minutes, on local day D - 1,
    D or D + 1; the two returned hours ("00".."24") are where those ranges meet.
    """
    back = next((h for h in range(24) if (60 * h + minutes) // 1440 >= 0), 24)
    ahead = next((h for h in range(24) if (60 * h + minutes) // 1440 >= 1), 24)
    return f"{back:02d}", f"{ahead:02d}"


def _local_days(conn: sqlite3.Connection, scope: _Scope, tz: Zone) -> list[tuple[Any, ...]]:
    """Usage per local day (of `tz`) and model in the scope, summed by SQLite.

    Each UTC hour counts on the local day its start falls in. Within a stretch of constant
    offset that day is the hour's UTC day, or the one before or after it depending only on
    the hour of day: SQLite groups by (UTC day, which of the three, model) with string
    comparisons, so Python sees a few rows per day, not one per hour. The hourly rollup
    `usage_hourly` (`m005_read_side`) answers when there is no job filter but the source;
    other filters read the per-job rows.
    """
    rollup = scope.plain
    span: Any = None
    if rollup:
        where, params = ["hour != 'unknown'"], []
        for condition, value in (
            ("hour >= ?", scope.hours[0]),
            ("hour < ?", scope.hours[1]),
            ("source = ?", scope.source),
            ("model = ?", scope.model),
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        try:
            span = conn.execute(
                "SELECT MIN(hour), MAX(hour) FROM usage_hourly WHERE hour != 'unknown'"
            ).fetchone()
        except sqlite3.OperationalError as exc:  # a database older than m005
            if "no such table" not in str(exc):
                raise
            rollup = False
    if rollup:
        sums = ("SUM(messages), SUM(input_tokens), SUM(output_tokens), "
                "SUM(cache_creation_tokens), SUM(cache_read_tokens), SUM(reasoning_tokens), "
                "SUM(cost_usd)")  # fmt: skip
        source = f" FROM usage_hourly WHERE {' AND '.join(where)}"
        hour, model = "hour", "model"
    else:
        span = conn.execute(
            "SELECT MIN(hour), MAX(hour) FROM job_usage WHERE hour != 'unknown'"
        ).fetchone()
        sums, params = _SUMS, list(scope.params)
        source = scope.sql() + (" AND" if scope.where else " WHERE") + " u.hour != 'unknown'"
        hour, model = "u.hour", "u.model"
    if span is None or span[0] is None:
        return []
    outer = ", ".join(f"SUM(v{i})" for i in range(7))
    inner = ", ".join(f"{expr} AS v{i}" for i, expr in enumerate(sums.split(", ")))
    rows: list[tuple[Any, ...]] = []
    for first, stop, minutes in _offsets(tz, span[0], span[1]):
        back, ahead = _day_shift(minutes)
        rows += conn.execute(
            f"SELECT date(d, s || ' days') AS day, m, {outer} FROM ("
            f"SELECT substr({hour}, 1, 10) AS d, CASE WHEN substr({hour}, 12, 2) < ? THEN -1 "
            f"WHEN substr({hour}, 12, 2) >= ? THEN 1 ELSE 0 END AS s, {model} AS m, {inner}"
            f"{source} AND {hour} >= ? AND {hour} < ? GROUP BY d, s, m) GROUP BY day, m",
            (back, ahead, *params, first, stop),
        ).fetchall()
    return rows


def _by_key(conn: sqlite3.Connection, group_by: str, scope: _Scope) -> list[dict[str, Any]]:
    key = {"model": "u.model", "project": "COALESCE(jobs.project, '')", "source": "jobs.source",
           "machine": "COALESCE(jobs.machine_id, '')"}[group_by]  # fmt: skip
    sql = (
        f"SELECT {key}, COUNT(DISTINCT u.job_id), {_SUMS}{scope.sql(join=group_by != 'model')}"
        " GROUP BY 1 ORDER BY SUM(u.cost_usd) DESC, 1"
    )
    return [key_row(group_by, name, jobs, values) for name, jobs, *values in conn.execute(
        sql, scope.params)]  # fmt: skip


def key_row(group_by: str, name: Any, jobs: int, values: Iterable[Any]) -> dict[str, Any]:
    """One row of a model / project / source / machine report."""
    row = _empty()
    _add(row, values)
    out: dict[str, Any] = {group_by: name or None, "jobs": jobs, **_finish(row)}
    if group_by == "machine":  # known to the team database only
        out.update(name=None, last_push_at=None)
    return out


def job_models(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    """One job's usage per model, most expensive first (the rows its record adds up)."""
    rows = []
    for model, *values in conn.execute(
        f"SELECT u.model, {_SUMS} FROM job_usage u WHERE u.job_id = ? GROUP BY u.model "
        "ORDER BY SUM(u.cost_usd) DESC, u.model",
        (job_id,),
    ):
        row = _empty()
        _add(row, values)
        rows.append({"model": model, **_finish(row)})
    return rows


def top_sessions(conn: sqlite3.Connection, scope: _Scope, limit: int) -> list[dict[str, Any]]:
    """The jobs that cost most within the scope (their usage in range, not their lifetime)."""
    sql, params = scope.sql(), list(scope.params)
    if scope.plain and scope.hours == (None, None) and scope.model is None:
        # A job's whole usage is its record's cost: only the jobs the `jobs_order_cost`
        # index puts near the top can be in it (the record's cost is rounded to 6 places,
        # hence the margin), so only their usage rows are summed, not every job's.
        nth = conn.execute(
            "SELECT cost_usd FROM jobs" + (" WHERE source = ?" if scope.source else "")
            + " ORDER BY cost_usd DESC LIMIT 1 OFFSET ?",
            (*([scope.source] if scope.source else []), limit - 1),
        ).fetchone()  # fmt: skip
        if nth is not None and nth[0] > 0:
            sql += (" AND" if scope.where else " WHERE") + (
                " u.job_id IN (SELECT id FROM jobs WHERE cost_usd >= ?)"
            )
            params.append(nth[0] - 1e-5)
    rows = conn.execute(
        "SELECT t.job_id, t.cost, t.tokens, jobs.session_id, jobs.source, jobs.project, "
        "jobs.model, jobs.started_at, jobs.prompt, jobs.machine_id FROM (SELECT u.job_id, "
        "SUM(u.cost_usd) AS cost, SUM(u.input_tokens + u.output_tokens + u.cache_creation_tokens + "
        f"u.cache_read_tokens) AS tokens{sql} GROUP BY u.job_id ORDER BY 2 DESC, 1 "
        "LIMIT ?) t JOIN jobs ON jobs.id = t.job_id ORDER BY t.cost DESC, t.job_id",
        (*params, limit),
    ).fetchall()
    return [top_item(row) for row in rows]


TOP_KEYS = ("id", "cost_usd", "total_tokens", "session_id", "source", "project", "model",
            "started_at", "prompt", "machine_id")  # fmt: skip


def top_item(row: Iterable[Any]) -> dict[str, Any]:
    """One of the most expensive sessions (the columns of TOP_KEYS)."""
    item = dict(zip(TOP_KEYS, row, strict=True))
    item["cost_usd"] = round(item["cost_usd"], 6)
    prompt = item["prompt"]
    item["prompt"] = prompt[:200] if prompt else prompt
    return item


def tools(
    conn: sqlite3.Connection,
    *,
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, Any] | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Calls, failures and failure rate per tool; `since` / `until` select calls by time."""
    source, where, params = _tool_scope(filters, since, until)
    # `+t.name`: grouping must not walk the name index over every call ever made when a time
    # range can seek `tool_calls_time` (370 ms -> 40 ms for 30 days of 100k jobs; all time,
    # a plain scan is faster too).
    sql = (
        f"SELECT t.name, COUNT(*), SUM(t.is_error), COUNT(DISTINCT t.job_id){source}"
        f"{_where(where)} GROUP BY +t.name ORDER BY 2 DESC, 1 LIMIT ?"
    )
    return tools_result(conn.execute(sql, (*params, limit)), since, until)


def tools_result(
    found: Iterable[tuple[str, int, int, int]], since: str | None, until: str | None
) -> dict[str, Any]:
    """The `stats.tools` answer from (tool, calls, failures, jobs) rows, most called first."""
    rows = []
    calls_total = failures_total = 0
    for name, calls, failures, jobs in found:
        calls_total += calls
        failures_total += failures
        rows.append({"tool": name, "calls": calls, "failures": failures, "jobs": jobs,
                     "failure_rate": round(failures / calls, 4) if calls else 0.0})  # fmt: skip
    return {
        "since": since,
        "until": until,
        "rows": rows,
        "totals": {
            "calls": calls_total,
            "failures": failures_total,
            "failure_rate": round(failures_total / calls_total, 4) if calls_total else 0.0,
        },
    }


def _tool_scope(
    filters: dict[str, Any] | None, since: str | None, until: str | None
) -> tuple[str, list[str], list[Any]]:
    """FROM tool_calls t (joined with jobs when there is a condition), the conditions and
    their parameters: shared by `tools` and `tool_periods`, so both count the same calls."""
    where, params = job_filters({k: v for k, v in (filters or {}).items() if v is not None})
    # Only a job filter needs `jobs` (every call has its job: the foreign key cascades); a
    # join for a time range alone made SQLite walk every job first.
    join = " JOIN jobs ON jobs.id = t.job_id" if where else ""
    if since:
        where.append("t.timestamp >= ?")
        params.append(since)
    if until:
        where.append("t.timestamp < ?")
        params.append(until)
    return " FROM tool_calls t" + join, where, params


def _where(conditions: list[str]) -> str:
    return (" WHERE " + " AND ".join(conditions)) if conditions else ""


def tool_periods(
    conn: sqlite3.Connection,
    group_by: str = "day",
    *,
    timezone: str = "UTC",
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Tool calls and failures per local day / week / month: `tools` over time.

    The calls are those `tools` counts for the same arguments, placed by the UTC hour of their
    timestamp (calls without one are in `tools` only).
    """
    tz = zone(timezone)
    source, where, params = _tool_scope(filters, since, until)
    where.append("t.timestamp IS NOT NULL")
    sql = f"SELECT substr(t.timestamp, 1, 13), COUNT(*), SUM(t.is_error){source}{_where(where)}"
    sql += " GROUP BY 1"
    buckets: dict[str, list[int]] = {}
    for hour, calls, failures in conn.execute(sql, params):
        try:
            label = period_of(_hour_time(hour).astimezone(tz).date(), group_by)
        except ValueError:
            continue  # a timestamp that is not ISO: counted by `tools`, not placed in time
        bucket = buckets.setdefault(label, [0, 0])
        bucket[0] += calls
        bucket[1] += failures or 0
    return [
        {"period": label, "calls": calls, "failures": failures,
         "failure_rate": round(failures / calls, 4) if calls else 0.0}
        for label, (calls, failures) in sorted(buckets.items())
    ]  # fmt: skip


def sessions(
    conn: sqlite3.Connection,
    group_by: str = "day",
    *,
    timezone: str = "UTC",
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The number of sessions with usage in each local period: the jobs behind the rows of
    `usage` for the same arguments (a session spanning two days counts on both)."""
    tz = zone(timezone)
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    scope = _Scope(since, until, filters.get("model"), filters)
    sql = (
        "SELECT u.hour, u.job_id"
        + scope.sql()
        + (" AND" if scope.where else " WHERE")
        + " u.hour != 'unknown' GROUP BY u.hour, u.job_id"
    )
    labels: dict[str, str] = {}
    jobs: dict[str, set[str]] = {}
    for hour, job_id in conn.execute(sql, scope.params):
        if hour not in labels:
            labels[hour] = period_of(_hour_time(hour).astimezone(tz).date(), group_by)
        jobs.setdefault(labels[hour], set()).add(job_id)
    return [{"period": label, "sessions": len(ids)} for label, ids in sorted(jobs.items())]


# -- billing blocks -----------------------------------------------------------------------------


class _Block:
    """One billing block being summed (a plain class: this module is part of every report's
    start-up, and dataclasses would import `inspect` into it)."""

    __slots__ = ("first", "last", "models", "start", "totals")

    def __init__(self, start: datetime, first: str, last: str) -> None:
        self.start, self.first, self.last = start, first, last
        self.totals: dict[str, Any] = _empty()
        self.models: list[str] = []


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def blocks(
    conn: sqlite3.Connection,
    *,
    since: str | None = None,
    until: str | None = None,
    source: str | None = "claude",
    hours: int = 5,
    now: datetime | None = None,
    active_only: bool = False,
) -> dict[str, Any]:
    """ccusage-style billing blocks of `hours`, with gaps, and the active block's burn rate."""
    if not 1 <= hours <= 24:
        raise UsageError("hours must be between 1 and 24")
    now = now or datetime.now(UTC)
    filters = {"source": source} if source else {}
    scope = _Scope(since, until, None, filters)
    sql = (
        "SELECT u.hour, u.model, MIN(COALESCE(u.first_at, u.hour || ':00:00.000Z')), "
        f"MAX(COALESCE(u.last_at, u.hour || ':59:59.999Z')), {_SUMS}{scope.sql()}"
        + (" AND" if scope.where else " WHERE")
        + " u.hour != 'unknown' GROUP BY u.hour, u.model ORDER BY u.hour, 3, u.model"
    )
    return blocks_result(conn.execute(sql, scope.params), hours, source, now, active_only)


def blocks_result(
    hourly: Iterable[tuple[Any, ...]],
    hours: int,
    source: str | None,
    now: datetime,
    active_only: bool,
) -> dict[str, Any]:
    """Billing blocks from (hour, model, first, last, sums...) rows in hour order."""
    length = timedelta(hours=hours)
    found: list[_Block] = []
    current: _Block | None = None
    for hour, model, first, last, *values in hourly:
        start = _hour_time(hour)
        if current is None or start >= current.start + length:
            current = _Block(start, first, last)
            found.append(current)
        current.first = min(current.first, first)
        current.last = max(current.last, last)
        _add(current.totals, values)
        if model not in current.models:
            current.models.append(model)
    out: list[dict[str, Any]] = []
    for index, block in enumerate(found):
        if index and not active_only:
            previous = found[index - 1]
            if _time(block.first) - _time(previous.last) > length:
                out.append(_gap(_time(previous.last) + length, _time(block.first)))
        entry = _block_entry(block, length, now)
        if entry["is_active"] or not active_only:
            out.append(entry)
    return {"hours": hours, "source": source, "now": _iso(now), "blocks": out}


def _gap(start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "id": f"gap-{_iso(start)}", "start": _iso(start), "end": _iso(end), "actual_end": None,
        "is_gap": True, "is_active": False, "entries": 0, "models": [],
        **dict.fromkeys(TOKEN_KEYS[:4], 0), "total_tokens": 0, "cost_usd": 0.0,
        "burn_rate": None, "projection": None,
    }  # fmt: skip


def _block_entry(block: _Block, length: timedelta, now: datetime) -> dict[str, Any]:
    totals = _finish(dict(block.totals))
    end = block.start + length
    last = _time(block.last)
    active = now - last < length and now < end
    entry: dict[str, Any] = {
        "id": _iso(block.start), "start": _iso(block.start), "end": _iso(end),
        "actual_end": block.last, "is_gap": False, "is_active": active,
        "entries": totals["messages"], "models": block.models,
        **{k: totals[k] for k in TOKEN_KEYS[:4]}, "total_tokens": totals["total_tokens"],
        "cost_usd": totals["cost_usd"], "burn_rate": None, "projection": None,
    }  # fmt: skip
    minutes = (last - _time(block.first)).total_seconds() / 60
    if active and minutes > 0:
        per_minute = totals["total_tokens"] / minutes
        per_hour = totals["cost_usd"] / minutes * 60
        entry["burn_rate"] = {
            "tokens_per_minute": per_minute,
            "tokens_per_minute_for_indicator": (totals["input_tokens"] + totals["output_tokens"])
            / minutes,
            "cost_per_hour": round(per_hour, 6),
        }
        remaining = max(0, round((end - now).total_seconds() / 60))
        entry["projection"] = {
            "remaining_minutes": remaining,
            "total_tokens": round(totals["total_tokens"] + per_minute * remaining),
            "total_cost": round(totals["cost_usd"] + per_hour / 60 * remaining, 2),
        }
    return entry
