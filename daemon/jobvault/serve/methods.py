"""The query methods, shared by the socket server and the CLI's offline fallback.

Each read method is a plain function of (read-only connection, params): the server runs it on
a reader thread with a time limit, the CLI runs it directly on the database when no daemon is
running. Parameters are validated here; errors become JSON-RPC errors with a stable kind.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime

from jobvault.errors import NotFoundError, UsageError
from jobvault.serve.protocol import (
    INTERNAL_ERROR,
    NOT_FOUND,
    REFUSED,
    RESULT_TOO_LARGE,
    SQL_ERROR,
    TIMEOUT,
    RpcError,
    invalid_params,
)
from jobvault.store import queries
from jobvault.store.sql import ResultTooLarge, SqlRefused

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Handler: TypeAlias = Callable[[sqlite3.Connection, dict[str, Any] | list[Any]], Any]

# The report and search modules are imported by the methods that use them: the CLI's
# `jobs` should not pay for loading them (command start-up is most of its time).

MAX_PAGE = 1000


class Limits:
    """Bounds on what one request may cost (a plain class: dataclasses would cost every CLI
    command's start the import of `inspect`, NamedTuple that of `typing`)."""

    __slots__ = ("request_timeout", "sql_max_bytes", "sql_max_rows", "sql_time_limit")

    def __init__(
        self, request_timeout: float = 10.0, sql_time_limit: float = 5.0,
        sql_max_rows: int = 10_000, sql_max_bytes: int = 8 * 1024 * 1024,
    ) -> None:  # fmt: skip
        self.request_timeout = request_timeout
        self.sql_time_limit = sql_time_limit
        self.sql_max_rows = sql_max_rows
        self.sql_max_bytes = sql_max_bytes


def _params(params: dict[str, Any] | list[Any]) -> dict[str, Any]:
    if isinstance(params, list):
        if params:
            raise invalid_params("this method takes named parameters (an object)")
        return {}
    return params


def _opt(
    params: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool:
        raise invalid_params(f"{name} must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise invalid_params(f"{name} must be {_kind_name(kind)}")
    return value


def _req(params: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if params.get(name) is None:
        raise invalid_params(f"{name} is required")
    return _opt(params, name, kind)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "an array",
             dict: "an object", bool: "true or false"}  # fmt: skip
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_unknown(params: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise invalid_params(
            f"unknown parameter(s): {', '.join(unknown)} (known: {', '.join(known)})"
        )


JOB_FILTERS = tuple(k for k in queries.FILTERS if k not in ("since", "until"))


def _job_filters(params: dict[str, Any]) -> dict[str, Any]:
    """The `jobs.list` filters other than the time range, validated."""
    filters: dict[str, Any] = {}
    for key in JOB_FILTERS:
        kind: type | tuple[type, ...] = str
        if key.endswith("_cost"):
            kind = (int, float)
        elif key.endswith("_ms"):
            kind = int
        filters[key] = _opt(params, key, kind)
    return filters


def jobs_list_args(raw: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """The validated parameters of `jobs.list` (shared with the team reports)."""
    params = _params(raw)
    _check_unknown(params, (*queries.FILTERS, "order", "limit", "cursor"))
    filters = _job_filters(params)
    for key in ("since", "until"):
        value = _opt(params, key, str)
        filters[key] = queries.parse_time(value) if value else None
    limit = _opt(params, "limit", int, 50)
    if not 1 <= limit <= MAX_PAGE:
        raise invalid_params(f"limit must be between 1 and {MAX_PAGE}")
    order = _opt(params, "order", str, "-started_at")
    if order not in queries.ORDERS:
        raise invalid_params(f"unknown order {order!r} (one of {', '.join(queries.ORDERS)})")
    return {"filters": filters, "order": order, "limit": limit,
            "cursor": _opt(params, "cursor", str)}  # fmt: skip


def jobs_list(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    return queries.page_jobs(conn, **jobs_list_args(raw))


def jobs_get(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    params = _params(raw)
    _check_unknown(params, ("id",))
    return queries.get_job(conn, _req(params, "id", str))


def jobs_transcript(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    params = _params(raw)
    _check_unknown(params, ("id", "cursor", "limit"))
    limit = _opt(params, "limit", int, 500)
    if not 1 <= limit <= queries.TRANSCRIPT_MAX_LINES:
        raise invalid_params(f"limit must be between 1 and {queries.TRANSCRIPT_MAX_LINES}")
    return queries.transcript(conn, _req(params, "id", str), _opt(params, "cursor", str), limit)


def _local_range(params: dict[str, Any], timezone: str) -> tuple[str | None, str | None]:
    from jobvault.store import stats

    tz = stats.zone(timezone)
    bounds = []
    for key in ("since", "until"):
        value = _opt(params, key, str)
        bounds.append(stats.parse_local_time(value, tz) if value else None)
    return bounds[0], bounds[1]


def _bounded(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value: int = _opt(params, name, int, default)
    if not low <= value <= high:
        raise invalid_params(f"{name} must be between {low} and {high}")
    return value


def usage_args(raw: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """The validated parameters of `stats.usage` (shared with the team reports)."""
    from jobvault.store import stats

    params = _params(raw)
    _check_unknown(params, ("group_by", "timezone", "since", "until", "top", *JOB_FILTERS))
    group_by = _opt(params, "group_by", str, "day")
    if group_by not in stats.GROUP_BY:
        raise invalid_params(f"group_by must be one of {', '.join(stats.GROUP_BY)}")
    timezone = _opt(params, "timezone", str, "UTC")
    since, until = _local_range(params, timezone)
    return {
        "group_by": group_by,
        "timezone": timezone,
        "since": since,
        "until": until,
        "filters": _job_filters(params),
        "top": _bounded(params, "top", 0, 0, 100),
    }


def stats_usage(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    from jobvault.store import stats

    return stats.usage(conn, **usage_args(raw))


def tools_args(raw: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """The validated parameters of `stats.tools`."""
    params = _params(raw)
    _check_unknown(params, ("timezone", "since", "until", "limit", *JOB_FILTERS))
    since, until = _local_range(params, _opt(params, "timezone", str, "UTC"))
    return {
        "since": since,
        "until": until,
        "filters": _job_filters(params),
        "limit": _bounded(params, "limit", 100, 1, MAX_PAGE),
    }


def stats_tools(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    from jobvault.store import stats

    return stats.tools(conn, **tools_args(raw))


def blocks_args(raw: dict[str, Any] | list[Any]) -> dict[str, Any]:
    """The validated parameters of `stats.blocks`."""
    params = _params(raw)
    _check_unknown(params, ("timezone", "since", "until", "source", "hours", "now", "active"))
    since, until = _local_range(params, _opt(params, "timezone", str, "UTC"))
    now_text = _opt(params, "now", str)
    now = None
    if now_text:
        now = datetime.fromisoformat(queries.parse_time(now_text).replace("Z", "+00:00"))
    source = params.get("source", "claude")
    if source is not None and not isinstance(source, str):
        raise invalid_params("source must be a string or null (every source)")
    return {
        "since": since,
        "until": until,
        "source": source,
        "hours": _bounded(params, "hours", 5, 1, 24),
        "now": now,
        "active_only": _opt(params, "active", bool, False),
    }


def stats_blocks(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    from jobvault.store import stats

    return stats.blocks(conn, **blocks_args(raw))


def search_jobs(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
    from jobvault.store import search

    params = _params(raw)
    _check_unknown(params, ("query", *queries.FILTERS, "limit", "offset"))
    filters = _job_filters(params)
    for key in ("since", "until"):
        value = _opt(params, key, str)
        filters[key] = queries.parse_time(value) if value else None
    return search.search(
        conn,
        _opt(params, "query", str, ""),
        filters,
        limit=_bounded(params, "limit", 20, 1, search.MAX_LIMIT),
        offset=_bounded(params, "offset", 0, 0, 1_000_000),
    )


def make_sql(limits: Limits) -> Callable[[sqlite3.Connection, dict[str, Any] | list[Any]], Any]:
    def sql(conn: sqlite3.Connection, raw: dict[str, Any] | list[Any]) -> Any:
        from jobvault.store import sql as user_sql

        params = _params(raw)
        _check_unknown(params, ("query", "params", "max_rows"))
        query = _req(params, "query", str)
        bind = _opt(params, "params", (list, dict))
        max_rows = _opt(params, "max_rows", int, limits.sql_max_rows)
        if not 1 <= max_rows <= limits.sql_max_rows:
            raise invalid_params(f"max_rows must be between 1 and {limits.sql_max_rows}")
        return user_sql.run_sql(
            conn,
            query,
            bind,
            max_rows=max_rows,
            max_bytes=limits.sql_max_bytes,
            time_limit=limits.sql_time_limit,
        )

    return sql


def read_methods(limits: Limits) -> dict[str, Handler]:
    """The methods that only read the database."""
    return {
        "jobs.list": jobs_list,
        "jobs.get": jobs_get,
        "jobs.transcript": jobs_transcript,
        "search": search_jobs,
        "stats.usage": stats_usage,
        "stats.tools": stats_tools,
        "stats.blocks": stats_blocks,
        "sql": make_sql(limits),
    }


def run_read(handler: Handler, conn: sqlite3.Connection, params: Any, timeout: float) -> Any:
    """Run a read method under a deadline (SQLite is interrupted once it passes)."""
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 20_000)
    try:
        return handler(conn, params)
    except RpcError:
        raise
    except SqlRefused as exc:
        raise RpcError(REFUSED, "sql_refused", str(exc)) from None
    except ResultTooLarge as exc:
        raise RpcError(RESULT_TOO_LARGE, "result_too_large", str(exc), rows_read=exc.rows,
                       max_bytes=exc.max_bytes) from None  # fmt: skip
    except NotFoundError as exc:
        raise RpcError(NOT_FOUND, "not_found", str(exc)) from None
    except UsageError as exc:
        raise invalid_params(str(exc)) from None
    except TimeoutError as exc:
        raise RpcError(TIMEOUT, "timeout", str(exc)) from None
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline:
            raise RpcError(
                TIMEOUT, "timeout", f"the request took longer than {timeout:g}s"
            ) from None
        raise RpcError(SQL_ERROR, "sql_error", str(exc)) from None
    except sqlite3.Error as exc:
        raise RpcError(SQL_ERROR, "sql_error", str(exc)) from None
    except Exception as exc:  # a bug: report it, keep serving
        raise RpcError(INTERNAL_ERROR, "internal", f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.set_progress_handler(None, 0)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
