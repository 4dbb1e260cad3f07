"""The local side of a push: what changed since a change number, read-only, as rows to send.

Reads only (`mode=ro`, `query_only`), each batch in one short read transaction, so the one
writer never waits and WAL checkpoints keep up. `sync_changes` (migration `m007_sync`) names
the jobs written or deleted after a change number; a job's rows are read as its latest write
left them, filtered by `privacy`: its record, hourly usage, tool calls, subagents, files
modified, and the messages it counts with what each counts (a message is counted by the job
holding its best copy: the same condition as `Store.settle_usage`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from jobvault.errors import TeamError
from jobvault.store.db import open_reader
from jobvault.team import privacy

# The `jobs` columns sent, in the order of the team table's (machine_id and local_seq aside).
JOB_COLUMNS = (
    "job_id", "source", "session_id", "project", "cwd", "git_branch", "version", "model",
    "models", "status", "started_at", "ended_at", "duration_ms", "prompt", "summary", "title",
    "input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
    "reasoning_tokens", "cost_usd", "pricing_version", "tool_call_count", "failed_tool_calls",
    "primary_tool", "message_count", "user_message_count", "subagent_count", "context_window",
    "context_used_pct", "source_path", "record", "finalized_at", "updated_at",
)  # fmt: skip
_LOCAL_JOB_COLUMNS = ", ".join(("id", *JOB_COLUMNS[1:]))
_TIMES = frozenset({"started_at", "ended_at", "finalized_at", "updated_at"})
USAGE_COLUMNS = (
    "job_id", "hour", "model", "messages", "input_tokens", "output_tokens",
    "cache_creation_tokens", "cache_read_tokens", "reasoning_tokens", "cost_usd", "first_at",
    "last_at",
)  # fmt: skip
TOOL_COLUMNS = ("job_id", "seq", "tool_use_id", "name", "agent_id", "is_error", "called_at",
                "input_preview", "output_preview")  # fmt: skip
SUBAGENT_COLUMNS = (
    "job_id", "agent_id", "agent_type", "description", "layout", "started_at", "ended_at",
    "message_count", "tool_call_count", "input_tokens", "output_tokens",
    "cache_creation_tokens", "cache_read_tokens", "cost_usd",
)  # fmt: skip
FILE_COLUMNS = ("job_id", "tool", "path", "files", "count")
KEY_COLUMNS = (
    "job_id", "source", "key", "sidechain", "total", "hour", "model", "input_tokens",
    "output_tokens", "cache_creation_tokens", "cache_read_tokens", "cost_usd",
)  # fmt: skip
CHUNK_COLUMNS = ("file_id", "offset", "length", "line_count", "codec", "data")
ARCHIVE_FILE_COLUMNS = ("file_id", "source", "job_key", "role", "agent_id", "rel_path", "path",
                        "generation", "state", "size")  # fmt: skip
SLICE = 400  # ids per IN (...) list, under SQLite's 999 variables of old versions


def moment(text: Any) -> datetime | None:
    """An ISO time as an aware datetime (UTC when it names no offset); None when unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@lru_cache(maxsize=65536)
def hour_of(text: str) -> datetime | None:
    """The UTC hour "YYYY-MM-DDTHH" of a usage row (None: unknown or unreadable)."""
    try:
        return datetime.strptime(text[:13], "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError:
        return None


def key_digest(key: str) -> bytes:
    """The 16-byte digest a message key is sent as (ids need no more to stay distinct)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(slots=True)
class JobChange:
    """One job's latest state: its rows as sent, or `job is None` when it was deleted."""

    seq: int
    job_id: str
    job: tuple[Any, ...] | None = None
    source: str | None = None
    usage: list[tuple[Any, ...]] = field(default_factory=list)
    tool_calls: list[tuple[Any, ...]] = field(default_factory=list)
    subagents: list[tuple[Any, ...]] = field(default_factory=list)
    files: list[tuple[Any, ...]] = field(default_factory=list)
    keys: list[tuple[Any, ...]] = field(default_factory=list)

    def digest(self) -> bytes:
        """A digest of everything sent for the job but the times of its local writes: equal
        digests, equal remote rows (a job rewritten unchanged need not be sent again)."""
        h = hashlib.blake2b(digest_size=16)
        if self.job is not None:
            times = {JOB_COLUMNS.index(c) for c in ("finalized_at", "updated_at")}
            h.update(repr([v for i, v in enumerate(self.job) if i not in times]).encode())
        for part in (self.usage, self.tool_calls, self.subagents, self.files, self.keys):
            h.update(repr(part).encode())
        return h.digest()

    @property
    def rows(self) -> int:
        return 1 + len(self.usage) + len(self.tool_calls) + len(self.subagents) + len(
            self.files
        ) + len(self.keys)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChunkBatch:
    files: list[tuple[Any, ...]]
    chunks: list[tuple[Any, ...]]
    last_id: int

    @property
    def bytes(self) -> int:
        return sum(len(c[5]) for c in self.chunks)


class Vault:
    """A read-only view of a local database for pushing it."""

    def __init__(self, db: Path) -> None:
        self.path = db
        self.conn = open_reader(db)
        self.conn.row_factory = None
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master")}
        if "sync_changes" not in tables:
            self.conn.close()
            raise TeamError(
                f"the database {db} predates team sync: start `jobvault run` (or run any "
                "import or rebuild) once with this version so it is upgraded"
            )
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'machine_id'").fetchone()
        if row is None:
            self.conn.close()
            raise TeamError(f"the database {db} has no machine id")
        self.machine_id: str = row[0]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def max_seq(self) -> int:
        row = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM sync_changes").fetchone()
        return int(row[0])

    def pending(self, after: int) -> int:
        """Jobs written or deleted after change `after`."""
        row = self.conn.execute("SELECT COUNT(*) FROM sync_changes WHERE seq > ?", (after,))
        return int(row.fetchone()[0])

    def pending_chunks(self, after: int) -> int:
        return int(
            self.conn.execute("SELECT COUNT(*) FROM chunks WHERE id > ?", (after,)).fetchone()[0]
        )

    def changes(
        self, after: int, include: Collection[str], max_rows: int, max_jobs: int = 500
    ) -> list[JobChange]:
        """The next jobs changed after `after`, in change order, about `max_rows` rows at most
        (always at least one job), read in one transaction."""
        self.conn.execute("BEGIN")
        try:
            listed = self.conn.execute(
                "SELECT seq, job_id FROM sync_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, max_jobs),
            ).fetchall()
            changes = [JobChange(seq, job_id) for seq, job_id in listed]
            by_id = {c.job_id: c for c in changes}
            for part in _parts(list(by_id)):
                self._read_jobs(part, by_id, include)
        finally:
            self.conn.execute("COMMIT")
        out: list[JobChange] = []
        rows = 0
        for change in changes:
            if out and rows + change.rows > max_rows:
                break
            out.append(change)
            rows += change.rows
        return out

    def _read_jobs(
        self, ids: list[str], by_id: dict[str, JobChange], include: Collection[str]
    ) -> None:
        marks = ",".join("?" * len(ids))
        conn = self.conn
        sessions: dict[str, str] = {}
        for row in conn.execute(
            f"SELECT {_LOCAL_JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", ids
        ):
            change = by_id[row[0]]
            change.job = _job_row(row, include)
            change.source = row[1]
            sessions[row[2]] = row[0]
        for row in conn.execute(
            f"SELECT {', '.join(USAGE_COLUMNS)} FROM job_usage WHERE job_id IN ({marks})", ids
        ):
            by_id[row[0]].usage.append((row[0], hour_of(row[1]), *row[2:]))
        previews = privacy.TOOL_PREVIEWS in include
        for row in conn.execute(
            "SELECT job_id, seq, tool_use_id, name, agent_id, is_error, timestamp, "
            f"input_preview, output_preview FROM tool_calls WHERE job_id IN ({marks})",
            ids,
        ):
            by_id[row[0]].tool_calls.append((
                row[0], row[1], row[2], row[3], row[4], bool(row[5]), moment(row[6]),
                row[7] if previews else None, row[8] if previews else None,
            ))  # fmt: skip
        described = privacy.SUBAGENT_DESCRIPTION in include
        for row in conn.execute(
            f"SELECT {', '.join(SUBAGENT_COLUMNS)} FROM subagents WHERE job_id IN ({marks})",
            ids,
        ):
            by_id[row[0]].subagents.append((
                *row[:3], row[3] if described else None, row[4], moment(row[5]),
                moment(row[6]), *row[7:],
            ))  # fmt: skip
        if privacy.FILE_PATHS in include:
            files_sql = (
                f"SELECT job_id, tool, path, 1, count FROM files_modified WHERE job_id IN ({marks})"
            )
        else:  # only how many files each tool touched
            files_sql = (
                "SELECT job_id, tool, NULL, COUNT(*), SUM(count) FROM files_modified "
                f"WHERE job_id IN ({marks}) GROUP BY job_id, tool"
            )
        for row in conn.execute(files_sql, ids):
            by_id[row[0]].files.append(tuple(row))
        self._read_keys(sessions, by_id)

    def _read_keys(self, sessions: dict[str, str], by_id: dict[str, JobChange]) -> None:
        """The messages each job counts: its copies no other job's copy beats."""
        names = list(sessions)
        for part in _parts(names):
            marks = ",".join("?" * len(part))
            for row in self.conn.execute(
                f"""
                SELECT u.session_id, u.key, u.sidechain, u.total, u.at, u.model,
                       u.input_tokens, u.output_tokens, u.cache_creation_tokens,
                       u.cache_read_tokens, u.cost_usd
                FROM usage_keys u WHERE u.session_id IN ({marks}) AND NOT EXISTS (
                    SELECT 1 FROM usage_keys o
                    WHERE o.key_hash = u.key_hash AND o.key = u.key
                      AND o.session_id != u.session_id
                      AND (o.sidechain, -o.total, o.path, o.offset)
                        < (u.sidechain, -u.total, u.path, u.offset))
                """,
                part,
            ):
                job_id = sessions[row[0]]
                at = row[4] or ""
                by_id[job_id].keys.append((
                    job_id, by_id[job_id].source, key_digest(row[1]), bool(row[2]), row[3],
                    hour_of(at) if len(at) >= 13 else None, row[5] or "unknown", *row[6:],
                ))  # fmt: skip

    def chunks(self, after: int, max_bytes: int) -> ChunkBatch:
        """The archived chunks after chunk id `after` (about `max_bytes` of them, at least
        one) and their files' rows."""
        self.conn.execute("BEGIN")
        try:
            rows: list[tuple[Any, ...]] = []
            size = 0
            last = after
            for row in self.conn.execute(
                "SELECT id, file_id, offset, length, line_count, codec, data FROM chunks "
                "WHERE id > ? ORDER BY id LIMIT 10000",
                (after,),
            ):
                if rows and size + len(row[6]) > max_bytes:
                    break
                rows.append(tuple(row[1:]))
                size += len(row[6])
                last = row[0]
            ids = sorted({r[0] for r in rows})
            files: list[tuple[Any, ...]] = []
            for part in _parts(ids):
                marks = ",".join("?" * len(part))
                files.extend(
                    tuple(r)
                    for r in self.conn.execute(
                        "SELECT id, source, job_key, role, agent_id, rel_path, path, generation,"
                        f" state, size FROM files WHERE id IN ({marks})",
                        part,
                    )
                )
        finally:
            self.conn.execute("COMMIT")
        return ChunkBatch(files, rows, last)


def _parts(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), SLICE):
        yield items[i : i + SLICE]


def _job_row(row: sqlite3.Row | tuple[Any, ...], include: Collection[str]) -> tuple[Any, ...]:
    values: list[Any] = []
    for name, value in zip(JOB_COLUMNS, row, strict=True):
        if name == "record":
            rec = orjson.loads(value)
            rec["status"] = row[9]  # the column is the truth (it is reset on appends)
            value = orjson.dumps(privacy.record(rec, include), option=orjson.OPT_SORT_KEYS).decode()
            if "\\u0000" in value:  # jsonb refuses NUL (SQLite's text holds it)
                value = value.replace("\\u0000", "\\ufffd")
        elif name == "models":
            try:
                parsed = orjson.loads(value or "[]")
            except orjson.JSONDecodeError:
                parsed = []
            value = [str(m) for m in parsed] if isinstance(parsed, list) else []
        elif name in _TIMES:
            value = moment(value)
        elif name != "job_id" and not privacy.allowed(name, include):
            value = None
        values.append(value)
    return tuple(values)
