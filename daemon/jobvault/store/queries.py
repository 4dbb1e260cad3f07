"""Read-only queries shared by the CLI (and, later, the socket server).

Every function takes a connection opened with `db.open_reader` and keeps its transaction
short: readers must never hold back WAL checkpoints.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from jobvault.errors import NotFoundError, UsageError
from jobvault.store.writer import FILE_COLUMNS, FileRow, _file_row, iter_chunks

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, now: datetime | None = None) -> str:
    """Turn an ISO date/time or a relative age ("7d", "12h") into a UTC ISO timestamp."""
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"cannot read the time {value!r}: use an ISO date such as 2025-09-30, "
                "a date and time such as 2025-09-30T14:00, or an age such as 7d or 12h"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _record(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(row[0])
    record["status"] = row[1]
    return record


def list_jobs(
    conn: sqlite3.Connection,
    since: str | None = None,
    until: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Return job records, newest first."""
    where, params = [], []
    if since:
        where.append("started_at >= ?")
        params.append(since)
    if until:
        where.append("started_at < ?")
        params.append(until)
    sql = "SELECT record, status FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY started_at DESC, id DESC"
    if limit > 0:
        sql += f" LIMIT {int(limit)}"
    return [_record(r) for r in conn.execute(sql, params)]


def resolve_job_id(conn: sqlite3.Connection, ident: str) -> str:
    """Find a job by its id, its session id, or a unique prefix of either."""
    row = conn.execute(
        "SELECT id FROM jobs WHERE id = ? OR session_id = ?", (ident, ident)
    ).fetchone()
    if row:
        return str(row[0])
    escaped = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute(
        "SELECT id FROM jobs WHERE id LIKE ? ESCAPE '\\' OR session_id LIKE ? ESCAPE '\\' LIMIT 6",
        (escaped + "%", escaped + "%"),
    ).fetchall()
    if not rows:
        raise NotFoundError(f"no job matches {ident!r} (see `jobvault jobs`)")
    if len(rows) > 1:
        names = ", ".join(r[0] for r in rows[:5])
        raise NotFoundError(f"{ident!r} matches several jobs ({names}…): give more characters")
    return str(rows[0][0])


def get_job(conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
    """Return one job record with its tool calls, subagents and modified files."""
    job_id = resolve_job_id(conn, ident)
    row = conn.execute("SELECT record, status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    job = _record(row)
    cols = ("seq", "tool_use_id", "name", "agent_id", "is_error", "timestamp", "input_preview",
            "output_preview")  # fmt: skip
    job["tool_calls"] = [
        {**dict(zip(cols, r, strict=True)), "is_error": bool(r[4])}
        for r in conn.execute(
            f"SELECT {', '.join(cols)} FROM tool_calls WHERE job_id = ? ORDER BY seq", (job_id,)
        )
    ]
    sub_cols = ("agent_id", "agent_type", "description", "layout", "started_at", "ended_at",
                "message_count", "tool_call_count", "input_tokens", "output_tokens",
                "cache_creation_tokens", "cache_read_tokens", "cost_usd")  # fmt: skip
    job["subagents"] = [
        dict(zip(sub_cols, r, strict=True))
        for r in conn.execute(
            f"SELECT {', '.join(sub_cols)} FROM subagents WHERE job_id = ? ORDER BY agent_id",
            (job_id,),
        )
    ]
    job["files"] = [
        {"path": r[0], "tool": r[1], "count": r[2]}
        for r in conn.execute(
            "SELECT path, tool, count FROM files_modified WHERE job_id = ? ORDER BY path, tool",
            (job_id,),
        )
    ]
    return job


def job_files(conn: sqlite3.Connection, ident: str) -> tuple[str, list[FileRow]]:
    """Return the job id and the current generation of each of its archived files."""
    job_id = resolve_job_id(conn, ident)
    source, session = conn.execute(
        "SELECT source, session_id FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    rows = conn.execute(
        f"SELECT {FILE_COLUMNS} FROM files WHERE job_key = ? AND source = ? "
        "AND state IN ('active', 'deleted') ORDER BY role, id",
        (session, source),
    )
    return job_id, [_file_row(r) for r in rows]


def archived_bytes(conn: sqlite3.Connection, file_id: int) -> Iterator[bytes]:
    """Yield a file's archived bytes in order (restores it byte for byte)."""
    expected = 0
    for offset, data in iter_chunks(conn, file_id):
        if offset != expected:
            raise NotFoundError(f"the archive of file {file_id} has a gap at byte {expected}")
        expected += len(data)
        yield data


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Return headline counts for summaries."""
    one = conn.execute(
        "SELECT (SELECT COUNT(*) FROM files), (SELECT COALESCE(SUM(length), 0) FROM chunks), "
        "(SELECT COALESCE(SUM(line_count), 0) FROM files), (SELECT COUNT(*) FROM bad_lines), "
        "(SELECT COUNT(*) FROM jobs)"
    ).fetchone()
    return dict(zip(("files", "bytes", "lines", "bad_lines", "jobs"), one, strict=True))


def bad_lines(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT f.path, b.offset, b.length, b.reason FROM bad_lines b "
        "JOIN files f ON f.id = b.file_id ORDER BY b.id DESC LIMIT ?",
        (limit,),
    )
    return [dict(zip(("file", "offset", "length", "reason"), r, strict=True)) for r in rows]
