"""What each page shows, read with the socket's own methods on a read-only connection.

Every figure comes from the functions behind `jobvault stats/jobs/search/show --json`
(`serve/methods.py`, `store/stats.py`, `store/replay.py`), called with the parameters those
commands send, so the dashboard, the static report and the CLI cannot disagree. The live
server runs these on its reader threads; `report.py` runs them on the database directly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal, TypedDict
from urllib.parse import urlencode

from jobvault import pricing
from jobvault.errors import UsageError
from jobvault.serve import methods
from jobvault.serve.web import charts
from jobvault.serve.web.charts import cache_hit_rate
from jobvault.store import queries, replay, samples, stats

PERIODS: dict[str, int | None] = {"7d": 7, "30d": 30, "90d": 90, "365d": 365, "all": None}
DEFAULT_PERIOD = "30d"
# The jobs.list filters as the pages take them: `file` is one field for the three ways of
# naming files, as `jobvault search --file` (an exact path, a prefix ending in /, or a glob).
OVERVIEW_FILTERS = (
    "source",
    "model",
    "status",
    "project",
    "cwd",
    "tool",
    "file",
    "min_cost",
    "max_cost",
)
JOB_FILTERS = ("since", "until", *OVERVIEW_FILTERS)
ORDER_LABELS = {
    "-started_at": "newest",
    "started_at": "oldest",
    "-ended_at": "ended last",
    "ended_at": "ended first",
    "-cost_usd": "most expensive",
    "cost_usd": "cheapest",
    "-duration_ms": "longest",
    "duration_ms": "shortest",
}
PAGE_SIZE = 50
FIRST_PAGE = "!"  # in a page trail: the first page (cursors are URL-safe base64, never "!")
REPLAY_PAGE = 200
HEADLINE = (
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "jobs",
)


def _clean(params: Mapping[str, str], keys: tuple[str, ...]) -> dict[str, str]:
    return {k: params[k].strip() for k in keys if params.get(k, "").strip()}


def filter_params(filters: Mapping[str, str]) -> dict[str, Any]:
    """The pages' filters as the socket methods take them (numbers, the three file filters)."""
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if key in ("min_cost", "max_cost"):
            try:
                out[key] = float(value)
            except ValueError:
                raise UsageError(f"{key} must be a number of dollars, not {value!r}") from None
        elif key == "file":
            if any(ch in value for ch in "*?["):
                out["file_glob"] = value
            elif value.endswith("/"):
                out["file_prefix"] = value
            else:
                out["file"] = value
        else:
            out[key] = value
    return out


# -- overview -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverviewQuery:
    """The overview's period and filters, as `jobvault stats` takes them."""

    timezone: str
    period: str = DEFAULT_PERIOD  # a key of PERIODS, or "custom"
    since: str | None = None  # a local date / time or an age, as `stats --since`
    until: str | None = None
    filters: dict[str, str] = field(default_factory=dict)  # source, project, model

    @classmethod
    def parse(cls, params: Mapping[str, str], timezone: str, today: date) -> OverviewQuery:
        tz = params.get("tz", "").strip() or timezone
        stats.zone(tz)  # a UsageError naming a bad zone
        since, until = params.get("since", "").strip(), params.get("until", "").strip()
        period = params.get("period", "").strip() or ("custom" if since or until else "")
        period = period or DEFAULT_PERIOD
        if period != "custom":
            if period not in PERIODS:
                raise UsageError(f"unknown period {period!r} ({', '.join(PERIODS)}, custom)")
            days = PERIODS[period]
            since = (today - timedelta(days=days - 1)).isoformat() if days else ""
            until = ""
        return cls(tz, period, since or None, until or None, _clean(params, OVERVIEW_FILTERS))

    def stats_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timezone": self.timezone, **filter_params(self.filters)}
        if self.since:
            out["since"] = self.since
        if self.until:
            out["until"] = self.until
        return out

    def cli(self, report: str = "daily") -> str:
        """The command that reports the same figures: `jobvault stats`, or `jobvault query`
        for the filters `stats` has no flag for."""
        if set(self.filters) <= {"source", "model", "project"}:
            words = ["jobvault", "stats", report]
            for key in ("since", "until"):
                value = getattr(self, key)
                if value:
                    words += [f"--{key}", value]
            for key, value in self.filters.items():
                words += [f"--{key}", value]
            words += ["--timezone", self.timezone, "--json"]
            return " ".join(_shell_word(w) for w in words)
        method, extra = {
            "daily": ("stats.usage", {"group_by": "day"}),
            "projects": ("stats.usage", {"group_by": "project"}),
            "tools": ("stats.tools", {}),
        }[report]
        params = json.dumps({**self.stats_params(), **extra}, separators=(", ", ": "))
        return f"jobvault query {method} {_shell_word(params)}"

    def query_string(self, **changes: str | None) -> str:
        values: dict[str, str | None] = {"period": self.period, "tz": self.timezone, **self.filters}
        if self.period == "custom":
            values.update(since=self.since, until=self.until)
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})


def _shell_word(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./:+@%=" for c in word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


class Headline(TypedDict):
    cost_usd: float
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    jobs: int
    total_tokens: int
    tool_calls: int
    tool_failures: int
    failure_rate: float
    cache_hit_rate: float | None


class Day(TypedDict):
    """One row of the overview's table by day: usage, sessions and tool failures."""

    period: str
    cost_usd: float
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    cache_hit_rate: float | None
    sessions: int
    tool_calls: int
    tool_failures: int
    top_model: str | None


class Overview(TypedDict):
    query: OverviewQuery
    headline: Headline
    days: list[Day]
    daily: list[dict[str, Any]]
    top_sessions: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    by_model: list[dict[str, Any]]
    by_project: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    blocks: list[dict[str, Any]]
    active_block: dict[str, Any] | None
    rate_limits: samples.History
    unpriced_models: list[str]
    charts: list[dict[str, Any]]


Read = Callable[[sqlite3.Connection], Any]


def overview_reads(query: OverviewQuery) -> dict[str, Read]:
    """The overview's independent reads: the live server runs them side by side on its reader
    threads (SQLite lets go of the GIL while it works); `overview` runs them in turn."""
    params = query.stats_params()
    tz = stats.zone(query.timezone)
    # The UTC bounds, resolved as `stats.usage` resolves them from the same text.
    since = stats.parse_local_time(query.since, tz) if query.since else None
    until = stats.parse_local_time(query.until, tz) if query.until else None
    filters = filter_params(query.filters)
    blocks = {k: v for k, v in params.items() if k in ("timezone", "since", "until")}
    blocks["source"] = query.filters.get("source", "claude")
    zone_name = query.timezone
    return {
        "daily": lambda c: methods.stats_usage(c, {**params, "group_by": "day", "top": 10}),
        "by_model": lambda c: methods.stats_usage(c, {**params, "group_by": "model"}),
        "by_project": lambda c: methods.stats_usage(c, {**params, "group_by": "project"}),
        "tools": lambda c: methods.stats_tools(c, {**params, "limit": 40}),
        "blocks": lambda c: methods.stats_blocks(c, blocks),
        "sessions": lambda c: stats.sessions(
            c, "day", timezone=zone_name, since=since, until=until, filters=filters
        ),
        "failures": lambda c: stats.tool_periods(
            c, "day", timezone=zone_name, since=since, until=until, filters=filters
        ),
        "rate_limits": lambda c: samples.history(c, since, until),
    }


def overview(conn: sqlite3.Connection, query: OverviewQuery) -> Overview:
    """Everything the overview shows (see the module docstring for where each comes from)."""
    return assemble(query, {key: read(conn) for key, read in overview_reads(query).items()})


def assemble(query: OverviewQuery, parts: dict[str, Any]) -> Overview:
    """The overview from the answers of `overview_reads`."""
    daily, by_model, by_project = parts["daily"], parts["by_model"], parts["by_project"]
    tools, blocks, sessions, failures = (parts["tools"], parts["blocks"], parts["sessions"],
                                         parts["failures"])  # fmt: skip
    history = parts["rate_limits"]
    totals = daily["totals"]
    unpriced = sorted(
        r["model"] for r in by_model["rows"] if r["total_tokens"] and _unpriced(r["model"])
    )
    for row in by_model["rows"]:
        row["unpriced"] = bool(row["total_tokens"]) and _unpriced(row["model"])
    headline: Headline = {
        "cost_usd": totals["cost_usd"],
        "input_tokens": totals["input_tokens"],
        "output_tokens": totals["output_tokens"],
        "cache_creation_tokens": totals["cache_creation_tokens"],
        "cache_read_tokens": totals["cache_read_tokens"],
        "jobs": sum(r["jobs"] for r in by_project["rows"]),
        "total_tokens": totals["total_tokens"],
        "tool_calls": tools["totals"]["calls"],
        "tool_failures": tools["totals"]["failures"],
        "failure_rate": tools["totals"]["failure_rate"],
        "cache_hit_rate": cache_hit_rate(totals),
    }
    real_blocks = [b for b in blocks["blocks"] if not b["is_gap"]]
    active = next((b for b in real_blocks if b["is_active"]), None)
    result: Overview = {
        "query": query,
        "headline": headline,
        "days": _days(daily["rows"], sessions, failures),
        "daily": daily["rows"],
        "top_sessions": daily.get("top_sessions", []),
        "sessions": sessions,
        "by_model": by_model["rows"],
        "by_project": by_project["rows"],
        "tools": tools["rows"],
        "failures": failures,
        "blocks": real_blocks[-12:][::-1],
        "active_block": active,
        "rate_limits": history,
        "unpriced_models": unpriced,
        "charts": [],
    }
    result["charts"] = charts.overview_charts(result)
    return result


def _days(
    usage: list[dict[str, Any]], sessions: list[dict[str, Any]], failures: list[dict[str, Any]]
) -> list[Day]:
    """The three per-day series side by side, newest day first."""
    by_session = {s["period"]: s["sessions"] for s in sessions}
    by_failure = {f["period"]: f for f in failures}
    by_usage = {u["period"]: u for u in usage}
    out: list[Day] = []
    for period in sorted({*by_session, *by_failure, *by_usage}, reverse=True):
        u = by_usage.get(period)
        f = by_failure.get(period, {"calls": 0, "failures": 0})
        out.append(
            {
                "period": period,
                "cost_usd": u["cost_usd"] if u else 0.0,
                **{k: u[k] if u else 0 for k in charts.TOKEN_KINDS},  # type: ignore[typeddict-item]
                "cache_hit_rate": cache_hit_rate(u) if u else None,
                "sessions": by_session.get(period, 0),
                "tool_calls": f["calls"],
                "tool_failures": f["failures"],
                "top_model": u["models"][0]["model"] if u and u["models"] else None,
            }
        )
    return out


def _unpriced(model: str | None) -> bool:
    return bool(model) and model != "<synthetic>" and pricing.lookup(model) is None


# -- jobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobsQuery:
    """The jobs page: a text query (search) or none (a list), the jobs.list filters, a page."""

    text: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    order: str = "-started_at"
    cursor: str | None = None
    offset: int = 0
    # The cursors of the pages before this one, so "previous" needs no backward cursor.
    trail: tuple[str, ...] = ()

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> JobsQuery:
        order = params.get("order", "").strip() or "-started_at"
        if order not in queries.ORDERS:
            raise UsageError(f"unknown order {order!r} (one of {', '.join(queries.ORDERS)})")
        try:
            offset = max(0, int(params.get("offset", "0") or 0))
        except ValueError:
            raise UsageError("offset must be a whole number") from None
        raw = params.get("trail", "").strip()
        trail = tuple(raw.split(".")) if raw else ()
        return cls(
            params.get("q", "").strip(),
            _clean(params, JOB_FILTERS),
            order,
            params.get("cursor", "").strip() or None,
            offset,
            trail[-50:],
        )

    def method_params(self) -> dict[str, Any]:
        return filter_params(self.filters)

    def query_string(self, **changes: Any) -> str:
        values: dict[str, Any] = {"q": self.text, **self.filters, "order": self.order}
        values.update(changes)
        if values.get("order") == "-started_at":
            values.pop("order")
        return urlencode({k: v for k, v in values.items() if v not in (None, "", 0)})


class JobRow(TypedDict):
    job: dict[str, Any]
    snippet: str | None


class JobsPage(TypedDict):
    query: JobsQuery
    mode: Literal["list", "search"]
    rows: list[JobRow]
    next_query: str | None
    prev_query: str | None
    fts_query: str | None


def jobs(conn: sqlite3.Connection, query: JobsQuery) -> JobsPage:
    """One page of jobs: `search` when there is text, else `jobs.list` in the chosen order."""
    params = query.method_params()
    if query.text:
        found = methods.search_jobs(
            conn, {**params, "query": query.text, "limit": PAGE_SIZE, "offset": query.offset}
        )
        rows: list[JobRow] = [{"job": r["job"], "snippet": r["snippet"]} for r in found["results"]]
        nxt = found["next_offset"]
        prev = max(0, query.offset - PAGE_SIZE) if query.offset else None
        return {
            "query": query,
            "mode": "search",
            "rows": rows,
            "next_query": query.query_string(offset=nxt) if nxt else None,
            "prev_query": query.query_string(offset=prev) if prev is not None else None,
            "fts_query": found["fts_query"],
        }
    page = methods.jobs_list(
        conn, {**params, "order": query.order, "limit": PAGE_SIZE, "cursor": query.cursor}
    )
    next_query = prev_query = None
    if page["next_cursor"]:
        trail = ".".join([*query.trail, query.cursor or FIRST_PAGE])
        next_query = query.query_string(cursor=page["next_cursor"], trail=trail)
    if query.cursor:
        back = query.trail[-1] if query.trail else FIRST_PAGE
        prev_query = query.query_string(
            cursor=None if back == FIRST_PAGE else back, trail=".".join(query.trail[:-1])
        )
    return {
        "query": query,
        "mode": "list",
        "rows": [{"job": job, "snippet": None} for job in page["jobs"]],
        "next_query": next_query,
        "prev_query": prev_query,
        "fts_query": None,
    }


# -- one job ------------------------------------------------------------------------------------


class ReplayPage(TypedDict):
    job_id: str
    events: list[dict[str, Any]]
    offset: int
    total: int
    next_offset: int | None


class JobPage(TypedDict):
    job: dict[str, Any]
    models: list[dict[str, Any]]
    cost_by_kind: dict[str, float]
    replay: ReplayPage
    has_main_file: bool
    files_deleted: bool
    archived_files: list[dict[str, Any]]


def cost_by_kind(models: list[dict[str, Any]]) -> dict[str, float]:
    """Each model's exact cost split over the four token kinds by its list prices.

    An estimate of the split only (long-context tiers and 1-hour cache writes are priced per
    message, and only totals are kept); the parts always add up to the exact cost.
    """
    out = dict.fromkeys(charts.TOKEN_KINDS, 0.0)
    for row in models:
        price = pricing.lookup(row["model"])
        if price is None or not row["cost_usd"]:
            continue
        weights = {
            "input_tokens": row["input_tokens"] * price.input,
            "output_tokens": row["output_tokens"] * price.output,
            "cache_creation_tokens": row["cache_creation_tokens"] * price.cache_write,
            "cache_read_tokens": row["cache_read_tokens"] * price.cache_read,
        }
        total = sum(weights.values())
        for key, weight in weights.items():
            if total:
                out[key] += row["cost_usd"] * weight / total
    return {k: round(v, 6) for k, v in out.items()}


def archive_signature(conn: sqlite3.Connection, ident: str) -> tuple[str, tuple[Any, ...]]:
    """The job id and what its replay depends on (its archived files and how far each is read),
    so a replay can be cached until a line is appended."""
    job_id, files = queries.job_files(conn, ident)
    return job_id, tuple((f.id, f.offset, f.state) for f in files)


class ReplayCache:
    """The last few sessions' replayed events (a 10,000-message session takes ~60 ms to replay;
    its pages and live updates then cost nothing until the archive grows)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: dict[tuple[str, tuple[Any, ...]], list[dict[str, Any]]] = {}

    def events(self, conn: sqlite3.Connection, ident: str) -> tuple[str, list[dict[str, Any]]]:
        job_id, signature = archive_signature(conn, ident)
        key = (job_id, signature)
        found = self._items.pop(key, None)
        if found is None:
            found = replay.events(conn, job_id)["events"]
            for old in [k for k in self._items if k[0] == job_id]:
                del self._items[old]
        self._items[key] = found
        while len(self._items) > self.size:
            del self._items[next(iter(self._items))]
        return job_id, found


def replay_page(
    conn: sqlite3.Connection,
    ident: str,
    offset: int = 0,
    limit: int = REPLAY_PAGE,
    cache: ReplayCache | None = None,
) -> ReplayPage:
    """Events [offset, offset + limit) of the session's replay, from the archive alone."""
    if cache is not None:
        job_id, events = cache.events(conn, ident)
    else:
        result = replay.events(conn, ident)
        job_id, events = result["job_id"], result["events"]
    offset = max(0, offset)
    end = len(events) if limit <= 0 else offset + limit
    return {
        "job_id": job_id,
        "events": events[offset:end],
        "offset": offset,
        "total": len(events),
        "next_offset": end if end < len(events) else None,
    }


def job_page(
    conn: sqlite3.Connection,
    ident: str,
    *,
    limit: int | None = None,
    cache: ReplayCache | None = None,
) -> JobPage:
    """The record (`jobvault show --json`) and the first page of its replay."""
    job = methods.jobs_get(conn, {"id": ident})
    _, files = queries.job_files(conn, job["id"])
    models = stats.job_models(conn, job["id"])
    for row in models:
        row["unpriced"] = bool(row["total_tokens"]) and _unpriced(row["model"])
    return {
        "job": job,
        "models": models,
        "cost_by_kind": cost_by_kind(models),
        "replay": replay_page(conn, job["id"], 0, REPLAY_PAGE if limit is None else limit, cache),
        "has_main_file": any(f.role == "main" for f in files),
        "files_deleted": any(f.state == "deleted" for f in files),
        "archived_files": [
            {
                "path": f.path,
                "role": f.role,
                "agent_id": f.agent_id,
                "bytes": f.offset,
                "state": f.state,
            }
            for f in files
        ],
    }
