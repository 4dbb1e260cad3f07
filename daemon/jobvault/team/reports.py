"""The `stats` and `jobs` methods answered from the team database, in the local shapes.

Each function takes the parameters `serve.methods` validated for the local method of the same
name and returns what that method returns, built by the same shaping code (`store.stats`):
only where the figures come from differs. Team totals count a message once: every machine's
hourly rows, minus `jobvault.duplicate_usage` (each copy of a message, or of a Codex rollout,
present on several machines except the one that counts). Reports without job filters other
than the source read the `usage_hourly` rollup through the `hourly_usage` view; the others
read `job_usage` joined with `jobs`, like the local reports do. `machine` is one more job
filter: a machine's figures are the messages counted on it, so the machines add up to the team.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from jobvault.errors import UsageError
from jobvault.records import JobRecord
from jobvault.store import queries, stats
from jobvault.team.vault import hour_of, moment

if TYPE_CHECKING:
    import psycopg

_SUMS = (
    "SUM({a}.messages)::bigint, SUM({a}.input_tokens)::bigint, SUM({a}.output_tokens)::bigint, "
    "SUM({a}.cache_creation_tokens)::bigint, SUM({a}.cache_read_tokens)::bigint, "
    "SUM({a}.reasoning_tokens)::bigint, SUM({a}.cost_usd)"
)
_NEG = (
    "-SUM({a}.messages)::bigint, -SUM({a}.input_tokens)::bigint, "
    "-SUM({a}.output_tokens)::bigint, -SUM({a}.cache_creation_tokens)::bigint, "
    "-SUM({a}.cache_read_tokens)::bigint, -SUM({a}.reasoning_tokens)::bigint, "
    "-SUM({a}.cost_usd)"
)
ORDERS: dict[str, tuple[str, str, str]] = {
    # name -> (sort expression, its type for the cursor, direction)
    "-started_at": ("COALESCE(j.started_at, '-infinity')", "timestamptz", "DESC"),
    "started_at": ("COALESCE(j.started_at, '-infinity')", "timestamptz", "ASC"),
    "-ended_at": ("COALESCE(j.ended_at, '-infinity')", "timestamptz", "DESC"),
    "ended_at": ("COALESCE(j.ended_at, '-infinity')", "timestamptz", "ASC"),
    "-cost_usd": ("j.cost_usd", "float8", "DESC"),
    "cost_usd": ("j.cost_usd", "float8", "ASC"),
    "-duration_ms": ("COALESCE(j.duration_ms, 0)", "bigint", "DESC"),
    "duration_ms": ("COALESCE(j.duration_ms, 0)", "bigint", "ASC"),
}
assert set(ORDERS) == set(queries.ORDERS), "the team orders are the local ones"


def glob_regex(glob: str) -> str:
    """SQLite's GLOB (`*`, `?`, `[...]`, `[^...]`; case-sensitive) as a PostgreSQL regex."""
    out = ["^"]
    i = 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i + 1
            if j < len(glob) and glob[j] == "^":
                j += 1
            if j < len(glob) and glob[j] == "]":
                j += 1
            while j < len(glob) and glob[j] != "]":
                j += 1
            if j >= len(glob):
                return "(?!)"  # an unclosed [ matches nothing, as in SQLite
            else:
                body = glob[i + 1 : j]
                negate = body.startswith("^")
                items = _class_items(body[1:] if negate else body)
                out.append("[" + ("^" if negate else "") + "".join(items) + "]")
                i = j
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out) + "$"


def _class_items(body: str) -> list[str]:
    """A GLOB class's body (never empty: a `]` first is itself) as regex items, read as
    SQLite's patternCompare reads it: `a-z` is a range when a character comes before the `-`
    and one after it (else the `-` is itself); the character before the `-` matches itself
    even when the range is reversed (which adds nothing more); every character is escaped,
    so no `--`, `[:` or `\\` means anything more to PostgreSQL or Python."""
    items: list[str] = []
    prior: str | None = None
    k = 0
    while k < len(body):
        char = body[k]
        if char == "-" and prior is not None and k + 1 < len(body):
            high = body[k + 1]
            if prior <= high:
                items[-1] = _class_char(prior) + "-" + _class_char(high)
            prior = None
            k += 2
            continue
        items.append(_class_char(char))
        prior = char
        k += 1
    return items


def _class_char(char: str) -> str:
    return char if char.isalnum() else "\\" + char


def job_conditions(filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """`queries.job_filters` for the team tables: conditions on `j` (jobvault.jobs)."""
    where: list[str] = []
    params: list[Any] = []
    f = {k: v for k, v in filters.items() if v is not None}
    if "since" in f:
        where.append("j.started_at >= %s")
        params.append(moment(f["since"]))
    if "until" in f:
        where.append("j.started_at < %s")
        params.append(moment(f["until"]))
    for key, column in (("source", "source"), ("status", "status"), ("project", "project"),
                        ("machine", "machine_id")):  # fmt: skip
        if key in f:
            where.append(f"j.{column} = %s")
            params.append(f[key])
    if "model" in f:
        where.append("(j.model = %s OR %s = ANY(j.models))")
        params += [f["model"], f["model"]]
    if "cwd" in f:
        cwd = str(f["cwd"]).rstrip("/") or "/"
        where.append("(j.cwd = %s OR starts_with(j.cwd, %s))")
        params += [cwd, cwd.rstrip("/") + "/"]
    if "tool" in f:
        where.append(
            "EXISTS (SELECT 1 FROM jobvault.tool_calls t WHERE t.machine_id = j.machine_id "
            "AND t.job_id = j.job_id AND t.name = %s)"
        )
        params.append(f["tool"])
    files: list[str] = []
    if "file" in f:
        files.append("m.path = %s")
        params.append(f["file"])
    if f.get("file_prefix"):
        files.append("starts_with(m.path, %s)")
        params.append(f["file_prefix"])
    if "file_glob" in f:
        files.append("m.path ~ %s")
        params.append(glob_regex(f["file_glob"]))
    if files:
        where.append(
            "EXISTS (SELECT 1 FROM jobvault.files_modified m WHERE m.machine_id = j.machine_id "
            f"AND m.job_id = j.job_id AND {' AND '.join(files)})",
        )
    if "min_cost" in f:
        where.append("j.cost_usd >= %s")
        params.append(float(f["min_cost"]))
    if "max_cost" in f:
        where.append("j.cost_usd <= %s")
        params.append(float(f["max_cost"]))
    return where, params


class _Scope:
    """The usage rows a report covers (job filters, an hour range, a model), for `job_usage`
    (alias u) and `duplicate_usage` (alias d), both joined with `jobs` (alias j)."""

    def __init__(self, since: str | None, until: str | None, filters: dict[str, Any]) -> None:
        filters = {k: v for k, v in filters.items() if v is not None}
        self.model: str | None = filters.get("model")
        self.job_where, self.job_params = job_conditions(
            {k: v for k, v in filters.items() if k != "model"}
        )
        low, high = stats.hour_bounds(since, until)
        self.low = hour_of(low) if low else None
        self.high = hour_of(high) if high else None
        # Only the source (or nothing) filters jobs: the hourly rollup answers period reports.
        self.plain = set(filters) <= {"source", "model"}
        self.source: str | None = filters.get("source")

    def join(self, *selects: str) -> str:
        """The join with `jobs`, when a condition or a selected column reads it."""
        if self.job_where or any("j." in s for s in selects):
            return " JOIN jobvault.jobs j USING (machine_id, job_id)"
        return ""

    def where(self, alias: str, *, known_hours: bool = False) -> tuple[str, list[Any]]:
        conditions = list(self.job_where)
        params = list(self.job_params)
        if self.low is not None:
            conditions.append(f"{alias}.hour >= %s")
            params.append(self.low)
        if self.high is not None:
            conditions.append(f"{alias}.hour < %s")
            params.append(self.high)
        if known_hours:
            conditions.append(f"{alias}.hour IS NOT NULL")
        if self.model:
            conditions.append(f"{alias}.model = %s")
            params.append(self.model)
        return (" WHERE " + " AND ".join(conditions)) if conditions else "", params

    def rows(
        self,
        conn: psycopg.Connection[Any],
        keys: str,
        *,
        known_hours: bool = False,
        usage: bool = True,
        duplicates: bool = True,
        jobs: list[str] | None = None,
        count_jobs: bool = False,
        aggregates: tuple[str, str] = ("", ""),
    ) -> list[tuple[Any, ...]]:
        """(keys..., [jobs,] sums...) of every machine's rows, then the duplicates' negated
        sums, grouped by `keys` (a select list over alias {a}, u or d, and j).

        `jobs` restricts the rows to those job ids; `count_jobs` adds the number of distinct
        job ids after the keys (a session on two machines is one session, as in one vault);
        `aggregates` (for the usage rows, for the duplicates) come after the keys.
        """
        out: list[tuple[Any, ...]] = []
        group = ", ".join(str(i + 1) for i in range(_columns(keys)))
        tables = [("jobvault.job_usage", "u", _SUMS, aggregates[0])] if usage else []
        if duplicates:
            tables.append(("jobvault.duplicate_usage", "d", _NEG, aggregates[1]))
        for table, alias, sums, extra in tables:
            where, params = self.where(alias, known_hours=known_hours)
            if jobs is not None:
                where += (" AND " if where else " WHERE ") + f"{alias}.job_id = ANY(%s)"
                params.append(jobs)
            counted = f"COUNT(DISTINCT {alias}.job_id), " if count_jobs else ""
            if extra:
                counted += extra.format(a=alias) + ", "
            join = self.join(keys, extra)
            sql = (
                f"SELECT {keys.format(a=alias)}, {counted}{sums.format(a=alias)} FROM {table} "
                f"{alias}{join}{where} GROUP BY {group}"
            )
            out.extend(conn.execute(sql, params).fetchall())
        return out


def _columns(select: str) -> int:
    """How many expressions a select list has (commas inside parentheses aside)."""
    depth = 0
    count = 1
    for char in select:
        depth += {"(": 1, ")": -1}.get(char, 0)
        count += char == "," and depth == 0
    return count


def _label(hour: datetime, group_by: str, tz: Any) -> str:
    return stats.period_of(hour.astimezone(tz).date(), group_by)


def usage(
    conn: psycopg.Connection[Any],
    group_by: str,
    *,
    timezone: str = "UTC",
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, Any] | None = None,
    top: int = 0,
) -> dict[str, Any]:
    """`stats.usage` over every machine (see `store.stats.usage`)."""
    if group_by not in stats.GROUP_BY:
        raise UsageError(f"unknown group_by {group_by!r} (one of {', '.join(stats.GROUP_BY)})")
    tz = stats.zone(timezone)
    scope = _Scope(since, until, filters or {})
    if group_by in stats.PERIODS:
        rows = _periods(conn, group_by, tz, scope)
    else:
        rows = _by_key(conn, group_by, scope)
    return stats.usage_result(
        group_by, timezone, since, until, rows, _top(conn, scope, top) if top > 0 else None
    )


def _periods(
    conn: psycopg.Connection[Any], group_by: str, tz: Any, scope: _Scope
) -> list[dict[str, Any]]:
    periods = stats.PeriodTotals()
    labels: dict[datetime, str] = {}
    if scope.plain:
        conditions: list[str] = ["hour IS NOT NULL"]
        params: list[Any] = []
        for column, value in (("source", scope.source), ("model", scope.model)):
            if value:
                conditions.append(f"{column} = %s")
                params.append(value)
        for op, bound in ((">=", scope.low), ("<", scope.high)):
            if bound is not None:
                conditions.append(f"hour {op} %s")
                params.append(bound)
        found: list[tuple[Any, ...]] = conn.execute(
            f"SELECT hour, model, {_SUMS.format(a='h')} FROM jobvault.hourly_usage h "
            f"WHERE {' AND '.join(conditions)} GROUP BY 1, 2",
            params,
        ).fetchall()
    else:
        found = scope.rows(conn, "{a}.hour, {a}.model", known_hours=True)
    for hour, model, *values in found:
        if hour not in labels:
            labels[hour] = _label(hour, group_by, tz)
        periods.add(labels[hour], model, values)
    return periods.rows()


_KEYS = {"model": "{a}.model", "project": "COALESCE(j.project, '')", "source": "j.source",
         "machine": "{a}.machine_id"}  # fmt: skip


def _by_key(conn: psycopg.Connection[Any], group_by: str, scope: _Scope) -> list[dict[str, Any]]:
    """Per model / project / source / machine, with the number of jobs that count in it."""
    key = _KEYS[group_by]
    sums: dict[Any, list[Any]] = {}
    jobs: dict[Any, int] = {}
    for name, count, *values in scope.rows(conn, key, duplicates=False, count_jobs=True):
        sums[name] = [v or 0 for v in values]
        jobs[name] = count
    # Duplicates, per job: a job all of whose messages in scope count elsewhere (in a job of
    # another id) no longer counts in its row's jobs.
    less = scope.rows(conn, f"{key}, {{a}}.job_id", usage=False)
    for name, _job, *values in less:
        acc = sums.setdefault(name, [0, 0, 0, 0, 0, 0, 0.0])
        for i, value in enumerate(values):
            acc[i] += value or 0
    if less:
        ids = sorted({r[1] for r in less})
        held = {
            (r[0], r[1]): r[2]
            for r in scope.rows(conn, f"{key}, {{a}}.job_id", duplicates=False, jobs=ids)
        }
        for name, job, minus, *_ in less:
            if held.get((name, job), 0) + minus <= 0:
                jobs[name] = jobs.get(name, 0) - 1
    rows = [
        stats.key_row(group_by, name, jobs.get(name, 0), values)
        for name, values in sums.items()
        if values[0] or any(values[1:6])
    ]
    if group_by == "machine":
        known = {row["machine"]: row for row in rows}
        for machine, label, pushed in conn.execute(
            "SELECT machine_id, name, last_push_at FROM jobvault.machines"
        ):
            row = known.get(machine) or stats.key_row("machine", machine, 0, ())
            row.update(name=label, last_push_at=_iso(pushed))
            if machine not in known:
                rows.append(row)
    rows.sort(key=lambda r: (-r["cost_usd"], r[group_by] or ""))
    return rows


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _top(conn: psycopg.Connection[Any], scope: _Scope, limit: int) -> list[dict[str, Any]]:
    """The sessions that cost most within the scope, after duplicates are taken out.

    A session is a job id: its copies on several machines are one session, as in one vault
    (its details are those of the most complete copy). Duplicates only lower a session's
    figures, so the true top `limit` is among the first `limit` + (sessions with duplicates)
    by raw cost.
    """
    tokens = ("SUM({a}.input_tokens + {a}.output_tokens + {a}.cache_creation_tokens + "
              "{a}.cache_read_tokens)::bigint")  # fmt: skip
    where, params = scope.where("d")
    less: dict[str, list[float]] = {
        job: [cost, toks]
        for job, cost, toks in conn.execute(
            f"SELECT d.job_id, SUM(d.cost_usd), {tokens.format(a='d')} "
            f"FROM jobvault.duplicate_usage d{scope.join()}{where} GROUP BY 1",
            params,
        )
    }
    where, params = scope.where("u")
    if scope.low is None and scope.high is None and not scope.model:
        # Whole jobs: their recorded cost orders them, by index, instead of summing every
        # hourly row of the team; the candidates' exact sums are taken below. A job whose
        # copies on several machines add up is one with duplicates, a candidate anyway.
        pairs = conn.execute(
            "SELECT j.machine_id, j.job_id FROM jobvault.jobs j"
            + (" WHERE " + " AND ".join(scope.job_where) if scope.job_where else "")
            + " ORDER BY j.cost_usd DESC LIMIT %s",
            [*scope.job_params, 2 * limit + 10],
        ).fetchall()
        ids = sorted({job for _, job in pairs} | set(less))
        copies = conn.execute(
            "SELECT machine_id, job_id FROM jobvault.jobs WHERE job_id = ANY(%s)", (ids,)
        ).fetchall()
        where += (" AND " if where else " WHERE ") + (
            "(u.machine_id, u.job_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        )
        params += [[m for m, _ in copies], [j for _, j in copies]]
    found = conn.execute(
        f"SELECT u.job_id, SUM(u.cost_usd), {tokens.format(a='u')} "
        f"FROM jobvault.job_usage u{scope.join()}{where} "
        'GROUP BY 1 ORDER BY 2 DESC, u.job_id COLLATE "C" LIMIT %s',
        [*params, limit + len(less)],
    ).fetchall()
    ranked: list[tuple[float, int, str]] = []
    for job, cost, toks in found:
        minus = less.get(job, [0.0, 0])
        cost, toks = cost - minus[0], int(toks - minus[1])
        if job in less and toks <= 0 and cost <= 1e-9:
            continue  # every message of this session counts in another one
        ranked.append((cost, toks, job))
    ranked.sort(key=lambda r: (-round(r[0], 9), r[2]))
    ranked = ranked[:limit]
    if not ranked:
        return []
    details = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT DISTINCT ON (job_id) job_id, session_id, source, project, model, "
            "record->>'started_at', prompt, machine_id FROM jobvault.jobs "
            "WHERE job_id = ANY(%s) ORDER BY job_id, message_count DESC, machine_id",
            ([r[2] for r in ranked],),
        )
    }
    return [stats.top_item((job, cost, toks, *details[job])) for cost, toks, job in ranked]


def tools(
    conn: psycopg.Connection[Any],
    *,
    since: str | None = None,
    until: str | None = None,
    filters: dict[str, Any] | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """`stats.tools` over every machine: calls, failures and failure rate per tool."""
    where, params = job_conditions({k: v for k, v in (filters or {}).items() if v is not None})
    if since:
        where.append("t.called_at >= %s")
        params.append(moment(since))
    if until:
        where.append("t.called_at < %s")
        params.append(moment(until))
    joined = any("j." in w for w in where)
    join = " JOIN jobvault.jobs j USING (machine_id, job_id)" if joined else ""
    sql = (
        "SELECT t.name, COUNT(*), COUNT(*) FILTER (WHERE t.is_error), "
        "COUNT(DISTINCT (t.machine_id, t.job_id)) FROM jobvault.tool_calls t"
        + join
        + (" WHERE " + " AND ".join(where) if where else "")
        + ' GROUP BY t.name ORDER BY 2 DESC, t.name COLLATE "C" LIMIT %s'
    )
    return stats.tools_result(conn.execute(sql, [*params, limit]).fetchall(), since, until)


def blocks(
    conn: psycopg.Connection[Any],
    *,
    since: str | None = None,
    until: str | None = None,
    source: str | None = "claude",
    hours: int = 5,
    now: datetime | None = None,
    active_only: bool = False,
) -> dict[str, Any]:
    """`stats.blocks` over every machine (duplicates taken out of each hour's sums)."""
    if not 1 <= hours <= 24:
        raise UsageError("hours must be between 1 and 24")
    now = now or datetime.now(UTC)
    scope = _Scope(since, until, {"source": source} if source else {})
    first = "MIN(COALESCE({a}.first_at, to_char({a}.hour AT TIME ZONE 'UTC', " \
        "'YYYY-MM-DD\"T\"HH24') || ':00:00.000Z'))"  # fmt: skip
    last = "MAX(COALESCE({a}.last_at, to_char({a}.hour AT TIME ZONE 'UTC', " \
        "'YYYY-MM-DD\"T\"HH24') || ':59:59.999Z'))"  # fmt: skip
    merged: dict[tuple[datetime, str], list[Any]] = {}
    for hour, model, lo, hi, *values in scope.rows(
        conn, "{a}.hour, {a}.model", known_hours=True,
        aggregates=(f"{first}, {last}", "NULL::text, NULL::text"),
    ):  # fmt: skip
        # The hour's first and last message come from the usage rows (a duplicate is a copy
        # of a message counted there, with its time).
        entry = merged.setdefault((hour, model), [lo, hi, 0, 0, 0, 0, 0, 0, 0.0])
        if lo is not None:
            entry[0] = lo if entry[0] is None else min(entry[0], lo)
            entry[1] = hi if entry[1] is None else max(entry[1], hi)
        for i, value in enumerate(values):
            entry[2 + i] += value or 0
    hourly = sorted(
        (
            (hour.astimezone(UTC).strftime("%Y-%m-%dT%H"), model, *entry)
            for (hour, model), entry in merged.items()
            if entry[2] or any(entry[3:8])
        ),
        key=lambda r: (r[0], r[2], r[1]),
    )
    return stats.blocks_result(hourly, hours, source, now, active_only)


def page_jobs(
    conn: psycopg.Connection[Any],
    filters: dict[str, Any],
    order: str = "-started_at",
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """`jobs.list` over every machine (a job is identified by machine and job id)."""
    if order not in ORDERS:
        raise UsageError(f"unknown order {order!r} (one of {', '.join(ORDERS)})")
    expr, kind, direction = ORDERS[order]
    where, params = job_conditions(filters)
    if cursor:
        value, ident = queries.decode_cursor(cursor)
        job, _, machine = ident.partition("\x1f")
        op = "<" if direction == "DESC" else ">"
        where.append(f"({expr}, j.job_id, j.machine_id) {op} (%s::{kind}, %s, %s)")
        params += [value, job, machine]
    sql = f"SELECT j.record, j.status, ({expr})::text, j.job_id, j.machine_id FROM jobvault.jobs j"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {expr} {direction}, j.job_id {direction}, j.machine_id {direction}"
    if limit > 0:
        sql += f" LIMIT {int(limit) + 1}"
    rows, next_cursor = queries.paged(
        conn.execute(sql, params).fetchall(),
        limit,
        lambda r: queries.encode_cursor(r[2], f"{r[3]}\x1f{r[4]}"),
    )
    return {"jobs": [_record(r[0], r[1]) for r in rows], "next_cursor": next_cursor}


_FIELD_ORDER = {f.name: i for i, f in enumerate(dataclasses.fields(JobRecord))}


def _record(value: Any, status: str) -> dict[str, Any]:
    """A team record with its keys in the local records' order (jsonb keeps its own)."""
    record: dict[str, Any] = orjson.loads(value) if isinstance(value, str | bytes) else dict(value)
    record["status"] = status
    return dict(sorted(record.items(), key=lambda kv: (_FIELD_ORDER.get(kv[0], 1 << 20), kv[0])))
