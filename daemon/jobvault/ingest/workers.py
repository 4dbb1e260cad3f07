"""Worker processes: cold sessions read, parsed and built on the other cores.

A backfill or an import reads many sessions that are final as soon as they are read. They go,
a unit of whole sessions at a time, to a pool of worker processes, which read the files from
their committed offsets (opening each afresh and checking it is the same inode, still holding
what was archived of it), compress the chunks, parse the lines, feed accumulators of their
own (replaying a session's earlier archive first, through a read-only connection, when it
has one) and build the final records. The one
writer, in the engine's process, only writes what comes back — file rows, chunks, bad lines —
and the records, after settling the duplicates of the whole round; a record that turns out to
lose a message to another session is rebuilt by the writer from the archive.

Nothing here writes to the database, and a worker that fails (or dies) loses nothing: its
files are read again by the engine itself.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import sqlite3
import threading
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zstandard

from jobvault.ingest import memory
from jobvault.ingest.reader import holds, open_source
from jobvault.ingest.reading import read_file
from jobvault.ingest.tracker import open_regular
from jobvault.pickling import quick
from jobvault.records import JobDetail
from jobvault.sources import ADAPTERS, FileInfo, LineContext, previews, spill
from jobvault.sources.base import Accumulator
from jobvault.store.archive import FileRow, iter_archived_objects, iter_chunks
from jobvault.store.increments import Row
from jobvault.store.keys import key_hash
from jobvault.store.writer import Chunk, in_parts, key_rows

MIN_COLD_BYTES = 4 * 1024 * 1024  # less cold work than this is read in the engine itself
UNIT_BYTES = 2 * 1024 * 1024  # bytes of transcripts per unit sent to a worker
UNIT_FILES = 64
MAX_SESSION_BYTES = 64 * 1024 * 1024  # larger sessions are read in the engine (spilled there)
READ_BUDGET = 8 * 1024 * 1024


@quick
@dataclass(frozen=True, slots=True)
class FileTask:
    row: FileRow  # as committed (or as created, for a new file)
    info: FileInfo
    new: bool  # created in this round (not in the database yet)
    # The last archived bytes before the row's offset, as the engine checked them: the file
    # must still hold them when the worker opens it (it may have been cut and grown back).
    tail: bytes = b""


@quick
@dataclass(frozen=True, slots=True)
class UnitTask:
    files: tuple[FileTask, ...]
    replay: frozenset[str]  # sessions with archived bytes before this unit


@dataclass(slots=True)
class FileResult:
    task: FileTask
    row: FileRow | None  # None: not read here (gone, replaced, unreadable): the engine will
    chunks: list[Chunk] = field(default_factory=list)
    bad: list[tuple[int, int, str]] = field(default_factory=list)  # offset, length, reason
    tail: bytes | None = None
    error: str | None = None


@dataclass(slots=True)
class SessionResult:
    key: str
    source: str
    detail: JobDetail | None
    candidates: list[tuple[str, Row]]  # (`key_rows`)
    fault: tuple[str, str] | None = None  # (reason, detail): quarantine it
    # The messages the record was built without: better copies in another session of the
    # unit (`_unit_losses`). The writer rebuilds it only when the database knows otherwise.
    excluded: frozenset[str] = frozenset()


@dataclass(slots=True)
class UnitResult:
    files: list[FileResult]
    sessions: list[SessionResult]
    lines: int = 0
    seconds: float = 0.0


# -- in the worker process -------------------------------------------------------------------


@dataclass
class _Setup:
    db: str
    max_line: int
    level: int
    follow_symlinks: bool
    machine_id: str | None
    # The engine's process: a worker ends when it does (a kill -9 of the daemon or of an
    # import, the OOM killer), instead of living on with the fork server.
    parent: int = field(default_factory=os.getpid)
    # The engine's memory bounds (tests lower them): a worker spills as the engine would.
    spill_after: int = field(default_factory=lambda: spill.SPILL_AFTER)
    flush_every: int = field(default_factory=lambda: spill.FLUSH_EVERY)
    preview_budget: int = field(default_factory=lambda: previews.MEMORY_BUDGET)


_setup: _Setup | None = None
_conn: sqlite3.Connection | None = None
_compressor: zstandard.ZstdCompressor | None = None


def _end_with(parent: int) -> None:
    """Exit as soon as the engine's process is gone (a thread of each worker).

    Nothing else would tell: a worker holds the fork server's end of the engine's pipes, so
    neither notices the engine dying, and the pool's processes lived on after a kill -9.
    Nothing is lost by leaving mid-unit: the engine commits only what came back.
    """
    try:
        fd = os.pidfd_open(parent)  # Linux: wait without polling
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        select.select([fd], [], [])
    else:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # (another user's process has the number now)
                break
    os._exit(0)


def _init(setup: _Setup) -> None:
    global _setup, _compressor
    threading.Thread(target=_end_with, args=(setup.parent,), daemon=True).start()
    # As in the engine's process: without it the read blocks, long lines and chunks of a
    # large session fragment the worker's heap (a 336 MB rollout held 267 MB, 70 MB now).
    memory.limit_fragmentation()
    _setup = setup
    _compressor = zstandard.ZstdCompressor(level=setup.level)
    db = Path(setup.db)
    spill.set_spill_dir(db.parent, db.name)
    spill.SPILL_AFTER, spill.FLUSH_EVERY = setup.spill_after, setup.flush_every
    previews.MEMORY_BUDGET = setup.preview_budget


def _archive() -> sqlite3.Connection:
    global _conn
    if _conn is None:
        assert _setup is not None
        _conn = sqlite3.connect(f"file:{_setup.db}?mode=ro", uri=True, isolation_level=None)
        _conn.execute("PRAGMA busy_timeout = 10000")
        _conn.execute("PRAGMA query_only = ON")
    return _conn


class _Sink:
    """A file's reading in a worker: chunks compressed here, lines to the unit's sessions."""

    def __init__(self, result: FileResult, unit: _Unit, info: FileInfo, source: str) -> None:
        self.result, self.unit, self.info, self.source = result, unit, info, source
        self._ctx: LineContext | None = None  # (one per file, not one per line)

    def chunk(self, chunk: Chunk) -> None:
        assert _compressor is not None
        packed = _compressor.compress(chunk.data)
        if len(packed) < len(chunk.data):
            chunk.packed, chunk.codec = packed, "zstd"
        else:
            chunk.packed, chunk.codec = chunk.data, "raw"
        chunk.length = len(chunk.data)
        chunk.data = b""  # only the compressed bytes travel back
        self.result.chunks.append(chunk)

    def bad(self, row: FileRow, offset: int, length: int, reason: str, tail: bool) -> None:
        self.result.bad.append((offset, length, reason))

    def line(self, row: FileRow, offset: int, obj: dict[str, Any]) -> str | None:
        adapter = ADAPTERS[self.source]
        if row.job_key is None:
            row.job_key = adapter.job_key_from_line(obj)
            if row.job_key is None:
                return None
        acc = self.unit.session(row.job_key, self.source)
        if acc is None:
            return None
        ctx = self._ctx
        if ctx is None or ctx.file_id != row.id or ctx.path != row.path:
            info = self.info
            ctx = self._ctx = LineContext(
                row.id, info.role, info.agent_id, info.layout, info.project, row.path
            )
        try:
            return acc.feed(obj, ctx, offset)
        except Exception as exc:
            self.unit.fail(row.job_key, "the adapter failed on a line", exc)
            return None


class _Unit:
    def __init__(self, task: UnitTask) -> None:
        self.task = task
        self.accs: dict[str, Accumulator | None] = {}
        self.sources: dict[str, str] = {}
        self.faults: dict[str, tuple[str, str]] = {}

    def session(self, key: str, source: str) -> Accumulator | None:
        if key in self.accs:
            return self.accs[key]
        self.sources[key] = source
        acc: Accumulator | None = ADAPTERS[source].new_job(key)
        if key in self.task.replay:
            try:
                acc = self._replay(key, source, acc)
            except Exception as exc:
                self.fail(key, "the adapter failed reading the archive", exc)
                acc = None
        self.accs[key] = acc
        return acc

    def _replay(self, key: str, source: str, acc: Accumulator | None) -> Accumulator | None:
        """Feed the session's archived lines (its files' committed bytes) first."""
        assert _setup is not None and acc is not None
        conn = _archive()
        adapter = ADAPTERS[source]
        rows = conn.execute(
            "SELECT id, path FROM files WHERE job_key = ? AND state IN ('active', 'deleted') "
            "AND offset > 0 ORDER BY id",
            (key,),
        ).fetchall()
        for file_id, path in rows:
            info = adapter.classify(Path(path))
            if info is None:
                continue
            ctx = LineContext(file_id, info.role, info.agent_id, info.layout, info.project, path)
            for offset, obj in iter_archived_objects(iter_chunks(conn, file_id), _setup.max_line):
                acc.feed(obj, ctx, offset)
        return acc

    def fail(self, key: str, reason: str, exc: BaseException) -> None:
        self.accs[key] = None
        detail = "".join(traceback.format_exception_only(exc)).strip()[:2000]
        self.faults[key] = (reason, detail)


def run_unit(task: UnitTask) -> UnitResult:
    """Read, parse and build one unit of cold sessions (in a worker process)."""
    assert _setup is not None
    started = time.monotonic()
    unit = _Unit(task)
    files: list[FileResult] = []
    lines = 0
    for ft in task.files:
        result = FileResult(ft, None)
        files.append(result)
        row = replace(ft.row)
        try:
            fd, st = open_regular(row.path, _setup.follow_symlinks)
        except OSError as exc:
            result.error = f"cannot open: {exc.strerror}"
            continue
        try:
            if (st.st_dev, st.st_ino) != (row.dev, row.ino):
                result.error = "replaced meanwhile"
                continue
            reader = open_source(fd, row.codec)
            try:
                if not holds(reader, row.fp_len, row.fp_hash, row.offset, ft.tail):
                    # Cut (and perhaps grown back past the offset) or rewritten since the
                    # engine looked: reading on from the offset would archive another
                    # content's bytes as this one's. The engine looks again and decides.
                    result.error = "changed since it was looked at"
                    continue
                sink = _Sink(result, unit, ft.info, row.source)
                more, tail = True, ft.tail or None
                while more:  # a budget at a time: memory holds one batch, not the file
                    out = read_file(
                        row, reader, fd, final=True, budget=READ_BUDGET,
                        max_line=_setup.max_line, sink=sink, pack=lambda _chunk: None,
                        old_tail=tail,
                    )  # fmt: skip
                    lines += out.lines
                    tail = out.tail if out.tail is not None else tail
                    more = out.more and out.read > 0
            finally:
                reader.close()
            result.row, result.tail = row, tail
        except Exception as exc:  # EIO, a corrupt zstd frame, ...: the engine reads it
            result.error = "".join(traceback.format_exception_only(exc)).strip()[:500]
            result.chunks.clear()
            result.bad.clear()
            result.row = None
        finally:
            os.close(fd)
    sessions = []
    candidates: dict[str, list[tuple[str, Row]]] = {}
    for key, acc in unit.accs.items():
        if acc is not None and key not in unit.faults:
            try:
                candidates[key] = list(key_rows(acc.usage_candidates()))
            except Exception as exc:
                unit.fail(key, "the adapter failed listing its messages", exc)
    losses = _unit_losses(candidates)
    for key, acc in unit.accs.items():
        source = unit.sources[key]
        fault = unit.faults.get(key)
        if acc is None or fault is not None:
            sessions.append(SessionResult(key, source, None, [], fault))
            continue
        excluded = losses.get(key, frozenset())
        try:
            detail = acc.build(finalized=True, machine_id=_setup.machine_id, excluded_keys=excluded)
            # Tool calls may be a lazy view of a scratch file: materialize them to travel.
            detail = replace(detail, tool_calls=list(detail.tool_calls))
        except Exception as exc:
            reason = "the adapter failed building the record"
            sessions.append(SessionResult(key, source, None, [], (reason, repr(exc)[:2000])))
            continue
        sessions.append(SessionResult(key, source, detail, candidates[key], None, excluded))
    unit.accs.clear()
    return UnitResult(files, sessions, lines, time.monotonic() - started)


def _unit_losses(candidates: dict[str, list[tuple[str, Row]]]) -> dict[str, frozenset[str]]:
    """For each session of a unit, the messages another session holds a better copy of: the
    rule of `Store.lost_keys` (not a sidechain, more tokens, then the smaller path and
    offset), among the unit's sessions and the copies committed so far (a resumed session
    read after the one it copies). The writer checks it against the database when it
    writes the record, and rebuilds the record only if a copy it could not see here (in a
    round not committed yet) changes it."""
    best: dict[str, tuple[tuple[Any, ...], str]] = {}  # key -> (rank, session)
    shared: set[str] = set()

    def offer(session: str, key: str, rank: tuple[Any, ...]) -> None:
        held = best.get(key)
        if held is None:
            best[key] = (rank, session)
            return
        shared.add(key)
        if rank < held[0]:
            best[key] = (rank, session)

    for session, key, rank in _committed_copies(candidates):
        offer(session, key, rank)
    shared.clear()  # (shared among the unit's sessions or with a committed copy: below)
    for session, rows in candidates.items():
        for key, row in rows:
            offer(session, key, _rank(row))
    lost: dict[str, set[str]] = {}
    for session, rows in candidates.items():
        for key, row in rows:
            if key in shared:
                rank, winner = best[key]
                if winner != session and rank < _rank(row):
                    lost.setdefault(session, set()).add(key)
    return {session: frozenset(keys) for session, keys in lost.items()}


def _rank(row: Row) -> tuple[Any, ...]:
    """A copy's place in `Store.lost_keys`'s order (the smallest counts), from its row."""
    return (row[0], -row[1], row[2], row[3])  # (sidechain, -total, path, offset)


def _committed_copies(
    candidates: dict[str, list[tuple[str, Row]]],
) -> list[tuple[str, str, tuple[Any, ...]]]:
    """The committed copies of the unit's messages that other sessions hold: (session, key,
    rank); none if the database cannot be read."""
    keys = sorted({key for rows in candidates.values() for key, _row in rows})
    out = []
    try:
        conn = _archive()
        for part, marks in in_parts(keys):
            for session, key, *row in conn.execute(
                f"SELECT session_id, key, sidechain, total, path, offset FROM usage_keys "
                f"WHERE key_hash IN ({marks}) AND key IN ({marks})",
                (*map(key_hash, part), *part),
            ):
                if session not in candidates:  # (not its own copies archived before)
                    out.append((session, key, _rank(tuple(row))))
    except sqlite3.Error:  # (no database yet, or busy): the writer settles them all
        return []
    return out


# -- in the engine ---------------------------------------------------------------------------


class WorkerPool:
    """A few worker processes (forkserver: safe beside the daemon's threads)."""

    def __init__(
        self,
        workers: int,
        db: Path,
        *,
        max_line: int,
        level: int,
        follow_symlinks: bool,
        machine_id: str | None,
    ) -> None:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # The fork server imports this module once (and never the program's __main__,
            # which it would run again); each worker is a fork of it.
            context.set_forkserver_preload(["jobvault.ingest.workers"])
        setup = _Setup(str(db), max_line, level, follow_symlinks, machine_id)
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                         initargs=(setup,))  # fmt: skip

    def submit(self, task: UnitTask) -> Future[UnitResult]:
        return self._pool.submit(run_unit, task)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abandon(self) -> None:
        """Let a broken pool go (one of its workers died): end its processes, and wait
        until the executor has torn itself down.

        The executor terminates the processes it knows of when it finds one dead, but a
        replacement it started meanwhile (a `submit` just before) escapes that and blocks
        on the result pipe nobody reads any more; the executor's thread then waits for it
        forever, and so does the interpreter's exit. So every process it has is killed
        here (`_processes`, CPython's own list: there is no public one). The wait matters
        too: a new pool started while the old one's thread still closes its pipes had a
        descriptor closed under it (EBADF when it started a process).
        """
        for process in list(getattr(self._pool, "_processes", {}).values()):
            with contextlib.suppress(OSError, ValueError):
                process.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)  # (every process is dead)


def units(groups: Iterable[list[FileTask]], replay: set[str]) -> list[UnitTask]:
    """Pack sessions' files (each group is one session) into units of about UNIT_BYTES."""
    out: list[UnitTask] = []
    files: list[FileTask] = []
    size = 0
    keys: set[str] = set()
    for group in groups:
        files.extend(group)
        size += sum(max(ft.row.size - ft.row.offset, 0) for ft in group)
        keys.update(ft.row.job_key for ft in group if ft.row.job_key)
        if size >= UNIT_BYTES or len(files) >= UNIT_FILES:
            out.append(UnitTask(tuple(files), frozenset(keys & replay)))
            files, size, keys = [], 0, set()
    if files:
        out.append(UnitTask(tuple(files), frozenset(keys & replay)))
    return out
