"""Pushing a vault: idempotent, resumable and incremental.

The team database keeps, per machine, the last local change number it acknowledged
(`machines.acked_seq`). A push reads the jobs changed after it (`Vault.changes`) and sends
them in batches; each batch is ONE transaction that replaces the batch's jobs (delete, then
COPY the new rows; a deleted job is only deleted), keeps `usage_hourly` in step (the batch's
new usage minus its old, as one sorted upsert), notes messages and rollouts now present on
several machines, and moves the acknowledgement to the batch's last change. So:

* interrupted anywhere (kill -9, network, server stop), the open batch rolls back and the
  next push resumes from the last acknowledged batch: nothing is lost, nothing doubled;
* pushed again with no change, nothing is sent;
* a job rewritten locally (new lines, `rebuild`, new prices) gets a new change number and
  its remote rows are replaced; a deleted job is deleted remotely.

Two pushers of one machine (the daemon and `jobvault sync`) lock the machine's row and check
the acknowledgement they started from, so neither can send an older state over a newer one.
A full push (`--full`, changed `include`, or a database restored from an older backup) resets
the acknowledgement to 0 in one transaction, pushes everything, then deletes what the machine
still had remotely but no longer has locally.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from jobvault.team import connect, schema
from jobvault.team.vault import (
    ARCHIVE_FILE_COLUMNS,
    CHUNK_COLUMNS,
    FILE_COLUMNS,
    JOB_COLUMNS,
    KEY_COLUMNS,
    SUBAGENT_COLUMNS,
    TOOL_COLUMNS,
    USAGE_COLUMNS,
    JobChange,
    Vault,
)

if TYPE_CHECKING:
    import psycopg

    from jobvault.config import SyncInclude

log = structlog.get_logger("jobvault.team")

ARCHIVE_BATCH_BYTES = 8 * 1024 * 1024
RETRIES = 5  # a deadlock or serialization failure is retried (a batch is idempotent)
SUMS = ("messages", "input_tokens", "output_tokens", "cache_creation_tokens",
        "cache_read_tokens", "reasoning_tokens", "cost_usd")  # fmt: skip
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Settings:
    include: tuple[SyncInclude, ...] = ()
    name: str | None = None
    batch_rows: int = 20_000
    client_version: str = "0.0.0"


@dataclass(frozen=True, slots=True)
class PushResult:
    """What one push did."""

    machine_id: str
    jobs: int  # job records written (new or replaced)
    unchanged: int  # job records rewritten locally with nothing new: not sent again
    deleted: int  # job records deleted remotely
    rows: int  # rows sent, children included
    chunks: int  # archive chunks sent
    batches: int
    seconds: float
    acked_seq: int
    pending: int  # changes left (0 unless stopped)
    full: str | None  # why everything was pushed again, if it was

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Moved(Exception):
    """Another pusher of this machine acknowledged more meanwhile."""

    def __init__(self, acked: int) -> None:
        self.acked = acked


@dataclass(slots=True)
class _Machine:
    acked_seq: int
    acked_chunk: int
    includes: tuple[str, ...]
    full_since: datetime | None


def push(
    vault: Vault,
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    full: bool = False,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Push what changed since the last acknowledged push (everything with `full`)."""
    started = time.monotonic()
    schema.check(conn)
    machine = vault.machine_id
    state = _register(conn, machine, settings)
    local_max = vault.max_seq()
    reason = None
    if full:
        reason = "asked (--full)"
    elif tuple(state.includes) != tuple(settings.include):
        reason = f"include changed ({', '.join(state.includes) or 'nothing'} → " + (
            f"{', '.join(settings.include) or 'nothing'})"
        )
    elif local_max < state.acked_seq:
        reason = "the database is older than what was pushed (restored from a backup?)"
    if reason is not None:
        log.info("sync_full_push", machine=machine, reason=reason)
        keep_archive = not full and local_max >= state.acked_seq
        state = _reset(conn, machine, settings, keep_archive)
    total = vault.pending(state.acked_seq)
    done = jobs = deleted = rows = batches = chunks = unchanged = 0
    acked = state.acked_seq
    while not (stop is not None and stop.is_set()):
        batch = vault.changes(acked, settings.include, settings.batch_rows)
        if not batch:
            break
        try:
            sent = _retry(
                _applying(conn, machine, batch, acked, state.full_since is not None, full)
            )
        except _Moved as moved:
            acked = moved.acked  # re-plan from what the other pusher acknowledged
            continue
        acked = batch[-1].seq
        batches += 1
        done += len(batch)
        written = sum(c.job is not None for c in sent)
        jobs += written
        deleted += len(sent) - written
        unchanged += len(batch) - len(sent)
        rows += sum(c.rows for c in sent)
        if progress is not None:
            progress(min(done, total), max(total, done))
    caught_up = vault.pending(acked) == 0
    if caught_up and state.full_since is not None and not (stop is not None and stop.is_set()):
        deleted += _finish_full(conn, machine, state.full_since, acked)
    if "archive" in settings.include:
        chunks = _push_archive(vault, conn, machine, state.acked_chunk, settings, stop)
    return PushResult(
        machine_id=machine,
        jobs=jobs,
        unchanged=unchanged,
        deleted=deleted,
        rows=rows,
        chunks=chunks,
        batches=batches,
        seconds=round(time.monotonic() - started, 3),
        acked_seq=acked,
        pending=vault.pending(acked),
        full=reason,
    )


def _retry(fn: Callable[[], list[JobChange]]) -> list[JobChange]:
    psycopg = connect.driver()
    for attempt in range(RETRIES):
        try:
            return fn()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            if attempt == RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _register(conn: psycopg.Connection[Any], machine: str, settings: Settings) -> _Machine:
    """Make sure the machine has its row; return what the team database knows of it."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO jobvault.machines (machine_id, name, client_version) "
            "VALUES (%s, %s, %s) ON CONFLICT (machine_id) DO UPDATE SET "
            "name = excluded.name, client_version = excluded.client_version "
            "WHERE (machines.name, machines.client_version) "
            "IS DISTINCT FROM (excluded.name, excluded.client_version)",
            (machine, settings.name, settings.client_version),
        )
        row = conn.execute(
            "SELECT acked_seq, acked_chunk, includes, full_since FROM jobvault.machines "
            "WHERE machine_id = %s",
            (machine,),
        ).fetchone()
    assert row is not None
    return _Machine(int(row[0]), int(row[1]), tuple(row[2] or ()), row[3])


def _reset(
    conn: psycopg.Connection[Any], machine: str, settings: Settings, keep_archive: bool
) -> _Machine:
    """Start a full push: everything is sent again, then what is gone locally is deleted."""
    keep = keep_archive and "archive" in settings.include
    with conn.transaction():
        conn.execute("SELECT 1 FROM jobvault.machines WHERE machine_id = %s FOR UPDATE", (machine,))
        if not keep:
            conn.execute("DELETE FROM jobvault.archive_files WHERE machine_id = %s", (machine,))
        row = conn.execute(
            "UPDATE jobvault.machines SET includes = %s, acked_seq = 0, "
            "acked_chunk = CASE WHEN %s THEN acked_chunk ELSE 0 END, full_since = now() "
            "WHERE machine_id = %s RETURNING acked_chunk, full_since",
            (list(settings.include), keep, machine),
        ).fetchone()
    assert row is not None
    return _Machine(0, int(row[0]), tuple(settings.include), row[1])


def _sums(rows: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, str, str], list[Any]]:
    out: dict[tuple[Any, str, str], list[Any]] = {}
    for hour, source, model, *values in rows:
        if hour is None:
            continue
        acc = out.setdefault((hour, source, model), [0, 0, 0, 0, 0, 0, 0.0])
        for i, value in enumerate(values):
            acc[i] += value or 0
    return out


def _apply(
    conn: psycopg.Connection[Any],
    machine: str,
    batch: list[JobChange],
    expected: int,
    touch: bool = False,
    force: bool = False,
) -> list[JobChange]:
    """Replace the batch's jobs and acknowledge its last change: one transaction. Jobs the
    team database already holds as they are (same digest) are only acknowledged (and, in a
    full push, marked as seen: `touch`), unless `force` (--full) sends them all again;
    returns the changes sent."""
    with conn.transaction():
        row = conn.execute(
            "SELECT acked_seq FROM jobvault.machines WHERE machine_id = %s FOR UPDATE",
            (machine,),
        ).fetchone()
        if row is None or int(row[0]) != expected:
            raise _Moved(int(row[0]) if row else 0)
        held = dict(
            conn.execute(
                "SELECT job_id, digest FROM jobvault.jobs WHERE machine_id = %s "
                "AND job_id = ANY(%s)",
                (machine, [c.job_id for c in batch]),
            ).fetchall()
        )
        digests = {c.job_id: c.digest() for c in batch if c.job is not None}
        sent = [
            c
            for c in batch
            if (c.job is None and c.job_id in held)
            or (c.job is not None and (force or held.get(c.job_id) != digests[c.job_id]))
        ]
        if sent:
            _replace(conn, machine, sent, [c.job_id for c in sent], digests)
        sent_ids = {c.job_id for c in sent}
        kept = [c for c in batch if c.job is not None and c.job_id not in sent_ids]
        if touch and kept:
            conn.execute(
                "UPDATE jobvault.jobs SET pushed_at = now(), local_seq = v.seq FROM "
                "unnest(%s::text[], %s::bigint[]) AS v(job_id, seq) "
                "WHERE jobs.machine_id = %s AND jobs.job_id = v.job_id",
                ([c.job_id for c in kept], [c.seq for c in kept], machine),
            )
        conn.execute(
            "UPDATE jobvault.machines SET acked_seq = %s, last_push_at = now() "
            "WHERE machine_id = %s",
            (batch[-1].seq, machine),
        )
    return sent


def _replace(
    conn: psycopg.Connection[Any],
    machine: str,
    batch: list[JobChange],
    ids: list[str],
    digests: dict[str, bytes] | None = None,
) -> None:
    """Inside a transaction: the batch's old rows out, its new rows in, the rollup moved."""
    old = conn.execute(
        "SELECT u.hour, j.source, u.model, SUM(u.messages)::bigint, "
        "SUM(u.input_tokens)::bigint, SUM(u.output_tokens)::bigint, "
        "SUM(u.cache_creation_tokens)::bigint, SUM(u.cache_read_tokens)::bigint, "
        "SUM(u.reasoning_tokens)::bigint, SUM(u.cost_usd) FROM jobvault.job_usage u "
        "JOIN jobvault.jobs j USING (machine_id, job_id) "
        "WHERE u.machine_id = %s AND u.job_id = ANY(%s) AND u.hour IS NOT NULL "
        "GROUP BY 1, 2, 3",
        (machine, ids),
    ).fetchall()
    new = _sums(
        (u[1], c.source, u[2], *u[3:10]) for c in batch if c.job is not None for u in c.usage
    )
    delta = {key: list(values) for key, values in new.items()}
    for hour, source, model, *values in old:
        acc = delta.setdefault((hour, source, model), [0, 0, 0, 0, 0, 0, 0.0])
        for i, value in enumerate(values):
            acc[i] -= value or 0
    _move_rollup(conn, delta)
    conn.execute(
        "DELETE FROM jobvault.jobs WHERE machine_id = %s AND job_id = ANY(%s)", (machine, ids)
    )
    present = [c for c in batch if c.job is not None]
    if not present:
        return
    digests = digests or {}
    _copy(conn, "jobs", ("machine_id", "local_seq", "digest", *JOB_COLUMNS),
          ((machine, c.seq, digests.get(c.job_id), *c.job)
           for c in present if c.job is not None))  # fmt: skip
    _copy(conn, "job_usage", ("machine_id", *USAGE_COLUMNS),
          ((machine, *u) for c in present for u in c.usage))  # fmt: skip
    _copy(conn, "tool_calls", ("machine_id", *TOOL_COLUMNS),
          ((machine, *t) for c in present for t in c.tool_calls))  # fmt: skip
    _copy(conn, "subagents", ("machine_id", *SUBAGENT_COLUMNS),
          ((machine, *s) for c in present for s in c.subagents))  # fmt: skip
    _copy(conn, "files_modified", ("machine_id", *FILE_COLUMNS),
          ((machine, *f) for c in present for f in c.files))  # fmt: skip
    _copy(conn, "usage_keys", ("machine_id", *KEY_COLUMNS),
          ((machine, *k) for c in present for k in c.keys))  # fmt: skip
    _note_shared(conn, machine, [c.job_id for c in present])


def _copy(
    conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...], rows: Iterable[Any]
) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    with conn.cursor() as cur, cur.copy(f"COPY jobvault.{table} ({names}) FROM STDIN") as copy:
        for row in rows:
            if any(v.__class__ is str and "\x00" in v for v in row):
                # PostgreSQL text cannot hold NUL (SQLite's can): a replacement character.
                row = tuple(v.replace("\x00", "\ufffd") if v.__class__ is str else v for v in row)
            copy.write_row(row)


def _move_rollup(
    conn: psycopg.Connection[Any], delta: dict[tuple[Any, str, str], list[Any]]
) -> None:
    """Add `delta` to usage_hourly in one upsert, in key order (so two machines' pushes lock
    shared rows in the same order), and drop the rows it empties."""
    moved = sorted((key, values) for key, values in delta.items() if any(v != 0 for v in values))
    if not moved:
        return
    columns: list[list[Any]] = [[] for _ in range(10)]
    for (hour, source, model), values in moved:
        for i, value in enumerate((hour, source, model, *values)):
            columns[i].append(value)
    emptied = conn.execute(
        """
        INSERT INTO jobvault.usage_hourly AS h (hour, source, model, messages, input_tokens,
            output_tokens, cache_creation_tokens, cache_read_tokens, reasoning_tokens, cost_usd)
        SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::bigint[],
            %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],
            %s::float8[]) ORDER BY 1, 2, 3
        ON CONFLICT (hour, source, model) DO UPDATE SET
            messages = h.messages + excluded.messages,
            input_tokens = h.input_tokens + excluded.input_tokens,
            output_tokens = h.output_tokens + excluded.output_tokens,
            cache_creation_tokens = h.cache_creation_tokens + excluded.cache_creation_tokens,
            cache_read_tokens = h.cache_read_tokens + excluded.cache_read_tokens,
            reasoning_tokens = h.reasoning_tokens + excluded.reasoning_tokens,
            cost_usd = h.cost_usd + excluded.cost_usd
        RETURNING h.hour, h.source, h.model, h.messages = 0 AND h.input_tokens = 0
            AND h.output_tokens = 0 AND h.cache_creation_tokens = 0
            AND h.cache_read_tokens = 0 AND h.reasoning_tokens = 0
        """,
        columns,
    ).fetchall()
    gone = [r[:3] for r in emptied if r[3]]
    if gone:
        conn.execute(
            "DELETE FROM jobvault.usage_hourly WHERE (hour, source, model) IN "
            "(SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[]))",
            ([g[0] for g in gone], [g[1] for g in gone], [g[2] for g in gone]),
        )


def _note_shared(conn: psycopg.Connection[Any], machine: str, ids: list[str]) -> None:
    """Record the batch's messages (and keyless rollouts) another machine also has.

    Under one advisory lock held to commit: two machines pushing the same message at once
    each check after inserting their own copy, one after the other, so the second sees the
    first's.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.SHARED_LOCK,))
    conn.execute(
        "INSERT INTO jobvault.shared_keys (key) SELECT DISTINCT k.key FROM jobvault.usage_keys k "
        "WHERE k.machine_id = %(m)s AND k.job_id = ANY(%(ids)s) AND EXISTS ("
        "SELECT 1 FROM jobvault.usage_keys o WHERE o.key = k.key AND o.machine_id <> %(m)s) "
        "ON CONFLICT DO NOTHING",
        {"m": machine, "ids": ids},
    )
    conn.execute(
        "INSERT INTO jobvault.shared_jobs (job_id) SELECT j.job_id FROM jobvault.jobs j "
        "WHERE j.machine_id = %(m)s AND j.job_id = ANY(%(ids)s) AND j.source <> 'claude' "
        "AND EXISTS (SELECT 1 FROM jobvault.jobs o WHERE o.job_id = j.job_id "
        "AND o.machine_id <> %(m)s) ON CONFLICT DO NOTHING",
        {"m": machine, "ids": ids},
    )


def _finish_full(conn: psycopg.Connection[Any], machine: str, since: datetime, acked: int) -> int:
    """End a full push: delete the jobs it did not send again (gone from this machine)."""
    deleted = 0
    while True:
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT job_id FROM jobvault.jobs WHERE machine_id = %s AND pushed_at < %s "
                "LIMIT 500",
                (machine, since),
            )
        ]
        if not ids:
            break
        _retry(_applying(conn, machine, [JobChange(acked, job_id) for job_id in ids], acked))
        deleted += len(ids)
    with conn.transaction():
        conn.execute(
            "UPDATE jobvault.machines SET full_since = NULL WHERE machine_id = %s", (machine,)
        )
    return deleted


def _applying(
    conn: psycopg.Connection[Any],
    machine: str,
    batch: list[JobChange],
    acked: int,
    touch: bool = False,
    force: bool = False,
) -> Callable[[], list[JobChange]]:
    return lambda: _apply(conn, machine, batch, acked, touch, force)


def _push_archive(
    vault: Vault,
    conn: psycopg.Connection[Any],
    machine: str,
    acked: int,
    settings: Settings,
    stop: threading.Event | None,
) -> int:
    """Send the archived chunks written after the last acknowledged one, with their files."""
    paths = "file_paths" in settings.include
    sent = 0
    while not (stop is not None and stop.is_set()):
        batch = vault.chunks(acked, ARCHIVE_BATCH_BYTES)
        if not batch.chunks:
            break
        with conn.transaction():
            row = conn.execute(
                "SELECT acked_chunk FROM jobvault.machines WHERE machine_id = %s FOR UPDATE",
                (machine,),
            ).fetchone()
            if row is None or int(row[0]) != acked:
                acked = int(row[0]) if row else 0
                continue
            names = ", ".join(ARCHIVE_FILE_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in ARCHIVE_FILE_COLUMNS[1:])
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO jobvault.archive_files (machine_id, {names}) VALUES "
                    f"(%s, {', '.join(['%s'] * len(ARCHIVE_FILE_COLUMNS))}) "
                    f"ON CONFLICT (machine_id, file_id) DO UPDATE SET {updates}",
                    [(machine, *f[:6], f[6] if paths else None, *f[7:]) for f in batch.files],
                )
            _copy(conn, "archive_chunks", ("machine_id", *CHUNK_COLUMNS),
                  ((machine, *c) for c in batch.chunks))  # fmt: skip
            conn.execute(
                "UPDATE jobvault.machines SET acked_chunk = %s, last_push_at = now() "
                "WHERE machine_id = %s",
                (batch.last_id, machine),
            )
        acked = batch.last_id
        sent += len(batch.chunks)
    return sent


def forget(conn: psycopg.Connection[Any], machine: str) -> int:
    """Delete a machine and everything it pushed (its usage leaves the rollup too)."""
    schema.check(conn)
    removed = 0
    while True:
        with conn.transaction():
            row = conn.execute(
                "SELECT acked_seq FROM jobvault.machines WHERE machine_id = %s FOR UPDATE",
                (machine,),
            ).fetchone()
            if row is None:
                return removed
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT job_id FROM jobvault.jobs WHERE machine_id = %s LIMIT 1000",
                    (machine,),
                )
            ]
            if not ids:
                conn.execute("DELETE FROM jobvault.machines WHERE machine_id = %s", (machine,))
                return removed
            _replace(conn, machine, [JobChange(0, job_id) for job_id in ids], ids)
            removed += len(ids)
