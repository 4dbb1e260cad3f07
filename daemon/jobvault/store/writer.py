"""The single writer: every write is one `BEGIN IMMEDIATE` transaction on one connection.

A batch carries archived chunks, file offsets, bad lines and job records of many files and
many sessions; its offsets are committed in the same transaction as the bytes they cover, so
after a crash a file is re-read exactly from where its archived bytes end.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog
import zstandard

from jobvault.errors import StoreError
from jobvault.records import JobDetail, UsageCandidate, UsageRow
from jobvault.store.archive import FILE_COLUMNS, FileRow, file_row, iter_chunks
from jobvault.store.db import BUSY_TIMEOUT_MS
from jobvault.store.increments import Written, state_of, tool_rows, write_changes
from jobvault.store.keys import key_hash

SETTLE_SLICE = 2000  # message keys settled per query
SQL_INT = 2**63 - 1  # SQLite's integers are 64-bit
# What a record the database cannot take raises (a value out of range, a constraint); errors
# of the database itself (full, read-only, locked: OperationalError) are not among them.
log = structlog.get_logger(__name__)

_REFUSED = (
    sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
    sqlite3.InterfaceError, sqlite3.NotSupportedError, ValueError, OverflowError, TypeError,
)  # fmt: skip


def _scrubbed(text: Any) -> str:
    """Text SQLite can store: what UTF-8 cannot encode (a lone surrogate) becomes "?"."""
    return str(text).encode("utf-8", "replace").decode("utf-8")


def _ints(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Saturate integers to SQLite's range: a last guard, so a sum no check foresaw can never
    raise OverflowError out of the writer (each value from a line is checked already)."""
    for v in values:  # (a loop, not any() over a generator: a row at a time adds up)
        if v.__class__ is int and (v > SQL_INT or v < -SQL_INT):
            return tuple(
                max(-SQL_INT, min(SQL_INT, v)) if v.__class__ is int else v for v in values
            )
    return values


# A copy `o` of a message is better than `u`, the one that counts (`Store.lost_keys`).
_BETTER = "(o.sidechain, -o.total, o.path, o.offset) < (u.sidechain, -u.total, u.path, u.offset)"


def in_parts(keys: list[str]) -> Iterator[tuple[list[str], str]]:
    """`keys` 500 at a time, each part with its `?,?,…` for an `IN (…)`."""
    for i in range(0, len(keys), 500):
        part = keys[i : i + 500]
        yield part, ",".join("?" * len(part))


def _slices(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_JOB_COLUMNS = (
    "id, source, session_id, project, cwd, git_branch, version, model, models, status, "
    "started_at, ended_at, duration_ms, prompt, summary, title, input_tokens, output_tokens, "
    "cache_creation_tokens, cache_read_tokens, reasoning_tokens, cost_usd, pricing_version, "
    "tool_call_count, failed_tool_calls, primary_tool, message_count, user_message_count, "
    "subagent_count, context_window, context_used_pct, source_path, machine_id, record, "
    "finalized_at, updated_at"
)
_INSERT_DOCUMENT = "INSERT INTO search_fts (rowid, title, prompt, summary, body) VALUES (?,?,?,?,?)"
_INSERT = {
    "jobs": f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({','.join('?' * 36)})",
    "tool_calls": "INSERT INTO tool_calls (job_id, seq, tool_use_id, name, agent_id, "
    "is_error, timestamp, input_preview, output_preview) VALUES (?,?,?,?,?,?,?,?,?)",
    "subagents": "INSERT INTO subagents (job_id, agent_id, agent_type, description, layout, "
    "started_at, ended_at, message_count, tool_call_count, input_tokens, output_tokens, "
    "cache_creation_tokens, cache_read_tokens, cost_usd) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "files_modified": "INSERT INTO files_modified (job_id, path, tool, count) VALUES (?,?,?,?)",
    "job_usage": "INSERT OR REPLACE INTO job_usage (job_id, hour, model, messages, "
    "input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, reasoning_tokens, "
    "cost_usd, first_at, last_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
    "job_rate_limits": "INSERT OR REPLACE INTO job_rate_limits (job_id, at, window, "
    "used_percent, window_minutes, resets_at) VALUES (?,?,?,?,?,?)",
}
# The job row updated in place (its children, kept, are rewritten by what changed).
_JOB_COLUMN_NAMES = _JOB_COLUMNS.replace(" ", "").split(",")
_UPDATED_AT = _JOB_COLUMN_NAMES.index("updated_at")
_UPSERT_JOB = (
    _INSERT["jobs"]
    + " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMN_NAMES if c != "id")
)


@functools.cache
def _update_job_sql(columns: tuple[int, ...]) -> str:
    """An UPDATE of the job row's columns at these positions of `_JOB_COLUMNS`."""
    sets = ", ".join(f"{_JOB_COLUMN_NAMES[i]} = ?" for i in columns)
    return f"UPDATE jobs SET {sets} WHERE id = ?"


def _usage_row(job_id: str, u: UsageRow) -> Row:
    return _ints((
        job_id, u.hour, u.model, u.messages, u.input_tokens, u.output_tokens,
        u.cache_creation_tokens, u.cache_read_tokens, u.reasoning_tokens, u.cost_usd,
        u.first_at, u.last_at,
    ))  # fmt: skip


# The usage sums of `daily_metrics` and `usage_hourly`, in their column order.
_SUMS = ("messages", "input_tokens", "output_tokens", "cache_creation_tokens",
         "cache_read_tokens", "reasoning_tokens", "cost_usd")  # fmt: skip
_SUM_LIST = ", ".join(_SUMS)


def _added(alias: str) -> str:
    """An upsert's SET clause adding the new row's sums to the stored row `alias`."""
    return ", ".join(f"{c} = {alias}.{c} + excluded.{c}" for c in _SUMS)


_DAILY_ADD = (
    f"INSERT INTO daily_metrics AS d (day, source, model, {_SUM_LIST}) "
    f"VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (day, source, model) DO UPDATE SET {_added('d')}"
)
_HOURLY_ADD = (
    f"INSERT INTO usage_hourly AS h (hour, source, model, {_SUM_LIST}) "
    f"VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (hour, source, model) DO UPDATE SET {_added('h')}"
)
# A job's usage rows added to (sign 1) or taken from (sign -1) the daily metrics.
_DAILY_APPLY = (
    f"INSERT INTO daily_metrics AS d (day, source, model, {_SUM_LIST}) "
    "SELECT substr(hour, 1, 10), ?, model, "
    + ", ".join(f"? * SUM({c})" for c in _SUMS)
    + " FROM job_usage WHERE job_id = ? GROUP BY substr(hour, 1, 10), model"
    f" ON CONFLICT (day, source, model) DO UPDATE SET {_added('d')}"
)
Row = tuple[Any, ...]


USAGE_KEY_COLUMNS = (
    "sidechain, total, path, offset, at, model, input_tokens, output_tokens, "
    "cache_creation_tokens, cache_read_tokens, cost_usd"
)
# A message copy, new or changed: the row keeps its place (and its id) when it changes.
_UPSERT_KEY = (
    f"INSERT INTO usage_keys (key, key_hash, session_id, {USAGE_KEY_COLUMNS}) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (session_id, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in USAGE_KEY_COLUMNS.split(", "))
)


def _recording(
    rows: Iterable[tuple[str, Row]], into: dict[str, tuple[Any, ...]]
) -> Iterator[tuple[str, Row]]:
    """The rows, each also noted in `into`."""
    for key, row in rows:
        into[key] = row
        yield key, row


def key_rows(candidates: Iterable[tuple[str, UsageCandidate]]) -> Iterator[tuple[str, Row]]:
    """Message copies as (key, their `usage_keys` columns): what `settle_usage` takes. A
    worker sends these (plain tuples unpickle in C; a dataclass per message did not)."""
    for key, candidate in candidates:
        yield key, _key_row(candidate)


def _key_row(c: UsageCandidate) -> tuple[Any, ...]:
    """A message copy as its `usage_keys` columns (the order of USAGE_KEY_COLUMNS)."""
    return _ints((
        int(c.sidechain), c.total, c.path, c.offset, c.at, c.model, c.input_tokens,
        c.output_tokens, c.cache_creation_tokens, c.cache_read_tokens, c.cost_usd,
    ))  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


PACK_INLINE_BYTES = 64 * 1024  # smaller chunks are compressed in the commit (`pack`)


@dataclass(slots=True)
class Chunk:
    file_id: int
    offset: int
    data: bytes
    line_count: int
    # Its compression under way (`Store.pack`), or done already by a worker process, which
    # then sends only the stored bytes (`data` empty) with their `codec` and raw `length`.
    packed: Future[bytes] | bytes | None = None
    codec: str | None = None
    length: int = 0

    @property
    def raw_length(self) -> int:
        return self.length if self.codec is not None else len(self.data)


@dataclass(slots=True)
class BadLine:
    file_id: int
    offset: int
    length: int
    reason: str


@dataclass(frozen=True, slots=True)
class FaultRow:
    """A file or session quarantined after an unexpected error (table `faults`)."""

    kind: str  # "file" | "session"
    key: str
    reason: str
    detail: str


@dataclass(slots=True)
class Batch:
    """Everything one round writes, in one transaction: new file rows, file states and
    offsets, the chunks those offsets cover, bad lines, faults, sessions gone stale."""

    new_files: list[FileRow] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    files: dict[int, FileRow] = field(default_factory=dict)
    bad_lines: list[BadLine] = field(default_factory=list)
    faults: list[FaultRow] = field(default_factory=list)
    stale_jobs: set[str] = field(default_factory=set)  # gained bytes: not final any more
    # Files whose archived unterminated tail was continued: its report is withdrawn.
    continued_tails: list[int] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.new_files or self.chunks or self.files or self.bad_lines or self.faults
            or self.stale_jobs or self.continued_tails
        )  # fmt: skip

    @property
    def raw_bytes(self) -> int:
        return sum(c.raw_length for c in self.chunks)


class Store:
    """Writes batches and reads back the archive, on the one writer connection."""

    def __init__(self, conn: sqlite3.Connection, compression_level: int = 3) -> None:
        self.conn = conn
        self._documents: list[tuple[Any, ...]] = []  # full-text rows of `write_jobs`
        self.withdrawn_bad_lines = 0  # reports of unterminated tails taken back by the last batch
        self.path: str = next(
            (row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), ""
        )
        self._level = compression_level
        self._compressor = zstandard.ZstdCompressor(level=compression_level)
        self._decompressor = zstandard.ZstdDecompressor()
        self._packer: ThreadPoolExecutor | None = None  # started by the first `pack`
        self._packer_local = threading.local()
        row = conn.execute("SELECT value FROM meta WHERE key = 'machine_id'").fetchone()
        self.machine_id: str | None = row[0] if row else None

    def bulk(self) -> None:
        """Tune the connection for a bulk load (`import`, `rebuild`).

        `synchronous = NORMAL`: in WAL mode a power loss can lose the last transactions but
        never corrupts the database, and what an import reads still exists in its files (an
        interrupted import is run again and reads on from the committed offsets). Fewer,
        larger checkpoints and a larger page cache spare most of the fsyncs and page reads.
        8 MB: since `usage_keys` is written in arrival order (`m011`), 16 MB imported 10,000
        sessions no faster and took the process past 100 MB.
        """
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA wal_autocheckpoint = 16384")  # pages: 64 MB of WAL
        self.conn.execute("PRAGMA cache_size = -8000")  # 8 MB

    def archived_job_keys(self) -> set[str]:
        """The sessions with archived bytes in a current file (read once at start)."""
        return {
            r[0]
            for r in self.conn.execute(
                "SELECT DISTINCT job_key FROM files WHERE job_key IS NOT NULL AND offset > 0 "
                "AND state IN ('active', 'deleted')"
            )
        }

    def close(self) -> None:
        if self._packer is not None:
            self._packer.shutdown(wait=True, cancel_futures=True)
            self._packer = None
        self.conn.close()

    def pack(self, chunk: Chunk) -> None:
        """Start compressing a chunk on the compression thread; `commit` collects it.

        zstandard releases the GIL while it compresses, so a chunk is compressed on the second
        core while the engine parses its lines on the first. A small chunk (an agent's few
        new lines) is compressed by `write_batch` instead: waking the thread for it would cost
        more than the compression.
        """
        if len(chunk.data) < PACK_INLINE_BYTES:
            return
        if self._packer is None:
            self._packer = ThreadPoolExecutor(2, thread_name_prefix="jobvault-zstd")
        chunk.packed = self._packer.submit(self._compress_on_packer, chunk.data)

    def _compress_on_packer(self, data: bytes) -> bytes:
        # A compressor object is not safe to share between threads: the packer has its own.
        compressor = getattr(self._packer_local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self._level)
            self._packer_local.compressor = compressor
        packed: bytes = compressor.compress(data)
        return packed

    # -- files -------------------------------------------------------------------------------

    def load_files(self) -> list[FileRow]:
        """Return every current (not superseded) generation of every tracked file."""
        rows = self.conn.execute(
            f"SELECT {FILE_COLUMNS} FROM files WHERE state IN ('active', 'deleted') ORDER BY id"
        )
        return [file_row(r) for r in rows]

    def source_of_job(self, job_key: str) -> str | None:
        """The source of a session's files, superseded ones too, else of its record."""
        row = (
            self.conn.execute(
                "SELECT source FROM files WHERE job_key = ? ORDER BY id DESC LIMIT 1", (job_key,)
            ).fetchone()
            or self.conn.execute(
                "SELECT source FROM jobs WHERE session_id = ? LIMIT 1", (job_key,)
            ).fetchone()
        )
        return str(row[0]) if row else None

    def files_of_job(self, job_key: str) -> list[FileRow]:
        rows = self.conn.execute(
            f"SELECT {FILE_COLUMNS} FROM files WHERE job_key = ? "
            "AND state IN ('active', 'deleted') ORDER BY id",
            (job_key,),
        )
        return [file_row(r) for r in rows]

    def next_generation(self, root: str, rel_path: str) -> int:
        row = self.conn.execute(
            "SELECT MAX(generation) FROM files WHERE root = ? AND rel_path = ?", (root, rel_path)
        ).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def max_file_id(self) -> int:
        """The largest file id in use: the engine numbers new file rows itself, so a round's
        new files, their chunks and offsets go in one transaction."""
        row = self.conn.execute("SELECT MAX(id) FROM files").fetchone()
        return int(row[0] or 0)

    def _insert_files(self, rows: list[FileRow], now: str) -> None:
        self.conn.executemany(
            "INSERT INTO files (id, source, path, root, rel_path, generation, dev, ino, "
            "fp_len, fp_hash, offset, size, mtime_ns, in_long_line, partial_tail, state, "
            "job_key, role, agent_id, line_count, bad_lines, lost_bytes, codec, disk_size, "
            "first_seen_at, updated_at) VALUES "
            f"({','.join('?' * 26)})",
            [
                (
                    row.id, row.source, row.path, row.root, row.rel_path, row.generation,
                    row.dev, row.ino, row.fp_len, row.fp_hash, row.offset, row.size,
                    row.mtime_ns, int(row.in_long_line), int(row.partial_tail), row.state,
                    row.job_key, row.role, row.agent_id, row.line_count, row.bad_lines,
                    row.lost_bytes, row.codec, row.disk_size, now, now,
                )
                for row in rows
            ],
        )  # fmt: skip

    # -- batches -----------------------------------------------------------------------------

    class _Tx:
        """BEGIN IMMEDIATE … COMMIT; any SQLite error rolls back and becomes a StoreError.

        Inside another `_Tx` it is part of the outer transaction, which commits or rolls
        back everything at once.
        """

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn
            self.nested = False

        def __enter__(self) -> None:
            self.nested = self.conn.in_transaction
            if self.nested:
                return
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot start a write transaction: {exc}") from exc

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            if self.nested:  # the outer transaction decides; SQLite errors become StoreError
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"the database refused the write: {exc}") from exc
                return
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except sqlite3.Error as error:
                    self._rollback()
                    raise StoreError(f"the database refused the write: {error}") from error
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"the database refused the write: {exc}") from exc

        def _rollback(self) -> None:
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")

    def _transaction(self) -> Store._Tx:
        return Store._Tx(self.conn)

    def transaction(self) -> Store._Tx:
        """One write transaction around several writes (each then joins it)."""
        return Store._Tx(self.conn)

    def has_final_record(self, job_key: str) -> bool:
        """Whether the session's stored record (or, with none, its mark as an empty session)
        is final."""
        rows = self.conn.execute(
            "SELECT finalized_at IS NOT NULL FROM jobs WHERE session_id = ?", (job_key,)
        ).fetchall()
        if rows:
            return all(final for (final,) in rows)
        return (
            self.conn.execute(
                "SELECT 1 FROM empty_sessions WHERE session_id = ? LIMIT 1", (job_key,)
            ).fetchone()
            is not None
        )

    def job_has_record_or_archive(self, job_key: str) -> bool:
        if self.conn.execute("SELECT 1 FROM jobs WHERE session_id = ? LIMIT 1", (job_key,)
                             ).fetchone():  # fmt: skip
            return True
        return self.job_has_archive(job_key)

    def job_has_archive(self, job_key: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM files WHERE job_key = ? AND offset > 0 "
            "AND state IN ('active', 'deleted') LIMIT 1",
            (job_key,),
        ).fetchone()
        return row is not None

    def unfinalized_job_keys(self) -> list[str]:
        """Sessions whose record is missing or not final: with archived bytes and no final
        record, or with a record left active (a crash, or every file of it superseded)."""
        rows = self.conn.execute(
            "SELECT f.job_key FROM files f "
            "LEFT JOIN jobs j ON j.session_id = f.job_key AND j.source = f.source "
            "WHERE f.job_key IS NOT NULL AND f.state IN ('active', 'deleted') AND f.offset > 0 "
            "AND (j.id IS NULL OR j.finalized_at IS NULL) AND NOT EXISTS (SELECT 1 FROM "
            "empty_sessions e WHERE e.session_id = f.job_key AND e.source = f.source) "
            "UNION SELECT session_id FROM jobs WHERE finalized_at IS NULL ORDER BY 1"
        )
        return [r[0] for r in rows]

    def empty_sessions(self) -> set[str]:
        """Finalized sessions with no conversation: archived, not jobs."""
        return {r[0] for r in self.conn.execute("SELECT session_id FROM empty_sessions")}

    def quarantined_sessions(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT key FROM faults WHERE kind = 'session'")}

    def clear_faults(self, kind: str) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM faults WHERE kind = ?", (kind,))

    def close_records(self, sessions: Iterable[str]) -> None:
        """Make the records of these sessions final as they stand, with status 'error' (a
        quarantined session: its record cannot be rebuilt until `jobvault rebuild`)."""
        now = now_iso()
        with self._transaction():
            self.conn.executemany(
                "UPDATE jobs SET status = 'error', finalized_at = ?1, updated_at = ?1, "
                "record = json_set(record, '$.status', 'error') "
                "WHERE session_id = ?2 AND finalized_at IS NULL",
                [(now, session) for session in sessions],
            )

    def delete_job(self, session: str) -> None:
        """Remove a session's record (it has no current file left holding anything)."""
        for (job_id,) in self.conn.execute(
            "SELECT id FROM jobs WHERE session_id = ?", (session,)
        ).fetchall():
            self._retract_usage(job_id)
            self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self.conn.execute("DELETE FROM usage_keys WHERE session_id = ?", (session,))
        self.conn.execute("DELETE FROM empty_sessions WHERE session_id = ?", (session,))

    def delete_orphan_jobs(self, keep: list[str]) -> None:
        """Delete job rows whose session no longer has any current file."""
        with self._transaction():
            wanted = set(keep)
            for job_id, session in self.conn.execute("SELECT id, session_id FROM jobs").fetchall():
                if session not in wanted:
                    self._retract_usage(job_id)
                    self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            for (session,) in self.conn.execute("SELECT session_id FROM empty_sessions").fetchall():
                if session not in wanted:
                    self.conn.execute("DELETE FROM empty_sessions WHERE session_id = ?", (session,))

    def write_batch(self, batch: Batch) -> None:
        """Write a round's archive part atomically (joining an open transaction, if any).

        Sessions in `batch.stale_jobs` gained bytes: their records are marked not final in
        the same transaction, so a crash before the record is rewritten is noticed at the
        next start.
        """
        self.withdrawn_bad_lines = 0
        if batch.empty():
            return
        now = now_iso()
        compress = self._compressor.compress
        chunk_rows = []
        for c in batch.chunks:
            if c.codec is not None:  # stored form made by a worker
                assert isinstance(c.packed, bytes)
                chunk_rows.append((c.file_id, c.offset, c.length, c.line_count, c.codec, c.packed))
                continue
            packed = c.packed.result() if isinstance(c.packed, Future) else compress(c.data)
            if len(packed) < len(c.data):
                chunk_rows.append((c.file_id, c.offset, len(c.data), c.line_count, "zstd", packed))
            else:
                chunk_rows.append((c.file_id, c.offset, len(c.data), c.line_count, "raw", c.data))
        with self._transaction():
            if batch.new_files:
                self._insert_files(batch.new_files, now)
            if chunk_rows:
                self.conn.executemany(
                    "INSERT INTO chunks (file_id, offset, length, line_count, codec, data) "
                    "VALUES (?,?,?,?,?,?)",
                    chunk_rows,
                )
            if batch.files:
                rows = batch.files.values()
                # What names a file (all four indexed) only where it changed: setting an
                # indexed column rewrites its index entry even to the same value, three index
                # pages of every live commit that only moved an offset.
                self.conn.executemany(
                    "UPDATE files SET path=?2, dev=?3, ino=?4, job_key=?5 WHERE id=?1 "
                    "AND (path IS NOT ?2 OR dev IS NOT ?3 OR ino IS NOT ?4 OR job_key IS NOT ?5)",
                    [(f.id, f.path, f.dev, f.ino, f.job_key) for f in rows],
                )
                self.conn.executemany(
                    "UPDATE files SET offset=?, size=?, mtime_ns=?, in_long_line=?, "
                    "partial_tail=?, state=?, fp_len=?, fp_hash=?, line_count=?, bad_lines=?, "
                    "lost_bytes=?, codec=?, disk_size=?, updated_at=? WHERE id=?",
                    [
                        (
                            f.offset, f.size, f.mtime_ns, int(f.in_long_line),
                            int(f.partial_tail), f.state, f.fp_len, f.fp_hash, f.line_count,
                            f.bad_lines, f.lost_bytes, f.codec, f.disk_size, now, f.id,
                        )
                        for f in rows
                    ],
                )  # fmt: skip
            for file_id in batch.continued_tails:
                withdrawn = self.conn.execute(
                    "DELETE FROM bad_lines WHERE file_id = ?1 AND reason LIKE 'unterminated%' "
                    "AND offset = (SELECT MAX(offset) FROM bad_lines WHERE file_id = ?1) "
                    "RETURNING 1",
                    (file_id,),
                ).fetchall()
                self.withdrawn_bad_lines += len(withdrawn)
            if batch.bad_lines:
                self.conn.executemany(
                    "INSERT OR IGNORE INTO bad_lines (file_id, offset, length, reason, "
                    "detected_at) VALUES (?,?,?,?,?)",
                    [(b.file_id, b.offset, b.length, b.reason, now) for b in batch.bad_lines],
                )
            if batch.faults:
                self.conn.executemany(
                    "INSERT INTO faults (kind, key, reason, detail, first_at, last_at) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT (kind, key) DO UPDATE SET "
                    "reason = excluded.reason, detail = excluded.detail, "
                    "count = faults.count + 1, last_at = excluded.last_at",
                    [(f.kind, f.key, f.reason, f.detail, now, now) for f in batch.faults],
                )
            if batch.stale_jobs:
                stale = [(key,) for key in sorted(batch.stale_jobs)]
                self.conn.executemany(
                    "UPDATE jobs SET finalized_at = NULL, status = 'active' "
                    "WHERE session_id = ? AND finalized_at IS NOT NULL",
                    stale,
                )
                # An empty session that grows may become a job.
                self.conn.executemany("DELETE FROM empty_sessions WHERE session_id = ?", stale)

    def commit(self, batch: Batch, stale_jobs: set[str] | None = None) -> None:
        """`write_batch` in a transaction of its own (tests and tools)."""
        if stale_jobs:
            batch.stale_jobs |= stale_jobs
        with self._transaction():
            self.write_batch(batch)

    def write_jobs(
        self,
        jobs: Iterable[tuple[JobDetail, bool]],
        states: dict[str, Written] | None = None,
        defer_text: Container[str] = (),
    ) -> list[tuple[JobDetail, Exception]]:
        """Write job records; return those the database refused, with the reason.

        With `states` (what was last written of each live job, kept by the caller), a job
        still active is written by what changed since (`increments.py`) and its new state
        kept; a final one is written whole and its state dropped. The live (not final) jobs
        whose session is in `defer_text` keep their indexed text if it changed (their state says
        `text_stale`; a later write indexes it).

        Each record is written under a savepoint of its own, so a refused one (a value out of
        the database's range, a constraint) alone is rolled back and reported, and one
        session's data never stops the round. Not one savepoint around them all: SQLite then
        copies every page the batch touches into the statement journal and walks it at the end
        of every statement (a third of an import's writing, growing with the batch). Their
        full-text documents are added last, together: a statement in a transaction that has
        written to FTS5 makes it flush its pending terms, which would otherwise happen after
        every record. Errors of the database itself (full, read-only, locked) abort the whole
        transaction.
        """
        now = now_iso()
        refused: list[tuple[JobDetail, Exception]] = []
        with self._transaction():
            try:
                for detail, finalized in jobs:
                    self.conn.execute("SAVEPOINT job")
                    pending = len(self._documents)
                    try:
                        self._write_job(detail, finalized, now, states, defer_text)
                    except (sqlite3.OperationalError, sqlite3.InternalError):
                        raise
                    except _REFUSED as exc:
                        self.conn.execute("ROLLBACK TO job")
                        del self._documents[pending:]
                        if states is not None:
                            states.pop(detail.record.session_id, None)  # (rolled back: whole)
                        refused.append((detail, exc))
                    self.conn.execute("RELEASE job")
                self._write_documents()
            finally:
                self._documents.clear()
        return refused

    def _write_documents(self) -> None:
        """Add the full-text documents of the records just written (`_index_job`)."""
        self.conn.execute("SAVEPOINT documents")  # (executemany stops mid-way on a refusal)
        try:
            self.conn.executemany(_INSERT_DOCUMENT, self._documents)
        except (sqlite3.OperationalError, sqlite3.InternalError):
            raise
        except _REFUSED:  # (text SQLite will not take): one at a time, without it
            self.conn.execute("ROLLBACK TO documents")
            for doc in self._documents:
                try:
                    self.conn.execute(_INSERT_DOCUMENT, doc)
                except (sqlite3.OperationalError, sqlite3.InternalError):
                    raise
                except _REFUSED as exc:
                    log.warning("search_document_refused", doc_id=doc[0], error=str(exc))
                    self.conn.execute(_INSERT_DOCUMENT, (doc[0], *map(_scrubbed, doc[1:])))
        self.conn.execute("RELEASE documents")

    def _update_job(self, row: Row, before: Row) -> None:
        """Write a live job's row: only the columns that differ from `before` (its row as last
        written here), so an appended line does not rewrite the indexes of its start, project
        or session (nine indexes: a page each, a third of a live commit's pages). A row that
        would only get a newer `updated_at` is left alone (nor is it a change to sync); a
        row no longer there (or none known) is inserted whole."""
        if len(before) == len(row) and before[0] == row[0]:
            changed = tuple(i for i in range(1, len(row)) if row[i] != before[i])
            if changed in ((), (_UPDATED_AT,)):  # the same record: left as it is
                return
            cursor = self.conn.execute(
                _update_job_sql(changed), (*(row[i] for i in changed), row[0])
            )
            if cursor.rowcount == 1:
                return
        self.conn.execute(_UPSERT_JOB, row)

    def _job_row(self, detail: JobDetail, finalized: bool, now: str) -> tuple[Any, ...]:
        rec = detail.record
        record_json = orjson.dumps(rec).decode()  # (orjson serializes the dataclass itself)
        return _ints((
            rec.id, rec.source, rec.session_id, rec.project, rec.cwd, rec.git_branch,
            rec.version, rec.model, orjson.dumps(rec.models).decode(), rec.status,
            rec.started_at, rec.ended_at, rec.duration_ms, rec.prompt, rec.summary,
            rec.title, rec.input_tokens, rec.output_tokens, rec.cache_creation_tokens,
            rec.cache_read_tokens, rec.reasoning_tokens, rec.cost_usd, rec.pricing_version,
            rec.tool_call_count, rec.failed_tool_calls, rec.primary_tool, rec.message_count,
            rec.user_message_count, rec.subagent_count, rec.context_window,
            rec.context_used_pct, rec.source_path, rec.machine_id, record_json,
            now if finalized else None, now,
        ))  # fmt: skip

    @staticmethod
    def _children(
        detail: JobDetail,
    ) -> tuple[list[Row], list[Row], list[Row], dict[tuple[str, str], Row]]:
        """A job's subagent, files-modified and rate-limit rows, and its usage rows."""
        rec = detail.record
        subagents = [
            _ints((rec.id, s.agent_id, s.agent_type, s.description, s.layout, s.started_at,
                   s.ended_at, s.message_count, s.tool_call_count, s.input_tokens,
                   s.output_tokens, s.cache_creation_tokens, s.cache_read_tokens, s.cost_usd))
            for s in detail.subagents
        ]  # fmt: skip
        files = [(rec.id, f.path, f.tool, f.count) for f in detail.files]
        rates = [
            _ints((rec.id, r.at, r.window, r.used_percent, r.window_minutes, r.resets_at))
            for r in detail.rate_limits
        ]
        usage = {(u.hour, u.model): _usage_row(rec.id, u) for u in detail.usage}
        return subagents, files, rates, usage

    def _write_job(
        self,
        detail: JobDetail,
        finalized: bool,
        now: str,
        states: dict[str, Written] | None = None,
        defer_text: Container[str] = (),
    ) -> None:
        rec = detail.record
        prev = states.pop(rec.session_id, None) if states is not None else None
        if prev is not None and not detail.empty:
            state = write_changes(
                self.conn, detail, prev,
                job_row=self._job_row(detail, finalized, now), update_job=self._update_job,
                children=self._children, insert=_INSERT, daily=self._daily_deltas,
                hourly=self._hourly_deltas,
                defer_text=not finalized and rec.session_id in defer_text,
            )  # fmt: skip
            if not finalized and states is not None:
                states[rec.session_id] = state
            return
        self._retract_usage(rec.id)
        self.conn.execute("DELETE FROM jobs WHERE id = ?", (rec.id,))  # cascades to children
        if detail.empty:  # no conversation: archived, not a job (and no longer one if it was)
            if finalized:
                self.conn.execute(
                    "INSERT OR REPLACE INTO empty_sessions (source, session_id, finalized_at) "
                    "VALUES (?,?,?)",
                    (rec.source, rec.session_id, now),
                )
            return
        self.conn.execute(
            "DELETE FROM empty_sessions WHERE source = ? AND session_id = ?",
            (rec.source, rec.session_id),
        )
        job_row = self._job_row(detail, finalized, now)
        self.conn.execute(_INSERT["jobs"], job_row)
        keep = not finalized and states is not None
        tools = tool_rows(detail) if keep else None
        self.conn.executemany(
            _INSERT["tool_calls"],
            tools if tools is not None else (  # a generator: previews are read one at a time
                (rec.id, t.seq, t.tool_use_id, t.name, t.agent_id, int(t.is_error),
                 t.timestamp, t.input_preview, t.output_preview)
                for t in detail.tool_calls
            ),
        )  # fmt: skip
        subagents, files, rates, usage = self._children(detail)
        self.conn.executemany(_INSERT["subagents"], subagents)
        self.conn.executemany(_INSERT["files_modified"], files)
        self.conn.executemany(_INSERT["job_usage"], list(usage.values()))
        self.conn.executemany(_INSERT["job_rate_limits"], rates)
        self._add_daily(rec.source, detail)
        self._add_hourly(rec.source, detail)
        self._index_job(detail)
        if keep:
            assert states is not None and tools is not None
            states[rec.session_id] = state_of(
                detail, tools, subagents, files, rates, usage, job_row
            )

    def _daily_deltas(self, source: str, deltas: dict[tuple[str, str], list[Any]]) -> None:
        """Add the changes of a job's usage to the daily metrics (`increments.py`)."""
        self.conn.executemany(
            _DAILY_ADD,
            [_ints((day, source, model, *values)) for (day, model), values in deltas.items()],
        )
        self.conn.executemany(
            "DELETE FROM daily_metrics WHERE day = ? AND source = ? AND model = ? "
            "AND messages = 0 AND input_tokens = 0 AND output_tokens = 0 "
            "AND cache_creation_tokens = 0 AND cache_read_tokens = 0",
            [(day, source, model) for day, model in deltas],
        )

    def _index_job(self, detail: JobDetail) -> None:
        """Give the job its full-text document (the DELETE above dropped the old one).

        Derived from the record alone, like every child row, so `rebuild` reproduces it; the
        `jobs_search_delete` trigger removes it whenever the job row is deleted.
        """
        rec = detail.record
        doc_id = self.conn.execute(
            "INSERT INTO search_docs (job_id) VALUES (?)", (rec.id,)
        ).lastrowid
        self._documents.append(
            (doc_id, rec.title or "", rec.prompt or "", rec.summary or "", detail.search_text)
        )

    def _add_daily(self, source: str, detail: JobDetail) -> None:
        """Add a job's usage rows to the daily metrics (as `_apply_usage`, from memory)."""
        days: dict[tuple[str, str], list[Any]] = {}
        for u in detail.usage:
            row = days.setdefault((u.hour[:10], u.model), [0, 0, 0, 0, 0, 0, 0.0])
            for i, value in enumerate(
                (u.messages, u.input_tokens, u.output_tokens, u.cache_creation_tokens,
                 u.cache_read_tokens, u.reasoning_tokens, u.cost_usd)
            ):  # fmt: skip
                row[i] += value
        self.conn.executemany(
            _DAILY_ADD,
            [_ints((day, source, model, *values)) for (day, model), values in days.items()],
        )

    def _add_hourly(self, source: str, detail: JobDetail) -> None:
        """Add a job's usage rows to `usage_hourly` (m005_read_side), from memory.

        The hourly rollup the period reports read in any time zone. A trigger subtracts the
        rows when the job's row is deleted (a whole write deletes it first); adding them here
        rather than in a trigger on `job_usage` spares each record write a statement journal
        inside the `jobs` savepoint.
        """
        self._hourly_deltas(
            source,
            {(u.hour, u.model): [u.messages, u.input_tokens, u.output_tokens,
                                 u.cache_creation_tokens, u.cache_read_tokens,
                                 u.reasoning_tokens, u.cost_usd] for u in detail.usage},
        )  # fmt: skip

    def _hourly_deltas(self, source: str, deltas: dict[tuple[str, str], list[Any]]) -> None:
        """Add usage (or its changes, for a live write) per (hour, model) to `usage_hourly`;
        rows whose counts all come back to zero are removed."""
        self.conn.executemany(
            _HOURLY_ADD,
            [_ints((hour, source, model, *values)) for (hour, model), values in deltas.items()],
        )
        if any(v < 0 for values in deltas.values() for v in values):
            self.conn.executemany(
                "DELETE FROM usage_hourly WHERE hour = ? AND source = ? AND model = ? "
                "AND messages = 0 AND input_tokens = 0 AND output_tokens = 0 "
                "AND cache_creation_tokens = 0 AND cache_read_tokens = 0 "
                "AND reasoning_tokens = 0",
                [(hour, source, model) for hour, model in deltas],
            )

    def _retract_usage(self, job_id: str) -> None:
        row = self.conn.execute("SELECT source FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is not None:
            self._apply_usage(job_id, row[0], sign=-1)

    def _apply_usage(self, job_id: str, source: str, sign: int) -> None:
        """Add (or subtract) a job's usage rows to the daily metrics."""
        self.conn.execute(
            _DAILY_APPLY,
            (source, sign, sign, sign, sign, sign, sign, sign, job_id),
        )
        if sign < 0:
            self.conn.execute(
                "DELETE FROM daily_metrics WHERE messages = 0 AND input_tokens = 0 "
                "AND output_tokens = 0 AND cache_creation_tokens = 0 AND cache_read_tokens = 0"
            )

    # -- duplicates across jobs ---------------------------------------------------------------

    def settle_usage(
        self,
        session: str,
        candidates: Iterable[tuple[str, Row]],
        known: dict[str, Row] | None = None,
    ) -> set[str]:
        """Record a job's best message copies; return the other jobs affected.

        `candidates` (`key_rows`) come in key order and are merged with the stored ones a slice at a
        time, so a session of any length is settled in bounded memory. Other jobs sharing a
        key whose copy changed here must be recomputed: the winner of that key may have
        moved. Which keys a job loses is asked afterwards (`lost_keys`), for a whole round.

        `known`: the session's rows as last settled, kept in memory for a live session by
        the caller and updated here: only the keys that differ are written, with no read. An
        empty `known` is filled (the stored rows are not known yet: they are diffed in SQL).
        """
        affected: set[str] = set()
        if known:  # the stored rows are these: diff in memory
            new = dict(candidates)
            changed = [k for k, v in new.items() if known.get(k) != v]
            removed = [k for k in known if k not in new]
            with self._transaction():
                for i in range(0, max(len(changed), len(removed)), SETTLE_SLICE):
                    cut = slice(i, i + SETTLE_SLICE)
                    self._settle_slice(session, removed[cut], changed[cut], new, affected)
            known.clear()
            known.update(new)
            return affected
        if known is not None:  # to be filled with what is stored once this settle is done
            candidates = _recording(candidates, known)
        with self._transaction():
            low: str | None = None  # the slices cover (low, high] in key order
            for part in _slices(candidates, SETTLE_SLICE):
                high = part[-1][0]
                new = dict(part)
                old = {
                    r[0]: tuple(r[1:])
                    for r in self.conn.execute(
                        f"SELECT key, {USAGE_KEY_COLUMNS} FROM usage_keys "
                        "WHERE session_id = ?1 AND (?2 IS NULL OR key > ?2) AND key <= ?3",
                        (session, low, high),
                    )
                }
                removed = [k for k in old if k not in new]
                changed = [k for k, v in new.items() if old.get(k) != v]
                self._settle_slice(session, removed, changed, new, affected)
                low = high
            while True:  # stored keys past the last candidate: the job lost those messages
                gone = [
                    r[0]
                    for r in self.conn.execute(
                        "SELECT key FROM usage_keys WHERE session_id = ?1 "
                        "AND (?2 IS NULL OR key > ?2) ORDER BY key LIMIT ?3",
                        (session, low, SETTLE_SLICE),
                    )
                ]
                if not gone:
                    break
                self._settle_slice(session, gone, [], {}, affected)
        return affected

    def settle_many(
        self, sessions: Mapping[str, Iterable[tuple[str, Row]]]
    ) -> tuple[set[str], set[str]]:
        """`settle_usage` for many sessions at once (a cold round's prebuilt records);
        return the sessions outside `sessions` that are affected: (by those that had stored
        copies, by the new ones: `new_losses` tells which of these lose a message).

        The sessions with no stored copies yet (an import's and a backfill's new ones, nearly
        all of them) are settled together: their copies in one statement and the other
        sessions sharing their keys in a query per slice of keys, instead of five statements
        a session. The others are settled one by one, as `settle_usage` does.
        """
        keys = sorted(sessions)
        stored: set[str] = set()
        for part, marks in in_parts(keys):
            stored.update(
                r[0]
                for r in self.conn.execute(
                    f"SELECT DISTINCT session_id FROM usage_keys WHERE session_id IN ({marks})",
                    part,
                )
            )
        affected: set[str] = set()
        by_new: set[str] = set()
        with self._transaction():
            rows: list[tuple[Any, ...]] = []
            for session in keys:
                if session in stored:
                    affected |= self.settle_usage(session, sessions[session])
                else:
                    rows.extend((k, key_hash(k), session, *row) for k, row in sessions[session])
            self.conn.executemany(_UPSERT_KEY, rows)
            hashes = {r[0]: r[1] for r in rows}
            by_new.update(self._holders(sorted(hashes), hashes.__getitem__))
        return affected - sessions.keys(), by_new - sessions.keys()

    def new_losses(self, sessions: Iterable[str], new: Container[str]) -> set[str]:
        """Which of `sessions` lose a message to one of the `new` sessions (just settled,
        with no stored copies before): only those must be rebuilt. A session that does not
        loses exactly what it lost before, as its stored record counts it (new copies can
        take messages from a session, never give it any back)."""
        keys = sorted(set(sessions))
        out: set[str] = set()
        for part, marks in in_parts(keys):
            for session, winner in self.conn.execute(
                f"""
                SELECT u.session_id, o.session_id FROM usage_keys u
                JOIN usage_keys o ON o.key_hash = u.key_hash AND o.key = u.key
                  AND o.session_id != u.session_id
                  AND {_BETTER}
                WHERE u.session_id IN ({marks})
                """,
                part,
            ):
                if winner in new:
                    out.add(session)
        return out

    def settle_changes(
        self,
        session: str,
        changes: Iterable[tuple[str, UsageCandidate]],
        known: dict[str, Row],
    ) -> tuple[set[str], set[str]]:
        """Settle only the message copies that changed in a live session whose stored rows
        are `known` (kept by the caller, updated here); return (other sessions affected,
        keys written)."""
        rows: dict[str, Row] = {}
        for key, candidate in changes:
            row = _key_row(candidate)
            if known.get(key) != row:
                rows[key] = row
        affected: set[str] = set()
        if rows:
            with self._transaction():
                keys = list(rows)
                for i in range(0, len(keys), SETTLE_SLICE):
                    self._settle_slice(session, [], keys[i : i + SETTLE_SLICE], rows, affected)
            known.update(rows)
        return affected, set(rows)

    def lost_among(self, session: str, keys: Iterable[str]) -> set[str]:
        """Which of these keys of `session` another session holds a better copy of."""
        out: set[str] = set()
        keys = list(keys)
        for part, marks in in_parts(keys):
            out.update(
                r[0]
                for r in self.conn.execute(
                    f"""
                    SELECT u.key FROM usage_keys u
                    WHERE u.session_id = ? AND u.key IN ({marks}) AND EXISTS (
                        SELECT 1 FROM usage_keys o
                        WHERE o.key_hash = u.key_hash AND o.key = u.key
                          AND o.session_id != u.session_id
                          AND {_BETTER})
                    """,
                    (session, *part),
                )
            )
        return out

    def lost_keys(self, sessions: Iterable[str]) -> dict[str, frozenset[str]]:
        """For each session, the message keys another session holds a better copy of.

        Asked once per round, after every session of the round has settled its copies, so
        which copy counts never depends on the order sessions were read in.
        """
        keys = sorted(set(sessions))
        lost: dict[str, set[str]] = {key: set() for key in keys}
        for part, marks in in_parts(keys):
            for session, key in self.conn.execute(
                f"""
                SELECT u.session_id, u.key FROM usage_keys u
                WHERE u.session_id IN ({marks}) AND EXISTS (
                    SELECT 1 FROM usage_keys o
                    WHERE o.key_hash = u.key_hash AND o.key = u.key
                      AND o.session_id != u.session_id
                      AND {_BETTER})
                """,
                part,
            ):
                lost[session].add(key)
        return {key: frozenset(value) for key, value in lost.items()}

    def _settle_slice(
        self,
        session: str,
        removed: list[str],
        changed: list[str],
        new: dict[str, tuple[Any, ...]],
        affected: set[str],
    ) -> None:
        self.conn.executemany(
            "DELETE FROM usage_keys WHERE key = ? AND session_id = ?",
            [(k, session) for k in removed],
        )
        self.conn.executemany(_UPSERT_KEY, [(k, key_hash(k), session, *new[k]) for k in changed])
        affected.update(self._holders(removed + changed, key_hash, besides=session))

    def _holders(
        self, keys: list[str], digest: Callable[[str], int], besides: str | None = None
    ) -> Iterator[str]:
        """The sessions (other than `besides`) holding a copy of any of `keys`."""
        for part, marks in in_parts(keys):
            for (session,) in self.conn.execute(
                f"SELECT DISTINCT session_id FROM usage_keys WHERE key_hash IN ({marks}) "
                f"AND key IN ({marks}) AND session_id IS NOT ?",
                (*map(digest, part), *part, besides),
            ):
                yield session

    def clear_usage_keys(self) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM usage_keys")

    # -- reading the archive -----------------------------------------------------------------

    def iter_chunks(self, file_id: int) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, raw bytes) of a file's archived chunks, in order."""
        return iter_chunks(self.conn, file_id, self._decompressor)

    def checkpoint(self, truncate_above: int = 1024 * 1024) -> tuple[int, int]:
        """Checkpoint the WAL without waiting for readers; truncate it when it is large.

        A PASSIVE checkpoint never blocks; when it copied everything back (no reader holds an
        old snapshot) and the WAL file is large, a TRUNCATE (which then needs no waiting)
        shrinks it to nothing. Returns (WAL frames, frames checkpointed).
        """
        busy, frames, done = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        wal = Path(self.path + "-wal") if self.path else None
        if not busy and frames == done and wal is not None:
            try:
                large = wal.stat().st_size > truncate_above
            except OSError:
                large = False
            if large:
                self.conn.execute("PRAGMA busy_timeout = 0")
                try:
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return frames, done

    def archived_tail(self, file_id: int, size: int) -> bytes:
        """The last `size` archived bytes of a file (fewer if the archive is shorter)."""
        out = b""
        rows = self.conn.execute(
            "SELECT codec, data, length FROM chunks WHERE file_id = ? ORDER BY offset DESC",
            (file_id,),
        )
        for codec, data, length in rows:
            raw = (
                self._decompressor.decompress(data, max_output_size=length)
                if codec == "zstd"
                else bytes(data)
            )
            out = raw + out
            if len(out) >= size:
                break
        return out[-size:]

    def job_keys(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT DISTINCT job_key FROM files WHERE job_key IS NOT NULL "
            "AND state IN ('active', 'deleted') ORDER BY job_key"
        )
        return [r[0] for r in rows]
