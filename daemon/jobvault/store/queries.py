"""Read-only queries shared by the CLI (and, later, the socket server).

Every function takes a connection opened with `db.open_reader` and keeps its transaction
short: readers must never hold back WAL checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from jobvault import jsonio
from jobvault.errors import NotFoundError, UsageError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any

    from jobvault.store.archive import FileRow
# store.archive (orjson, a dataclass) is imported by the functions that read the
# archive: the reports and `jobs` never do, and their processes start faster without it.

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
    record: dict[str, Any] = jsonio.loads(row[0])
    record["status"] = row[1]
    return record


ORDERS: dict[str, tuple[str, str]] = {
    # name -> (sort expression, direction); NULLs sort as the empty string / zero.
    "-started_at": ("COALESCE(started_at, '')", "DESC"),
    "started_at": ("COALESCE(started_at, '')", "ASC"),
    "-ended_at": ("COALESCE(ended_at, '')", "DESC"),
    "ended_at": ("COALESCE(ended_at, '')", "ASC"),
    "-cost_usd": ("cost_usd", "DESC"),
    "cost_usd": ("cost_usd", "ASC"),
    "-duration_ms": ("COALESCE(duration_ms, 0)", "DESC"),
    "duration_ms": ("COALESCE(duration_ms, 0)", "ASC"),
}
FILTERS = ("since", "until", "source", "model", "status", "project", "cwd", "tool", "file",
           "file_prefix", "file_glob", "min_cost", "max_cost", "min_duration_ms",
           "max_duration_ms", "machine")  # fmt: skip


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def encode_cursor(value: Any, ident: str) -> str:
    """An opaque cursor: the last row's sort value and id."""
    import base64  # (only a listing with more to come needs it: not the reports)

    return base64.urlsafe_b64encode(jsonio.dumps([value, ident])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    """The (sort value, id) of a cursor made by `encode_cursor`, or a UsageError."""
    import base64

    try:
        value, ident = jsonio.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(ident, str):
            raise ValueError
        return value, ident
    except (ValueError, TypeError):
        raise UsageError(f"invalid cursor {cursor!r}: pass back next_cursor unchanged") from None


def list_jobs(
    conn: sqlite3.Connection,
    since: str | None = None,
    until: str | None = None,
    limit: int = 50,
    *,
    filters: dict[str, Any] | None = None,
    order: str = "-started_at",
    cursor: str | None = None,
) -> list[dict[str, Any]]:
    """Return job records, newest first (see `page_jobs` for pagination)."""
    page = page_jobs(
        conn, {**(filters or {}), "since": since, "until": until}, order, limit, cursor
    )
    return list(page["jobs"])


def page_jobs(
    conn: sqlite3.Connection,
    filters: dict[str, Any],
    order: str = "-started_at",
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Return one page of job records matching `filters`, and the cursor of the next page."""
    if order not in ORDERS:
        raise UsageError(f"unknown order {order!r} (one of {', '.join(ORDERS)})")
    expr, direction = ORDERS[order]
    where, params = job_filters(filters)
    if cursor:
        value, ident = decode_cursor(cursor)
        op = "<" if direction == "DESC" else ">"
        # Spelled so that SQLite seeks the order's index to the cursor (a row-value
        # comparison on an expression index would scan from the first row instead).
        where.append(f"{expr} {op}= ? AND ({expr} {op} ? OR id {op} ?)")
        params += [value, value, ident]
    sql = f"SELECT record, status, {expr} AS sort_key, id FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY sort_key {direction}, id {direction}"
    if limit > 0:
        sql += f" LIMIT {int(limit) + 1}"
    rows, next_cursor = paged(
        conn.execute(sql, params).fetchall(), limit, lambda r: encode_cursor(r[2], r[3])
    )
    return {"jobs": [_record(r) for r in rows], "next_cursor": next_cursor}


def paged(
    rows: list[Any], limit: int, cursor_of: Callable[[Any], str]
) -> tuple[list[Any], str | None]:
    """A page of `rows` (fetched with LIMIT limit + 1) and the cursor of the next one."""
    more = limit > 0 and len(rows) > limit
    rows = rows[:limit] if limit > 0 else rows
    return rows, cursor_of(rows[-1]) if more and rows else None


def job_filters(filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """SQL conditions on the `jobs` table for the `jobs.list` filters (None = not given).

    Shared by `jobs.list`, `search` and the usage reports, so a filter means the same
    everywhere. Columns are qualified with `jobs.` so the conditions hold in joins.
    """
    where: list[str] = []
    params: list[Any] = []
    f = {k: v for k, v in filters.items() if v is not None}
    if "since" in f:
        where.append("jobs.started_at >= ?")
        params.append(f["since"])
    if "until" in f:
        where.append("jobs.started_at < ?")
        params.append(f["until"])
    for key in ("source", "status", "project"):
        if key in f:
            where.append(f"jobs.{key} = ?")
            params.append(f[key])
    if "machine" in f:
        where.append("jobs.machine_id = ?")
        params.append(f["machine"])
    if "model" in f:
        where.append(
            "(jobs.model = ? OR EXISTS (SELECT 1 FROM json_each(jobs.models) WHERE value = ?))"
        )
        params += [f["model"], f["model"]]
    if "cwd" in f:
        cwd = str(f["cwd"]).rstrip("/") or "/"
        where.append("(jobs.cwd = ? OR jobs.cwd LIKE ? ESCAPE '\\')")
        params += [cwd, _like_prefix(cwd.rstrip("/") + "/")]
    if "tool" in f:
        where.append("EXISTS (SELECT 1 FROM tool_calls t WHERE t.job_id = jobs.id AND t.name = ?)")
        params.append(f["tool"])
    file_match = file_condition(f)
    if file_match is not None:
        condition, values = file_match
        where.append(
            f"EXISTS (SELECT 1 FROM files_modified m WHERE m.job_id = jobs.id AND {condition})"
        )
        params += values
    if "min_cost" in f:
        where.append("jobs.cost_usd >= ?")
        params.append(float(f["min_cost"]))
    if "max_cost" in f:
        where.append("jobs.cost_usd <= ?")
        params.append(float(f["max_cost"]))
    if "min_duration_ms" in f:
        where.append("jobs.duration_ms >= ?")
        params.append(int(f["min_duration_ms"]))
    if "max_duration_ms" in f:
        where.append("jobs.duration_ms <= ?")
        params.append(int(f["max_duration_ms"]))
    return where, params


def file_condition(filters: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """A condition on `m.path` (files_modified) for `file`, `file_prefix` and `file_glob`.

    A prefix is a range on the indexed path column rather than LIKE, which SQLite will not
    run on the index for a case-sensitive match; a glob is SQLite's GLOB (case-sensitive,
    `*` also matches `/`).
    """
    conditions: list[str] = []
    params: list[Any] = []
    if filters.get("file") is not None:
        conditions.append("m.path = ?")
        params.append(filters["file"])
    prefix = filters.get("file_prefix")
    if prefix:
        conditions.append("m.path >= ? AND m.path < ?")
        params += [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
    if filters.get("file_glob") is not None:
        conditions.append("m.path GLOB ?")
        params.append(filters["file_glob"])
    if not conditions:
        return None
    return " AND ".join(conditions), params


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
    from jobvault.store.archive import FILE_COLUMNS, file_row

    job_id = resolve_job_id(conn, ident)
    source, session = conn.execute(
        "SELECT source, session_id FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    rows = conn.execute(
        f"SELECT {FILE_COLUMNS} FROM files WHERE job_key = ? AND source = ? "
        "AND state IN ('active', 'deleted') ORDER BY role, id",
        (session, source),
    )
    return job_id, [file_row(r) for r in rows]


def restored_name(row: FileRow, path: str) -> str:
    """The name a file's archived content is restored under (`path`, or its relative path):
    the archive keeps a compressed rollout's content, not its compressed bytes, so
    `x.jsonl.zst` is restored as `x.jsonl` (`zstd -3` compresses it again)."""
    return path.removesuffix(".zst") if row.codec == "zstd" else path


def archived_bytes(conn: sqlite3.Connection, file_id: int) -> Iterator[bytes]:
    """Yield a file's archived bytes in order (restores it byte for byte)."""
    from jobvault.store.archive import iter_chunks

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


TRANSCRIPT_MAX_LINES = 5000
TRANSCRIPT_MAX_BYTES = 8 * 1024 * 1024
TRANSCRIPT_LINE_LIMIT = 16 * 1024 * 1024


def transcript(
    conn: sqlite3.Connection, ident: str, cursor: str | None = None, limit: int = 500
) -> dict[str, Any]:
    """Return one page of a job's archived lines, main file first, each file in order.

    Works from the archive alone, so a session can be replayed after its files are gone.
    """
    from jobvault.store.archive import iter_archived_lines

    job_id, files = job_files(conn, ident)
    files = sorted(files, key=lambda f: (f.role != "main", f.id))
    start_file, start_offset = 0, 0
    if cursor:
        value, _ = decode_cursor(cursor)
        if not (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
        ):
            raise UsageError(f"invalid cursor {cursor!r}: pass back next_cursor unchanged")
        start_file, start_offset = value
    limit = max(1, min(limit, TRANSCRIPT_MAX_LINES))
    lines: list[dict[str, Any]] = []
    size = 0
    for index in range(start_file, len(files)):
        row = files[index]
        offset = start_offset if index == start_file else 0
        for line_offset, line in iter_archived_lines(
            _chunks_from(conn, row.id, offset), TRANSCRIPT_LINE_LIMIT
        ):
            if line_offset < offset:
                continue
            if len(lines) >= limit or size >= TRANSCRIPT_MAX_BYTES:
                return {
                    "job_id": job_id,
                    "lines": lines,
                    "next_cursor": encode_cursor([index, line_offset], job_id),
                }
            entry: dict[str, Any] = {"file": row.path, "role": row.role, "agent_id": row.agent_id,
                                     "offset": line_offset}  # fmt: skip
            if line is None:
                entry["omitted"] = "line longer than the transcript limit"
            elif line.strip():
                size += len(line)
                try:
                    entry["line"] = jsonio.loads(line)
                except ValueError as exc:
                    entry["raw"] = line.decode("utf-8", "replace")
                    entry["error"] = f"invalid JSON: {exc}"
            else:
                continue
            lines.append(entry)
    return {"job_id": job_id, "lines": lines, "next_cursor": None}


def _chunks_from(
    conn: sqlite3.Connection, file_id: int, offset: int
) -> Iterator[tuple[int, bytes]]:
    """The file's chunks from the one holding `offset` (one earlier, for a line split across)."""
    row = conn.execute(
        "SELECT offset FROM chunks WHERE file_id = ? AND offset <= ? ORDER BY offset DESC "
        "LIMIT 1 OFFSET 1",
        (file_id, offset),
    ).fetchone()
    from jobvault.store.archive import iter_chunks

    first = row[0] if row else 0
    for chunk_offset, data in iter_chunks(conn, file_id):
        if chunk_offset >= first:
            yield chunk_offset, data


def db_status(conn: sqlite3.Connection, path: str) -> dict[str, Any]:
    """Counts and sizes read from the database alone.

    The file and archive counts come from `status_counters`, which triggers keep exact
    (`m005_read_side`): one row, however large the vault; jobs are counted on an index (the
    active ones on the partial index `jobs_active`). A database not yet migrated is scanned.
    """
    try:
        row = conn.execute(
            "SELECT files_active, files_known, bytes_archived, lines_archived, bad_lines, "
            "lost_bytes, (SELECT COUNT(*) FROM jobs), "
            "(SELECT COUNT(*) FROM jobs WHERE status = 'active') FROM status_counters"
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        row = _scan_counts(conn)
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += os.stat(path + suffix).st_size
    keys = ("files_tracked", "files_known", "bytes_archived", "lines_archived", "bad_lines",
            "lost_bytes", "jobs", "sessions_active")  # fmt: skip
    return {**dict(zip(keys, row, strict=True)), "db_path": path, "db_size_bytes": size}


def _scan_counts(conn: sqlite3.Connection) -> tuple[int, ...]:
    # Bad lines are the rows of their table (as `import` counts them): a file's own counter
    # is not taken back when an unterminated tail it reported is continued by new bytes.
    files, active_files, lines, bad, lost = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(state = 'active'), 0), COALESCE(SUM(line_count), 0), "
        "(SELECT COUNT(*) FROM bad_lines), COALESCE(SUM(lost_bytes), 0) FROM files"
    ).fetchone()
    archived = conn.execute("SELECT COALESCE(SUM(length), 0) FROM chunks").fetchone()[0]
    jobs, active = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(status = 'active'), 0) FROM jobs"
    ).fetchone()
    return (active_files, files, archived, lines, bad, lost, jobs, active)
