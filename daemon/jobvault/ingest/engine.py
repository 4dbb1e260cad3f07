"""The ingest engine: the tracker's actions → the reader's lines → the session book → the writer.

One one-way pipeline of parts with typed seams: the `FileTracker` decides what each path holds
(actions, no I/O on the database), the reader turns a file's new bytes into segments of whole
lines, the `SessionBook` feeds them to the sessions' accumulators and builds records, and the
one `Store` writes **one batch per round** — new file rows, offsets, file states, chunks, bad
lines, faults, then the settled duplicates and the records that are due — in one transaction.
Only after that transaction commits does the engine apply the round to the tracker (offsets,
new and moved files, retired and deleted ones); if it fails nothing moved: the tracker still
holds the committed state and the sessions the round touched are rebuilt from the archive on
their next use.

Synchronous and single-threaded by design: `jobvault import` drives it in a loop and the
daemon from one worker thread, so there is exactly one writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog

from jobvault.config import Config
from jobvault.errors import StoreError
from jobvault.ingest.book import MAX_WRITE_INTERVAL, Fault, Job, SessionBook
from jobvault.ingest.reader import Source, fingerprint
from jobvault.ingest.reading import read_file
from jobvault.ingest.tracker import (
    Action,
    Continue,
    Create,
    FileTracker,
    Read,
    Retire,
    Skip,
    Tracked,
    Vanish,
)
from jobvault.records import JobDetail, JobRecord
from jobvault.sources import Adapter, LineContext, spill
from jobvault.store.archive import FileRow
from jobvault.store.writer import BadLine, Batch, Chunk, FaultRow, Store

log = structlog.get_logger("jobvault.engine")

IMPORT_GROUP_BYTES = 16 * 1024 * 1024  # transcripts read per transaction by `import`
IMPORT_GROUP_FILES = 256

__all__ = ["MAX_WRITE_INTERVAL", "Engine", "Job", "Stats", "Tracked"]


def file_size(path: str) -> int:
    """A file's size, 0 when it cannot be stat'ed (it is looked at again when read)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _peek_job_key(path: str, adapter: Adapter, size: int = 64 * 1024) -> str | None:
    """The session a file names in its first lines (None if they do not say)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
    except OSError:
        return None
    for line in head.split(b"\n")[:-1][:20]:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            key = adapter.job_key_from_line(obj)
            if key is not None:
                return key
    return None


@dataclass(slots=True)
class Stats:
    files_tracked: int = 0
    bytes_archived: int = 0
    lines_archived: int = 0
    bad_lines: int = 0
    jobs_written: int = 0
    lost_bytes: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    fault: str | None = None  # the database refuses writes right now (cleared on success)
    faults: int = 0  # files and sessions quarantined since start


WorkKind = Literal["read", "create", "continue", "retire", "vanish"]


@dataclass(slots=True)
class _Work:
    """One file's part in a round: the row as it will be once the round commits."""

    kind: WorkKind
    tracked: Tracked
    row: FileRow  # a copy; applied to `tracked` after the commit
    source: Source | None
    final: bool = False  # archive the unterminated tail too (the session is finalized)
    force: bool = False  # read even when stopping (its bytes exist nowhere else)
    fd: int | None = None  # a descriptor the action carried (create, continue)
    action: Action | None = None
    pending: int = 0
    tail: bytes | None = None
    more: bool = True  # bytes remain after this round's budget
    read_any: bool = False
    # A deleted file's unterminated tail is archived at once (its bytes exist nowhere else)
    # but not yet reported: the file may reappear under another name and finish the line.
    defer_tail: bool = False


@dataclass(slots=True)
class _Round:
    batch: Batch = field(default_factory=Batch)
    work: list[_Work] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # sessions that got lines
    invalidated: set[str] = field(default_factory=set)
    finalize: set[str] = field(default_factory=set)  # sessions finalized in this round
    force_write: set[str] = field(default_factory=set)
    skips: list[Skip] = field(default_factory=list)
    deferred: list[BadLine] = field(default_factory=list)  # tails of deleted files
    read: int = 0


class _RoundSink:
    """A file's reading in the engine: chunks and bad lines into the round, lines into the
    session book (binding the file to the session its lines name, when its path did not)."""

    def __init__(self, engine: Engine, rnd: _Round, w: _Work) -> None:
        self.engine, self.rnd, self.w = engine, rnd, w
        row, info = w.row, w.tracked.info
        self.ctx = LineContext(row.id, info.role, info.agent_id, info.layout, info.project,
                               row.path)  # fmt: skip
        self.job: Job | None = None  # made at the first line (an empty file makes no job)
        self.touched = False

    def chunk(self, chunk: Chunk) -> None:
        self.rnd.batch.chunks.append(chunk)

    def bad(self, row: FileRow, offset: int, length: int, reason: str, tail: bool) -> None:
        if tail and self.w.defer_tail:  # a deleted file's tail: judged when it is final
            self.rnd.deferred.append(BadLine(row.id, offset, length, reason))
        else:
            self.engine._bad(self.rnd, row, offset, length, reason)

    def line(self, row: FileRow, offset: int, obj: dict[str, Any]) -> str | None:
        book = self.engine.book
        job = self.job
        if job is None:
            adapter = self.w.tracked.adapter
            if row.job_key is not None:
                job = self.job = book.job(row.job_key, adapter)
            else:
                key = adapter.job_key_from_line(obj)
                if key is None:
                    return None
                row.job_key = key
                job = self.job = book.job(key, adapter)
                # Lines of this file archived before its session was known: rebuild.
                if self.w.tracked.row.offset > 0 or offset > self.w.tracked.row.offset:
                    book.invalidate(key, adapter)
                    self.rnd.invalidated.add(key)
        if not self.touched:
            book.touch(job)
            self.rnd.touched.add(job.key)
            self.touched = True
        return book.feed(job, obj, self.ctx, offset) if job.acc is not None else None


class Engine:
    """Tails files into the archive and keeps job records current."""

    def __init__(
        self, config: Config, store: Store, *, job_write_interval: float = MAX_WRITE_INTERVAL
    ) -> None:
        self.config = config
        self.store = store
        # Very long sessions keep their per-message state in scratch files next to the
        # database; those of a killed run are removed (this process holds the writer lock).
        if store.path:
            db = Path(store.path)
            spill.set_spill_dir(db.parent, db.name)
            spill.remove_stale(db.parent, db.name)
        else:
            spill.set_spill_dir(None)
        self.tracker = FileTracker(
            store.archived_tail,
            max_open=self._max_open(config),
            follow_symlinks=config.follow_symlinks,
        )
        self.tracker.load(store.load_files())
        self.book = SessionBook(store, config.max_line_bytes, job_write_interval)
        self.book.quarantined = store.quarantined_sessions()
        self.book.archived = store.archived_job_keys()
        self.sessions_read: set[str] = set()  # sessions that got lines (for `import`)
        self._next_id = store.max_file_id()
        self.stats = Stats(files_tracked=len(self.tracker.by_path))
        # Set (from any thread) to stop reading after the batch in progress: a shutdown
        # commits what was read and leaves the rest in the files for the next start.
        self.stopping = threading.Event()
        # Called on the worker thread after a record is written: (record, finalized).
        self.on_record: Callable[[JobRecord, bool], None] | None = None
        # `ingest_once` finalizes session by session itself; the daemon's idle check would
        # otherwise close a session whose flat subagent file is still to be read.
        self._importing = False
        self._faulty_files: dict[str, tuple[int, int]] = {}  # path -> (size, mtime) at fault
        # Unterminated tails of deleted files, reported when their session is finalized for
        # good (idle, shutdown), unless the file reappears and finishes the line first.
        self._deferred: dict[int, tuple[str | None, BadLine]] = {}

    @staticmethod
    def _max_open(config: Config) -> int:
        """How many transcript descriptors to hold: the config, within the process's limit,
        leaving room for SQLite, the socket server and the watcher."""
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = soft - 96 if soft != resource.RLIM_INFINITY else 1 << 20
        return max(8, min(config.max_open_files, room))

    # -- what the tracker holds (tests and the service look at these) -----------------------

    @property
    def by_path(self) -> dict[str, Tracked]:
        return self.tracker.by_path

    @property
    def by_id(self) -> dict[int, Tracked]:
        return self.tracker.by_id

    @property
    def jobs(self) -> dict[str, Job]:
        return self.book.jobs

    def scan(self, roots: Iterable[Path]) -> list[str]:
        return self.tracker.scan(roots)

    # -- entry points --------------------------------------------------------------------

    def poll(
        self,
        paths: Iterable[str],
        roots: Iterable[Path],
        *,
        final: bool = False,
        finalize: Iterable[str] = (),
    ) -> int:
        """Look at the given paths and read each to its end; return the bytes read.

        New files each hold a descriptor until their round commits, so the paths are taken a
        slice at a time, within the process's descriptors (10,000 new files under a limit
        of 256 are many rounds, never a file skipped for want of a descriptor).
        """
        roots = list(roots)
        present: list[str] = []
        missing: list[str] = []
        for path in paths:
            (present if os.path.lexists(path) else missing).append(path)
        budget = max(4, self.tracker.max_open // 4)
        total = 0
        actions: list[Action] = []
        held = 0
        # Paths that exist first, missing ones last: a rename's new name must be seen
        # before its old name is taken for a deletion.
        for path in present + missing:
            found = self._look(path)
            actions.extend(found)
            held += sum(1 for a in found if isinstance(a, Create | Continue))
            if held >= budget:
                total += self._run(actions, roots, final=final)
                actions, held = [], 0
        return total + self._run(actions, roots, final=final, finalize=finalize)

    def poll_all(self, roots: Iterable[Path]) -> int:
        roots = list(roots)
        return self.poll(self.scan(roots), roots)

    def rescan(self, roots: Iterable[Path]) -> int:
        """Walk the roots and re-check every tracked file (finds deletions and missed events)."""
        roots = list(roots)
        paths = self.scan(roots)
        seen = set(paths)
        prefixes = tuple(os.path.abspath(str(r)).rstrip(os.sep) + os.sep for r in roots)
        files = {os.path.abspath(str(r)) for r in roots}
        # Tracked files under the roots that the walk did not find: deleted or moved away.
        # (Files under a root removed from the configuration are left alone.)
        paths.extend(
            p
            for p in [*self.tracker.by_path, *self.tracker.limbo]
            if p not in seen and (p.startswith(prefixes) or p in files)
        )
        read = self.poll(paths, roots)
        try:
            # Keep the WAL bounded even when readers come and go (never waits for them).
            self.store.checkpoint()
        except sqlite3.Error as exc:
            log.warning("checkpoint_failed", error=str(exc))
        return read

    def _look(self, path: str) -> list[Action]:
        fault = self._faulty_files.get(path)
        if fault is not None:
            try:
                st = os.stat(path)
            except OSError:
                return []
            if (st.st_size, st.st_mtime_ns) == fault:
                return []  # quarantined until it changes
            del self._faulty_files[path]
        try:
            return self.tracker.look(path)
        except Exception as exc:  # an unexpected error about one file: contain it
            self._file_fault(path, "identifying the file failed", exc)
            return []

    # -- a round ---------------------------------------------------------------------------

    def _run(
        self,
        actions: list[Action],
        roots: list[Path],
        *,
        final: bool = False,
        finalize: Iterable[str] = (),
        force: bool = False,
    ) -> int:
        """Apply actions and read what they call for, one committed round at a time.

        A session in `finalize` is finalized in the round that reads the last of its bytes
        (a large file takes several rounds: its record is built once, at the end).
        """
        rnd = _Round(finalize=set(finalize))
        self._plan(rnd, actions, roots, final, force)
        total = 0
        while True:
            self._read_round(rnd)
            stopping = self.stopping.is_set()
            rest = [
                w for w in rnd.work
                if w.more and w.kind in ("read", "create", "continue") and w.source is not None
                and (w.force or not stopping)
            ]  # fmt: skip
            later = {w.row.job_key for w in rest if w.row.job_key} & rnd.finalize
            rnd.finalize -= later
            self._commit(rnd)
            total += rnd.read
            if not rest:
                break
            nxt = _Round(finalize=later)
            for w in rest:
                t = w.tracked
                nxt.work.append(_Work("read", t, replace(t.row), t.source, final=w.final,
                                      force=w.force))  # fmt: skip
            rnd = nxt
        return total

    def _plan(
        self, rnd: _Round, actions: list[Action], roots: list[Path], final: bool, force: bool
    ) -> None:
        """Turn the tracker's actions into the round's work (no state changes yet)."""
        planned: set[int] = set()
        for action in actions:
            if isinstance(action, Skip):
                rnd.skips.append(action)
            elif isinstance(action, Read):
                t = action.tracked
                if id(t) in planned or (t.row.state != "active" and t.source is None):
                    continue
                planned.add(id(t))
                src = self.tracker.source(t) if t.row.state == "active" else t.source
                if src is not None:
                    # A deleted file's bytes exist nowhere else: read even when stopping.
                    rnd.work.append(_Work("read", t, replace(t.row), src, final=final,
                                          force=force or t.row.state != "active"))  # fmt: skip
            elif isinstance(action, Create):
                rnd.work.append(self._create_work(action, roots, final, force or action.gone))
            elif isinstance(action, Continue):
                t = action.tracked
                planned.add(id(t))
                row = replace(t.row, path=action.path, dev=action.st.st_dev,
                              ino=action.st.st_ino, state="active")  # fmt: skip
                row.codec = "zstd" if action.path.endswith(".zst") else "plain"
                if row.codec == "zstd":
                    row.disk_size = 0
                else:
                    row.size = max(row.size, action.st.st_size)
                rnd.work.append(_Work("continue", t, row, action.source, final=final,
                                      force=True, fd=action.fd, action=action))  # fmt: skip
                log.info("file_continues", file=action.path, old=t.row.path, file_id=t.row.id)
            elif isinstance(action, Retire):
                t = action.tracked
                planned.add(id(t))
                log.info("file_" + action.reason, file=t.row.path, file_id=t.row.id,
                         offset=t.row.offset)  # fmt: skip
                src = t.source if action.drain else None
                rnd.work.append(_Work("retire", t, replace(t.row, state=action.reason), src,
                                      final=True, force=True, action=action))  # fmt: skip
                if t.row.job_key is not None:
                    # Its record follows the current generation: rebuilt from the archive.
                    rnd.invalidated.add(t.row.job_key)
                    self.book.invalidate(t.row.job_key, t.adapter)
            elif isinstance(action, Vanish):
                t = action.tracked
                if id(t) in planned:
                    continue
                planned.add(id(t))
                rnd.work.append(_Work("vanish", t, replace(t.row, state="deleted"), t.source,
                                      force=True, action=action))  # fmt: skip

    def _create_work(self, action: Create, roots: list[Path], final: bool, force: bool) -> _Work:
        root, rel = self.tracker.root_of(action.path, roots)
        self._next_id += 1
        codec = "zstd" if action.path.endswith(".zst") else "plain"
        row = FileRow(
            id=self._next_id, source=action.adapter.name, path=action.path, root=root,
            rel_path=rel, generation=self.store.next_generation(root, rel),
            dev=action.st.st_dev, ino=action.st.st_ino, fp_len=0, fp_hash=None, offset=0,
            size=action.st.st_size if codec == "plain" else 0,
            mtime_ns=action.st.st_mtime_ns, in_long_line=False, partial_tail=False,
            state="active", job_key=action.info.job_key, role=action.info.role,
            agent_id=action.info.agent_id, line_count=0, bad_lines=0, lost_bytes=0,
            codec=codec, disk_size=0,
        )  # fmt: skip
        tracked = Tracked(row, action.info, action.adapter, last_activity=time.monotonic())
        return _Work("create", tracked, replace(row), action.source, final=final, force=force,
                     fd=action.fd, action=action)  # fmt: skip

    def _read_round(self, rnd: _Round) -> None:
        """Read the round's files within the batch budget; parse and feed their lines."""
        budget = self.config.batch_max_bytes
        for w in rnd.work:
            if w.kind == "create":
                rnd.batch.new_files.append(w.row)
                if isinstance(w.action, Create) and w.action.gone:
                    w.kind = "vanish"  # seen while the database refused writes, deleted since
            if w.kind in ("retire", "vanish"):
                self._read_vanishing(rnd, w)
                continue
            if w.source is None:
                w.more = False
                continue
            if budget <= 0 or (self.stopping.is_set() and not w.force):
                continue
            try:
                got = self._read(rnd, w, budget)
            except OSError as exc:  # EIO, a file gone in a way we did not foresee
                w.more = False
                log.warning("read_failed", file=w.row.path, error=str(exc))
                self._note_error(f"reading {w.row.path}: {exc}")
                continue
            except Exception as exc:
                w.more = False
                self._file_fault(w.row.path, "reading the file failed", exc)
                continue
            budget -= got
            rnd.read += got

    def _read_vanishing(self, rnd: _Round, w: _Work) -> None:
        """A retired or deleted file: drain what its descriptor still holds."""
        row = w.row
        if w.source is not None and self._still_ours(w):
            w.final = True
            w.defer_tail = w.kind == "vanish"  # a deletion may be a move: do not judge yet
            try:
                while True:
                    got = self._read(rnd, w, self.config.batch_max_bytes)
                    rnd.read += got
                    if not w.more or not got:
                        break
            except Exception as exc:
                self._file_fault(row.path, "draining the file failed", exc)
        elif w.kind == "vanish" and row.offset < row.size:
            row.lost_bytes = row.size - row.offset
            self.stats.lost_bytes += row.lost_bytes
            log.warning("file_lost_bytes", file=row.path, file_id=row.id,
                        lost_bytes=row.lost_bytes)  # fmt: skip
        w.more = False
        rnd.batch.files[row.id] = row
        if row.job_key is not None and w.kind == "vanish" and row.role == "main":
            rnd.finalize.add(row.job_key)
        if w.kind == "vanish":
            log.info("file_deleted", file=row.path, file_id=row.id, offset=row.offset)

    def _still_ours(self, w: _Work) -> bool:
        """Does the descriptor still hold what we archived (not rewritten in place)?"""
        assert w.source is not None
        t = w.tracked
        if t.row.fp_len == 0:
            return True
        try:
            if fingerprint(w.source, t.row.fp_len) != t.row.fp_hash:
                return False
            tail = self.tracker.archived_tail(t)
            return not tail or w.source.pread(len(tail), t.row.offset - len(tail)) == tail
        except OSError:
            return False

    def _read(self, rnd: _Round, w: _Work, budget: int) -> int:
        """Read one file from its offset (up to `budget` bytes); return the bytes read."""
        row = w.row
        assert w.source is not None
        if row.partial_tail:
            # The previous read archived an unterminated tail; new bytes continue that line,
            # so the accumulator must re-read the joined line from the archive and the
            # tail's report (if any) was premature.
            rnd.batch.continued_tails.append(row.id)
            self._deferred.pop(row.id, None)
            if row.job_key is not None:
                rnd.invalidated.add(row.job_key)
                self.book.invalidate(row.job_key, w.tracked.adapter)
        fd = w.fd if w.fd is not None else w.tracked.fd
        out = read_file(
            row, w.source, fd, final=w.final, budget=budget,
            max_line=self.config.max_line_bytes, sink=_RoundSink(self, rnd, w),
            pack=self.store.pack, old_tail=w.tail if w.tail is not None else w.tracked.tail,
        )  # fmt: skip
        w.more, w.pending = out.more, out.pending
        rnd.batch.files[row.id] = row
        self.stats.lines_archived += out.lines
        if not out.read:
            return 0
        w.read_any = True
        if out.tail is not None:
            w.tail = out.tail
        if row.job_key:
            rnd.touched.add(row.job_key)
            job = self.book.jobs.get(row.job_key)
            if job is not None:  # idleness follows the files' own clock (a backfill is old news)
                job.modified = max(job.modified, min(row.mtime_ns / 1e9, time.time()))
        return out.read

    def _bad(self, rnd: _Round, row: FileRow, offset: int, length: int, reason: str) -> None:
        row.bad_lines += 1
        self.stats.bad_lines += 1
        rnd.batch.bad_lines.append(BadLine(row.id, offset, length, reason))
        log.warning("bad_line", file=row.path, file_id=row.id, session=row.job_key,
                    offset=offset, length=length, reason=reason)  # fmt: skip

    # -- committing ------------------------------------------------------------------------

    def _commit(self, rnd: _Round) -> None:
        """Write the round (archive, duplicates, due records) in one transaction, then apply
        it to the tracker; on failure nothing moved."""
        for key in sorted(rnd.finalize):
            job = self.book.jobs.get(key)
            if job is None:
                if key in self.book.quarantined or not (
                    key in self.book.archived or self.store.job_has_record_or_archive(key)
                ):
                    continue  # nothing of it was ever read
                job = self.book.invalidate(key)
            job.finalized = True
            job.dirty = True
        now = time.monotonic()
        keys = rnd.touched | rnd.finalize | rnd.invalidated | rnd.force_write
        due = self.book.due(keys, now, force=bool(rnd.force_write))
        rnd.batch.stale_jobs |= rnd.touched
        for fault in self.book.take_faults():
            rnd.batch.faults.append(FaultRow(fault.kind, fault.key, fault.reason, fault.detail))
        written: list[tuple[JobDetail, bool]] = []
        if rnd.batch.empty() and not due:
            self._apply(rnd)
            self._note_skips(rnd.skips)
            return
        try:
            with self.store.transaction():
                self.store.write_batch(rnd.batch)
                written = self._write_records(due, rnd)
        except StoreError as exc:
            self._rollback(rnd)
            self.record_fault(str(exc))
            log.error("batch_failed", error=str(exc), files=len(rnd.work))
            raise
        self._apply(rnd)
        self.book.archived |= rnd.touched
        self.sessions_read |= rnd.touched
        for bad in rnd.deferred:
            self._deferred[bad.file_id] = (self._job_of_file(bad.file_id), bad)
        self.stats.bytes_archived += rnd.batch.raw_bytes
        self.stats.fault = None
        self.stats.jobs_written += len(written)
        for detail, finalized in written:
            job = self.book.jobs.get(detail.record.session_id)
            if job is not None:
                self.book.written(job, now)
                if job.finalized:
                    self.book.drop(job.key)  # final: rebuilt from the archive if resumed
            if self.on_record is not None:
                self.on_record(detail.record, finalized)
        for job in due:  # quarantined or refused: not dirty any more either way
            if job.key in self.book.quarantined:
                job.dirty = False
        self._note_skips(rnd.skips)

    def _job_of_file(self, file_id: int) -> str | None:
        for t in self.tracker.deleted_by_inode.values():
            if t.row.id == file_id:
                return t.row.job_key
        active = self.tracker.by_id.get(file_id)
        return active.row.job_key if active is not None else None

    def _report_deferred(self, rnd: _Round, keys: set[str] | None) -> None:
        """Report the held-back tails of these sessions' deleted files (all when None)."""
        for file_id, (key, bad) in list(self._deferred.items()):
            if keys is None or key in keys:
                del self._deferred[file_id]
                rnd.batch.bad_lines.append(bad)
                self.stats.bad_lines += 1
                log.warning("bad_line", file_id=bad.file_id, session=key, offset=bad.offset,
                            length=bad.length, reason=bad.reason)  # fmt: skip

    def _write_records(self, due: list[Job], rnd: _Round) -> list[tuple[JobDetail, bool]]:
        """Settle the due sessions' duplicates, then build and write their records and those
        of the other sessions whose share of a duplicated message moved."""
        store, book = self.store, self.book
        affected: set[str] = set()
        ready: list[Job] = []
        for job in due:
            acc = book.load(job)
            if acc is None:
                continue
            try:
                affected |= store.settle_usage(job.key, acc.usage_candidates())
            except StoreError:
                raise
            except Exception as exc:
                book.quarantine(job.key, "the adapter failed listing its messages", exc)
                continue
            ready.append(job)
        due_keys = {j.key for j in ready}
        others = []
        for key in sorted(affected - due_keys):
            if key in book.quarantined:
                continue
            other = book.jobs.get(key)
            if other is None:
                # Not in memory: its record is final (recover() queued every other one).
                other = book.invalidate(key)
                other.finalized = True
            others.append(other)
        lost = store.lost_keys(due_keys | {j.key for j in others})
        details: list[tuple[JobDetail, bool]] = []
        machine = store.machine_id
        for job in [*ready, *others]:
            detail = book.build(job, machine, lost.get(job.key, frozenset()))
            if detail is not None:
                details.append((detail, job.finalized))
        for refused, error in store.write_jobs(details):
            book.quarantine(refused.record.session_id, "the database refused the record", error)
            details = [(d, f) for d, f in details if d is not refused]
        self._write_faults()  # raised while building: recorded in this same transaction
        return details

    def _rollback(self, rnd: _Round) -> None:
        """The round's transaction failed: the tracker keeps its committed state; the
        sessions it touched are rebuilt from the archive after the next commit."""
        for w in rnd.work:
            if isinstance(w.action, Create) and w.fd is not None:
                if w.source is not None:
                    w.source.close()
                # Kept: if the file is deleted before the database recovers, this
                # descriptor is all that holds its bytes.
                self.tracker.limbo[w.row.path] = (w.fd, w.action.st)
            elif w.kind == "continue" and w.fd is not None:
                if w.source is not None and w.source is not w.tracked.source:
                    w.source.close()
                os.close(w.fd)
        for key in rnd.touched | rnd.invalidated | rnd.finalize:
            self.book.invalidate(key)
        self._next_id = self.store.max_file_id()

    def _apply(self, rnd: _Round) -> None:
        """The round committed: the tracker takes its new state."""
        tracker = self.tracker
        now = time.monotonic()
        for w in rnd.work:
            t = w.tracked
            if w.kind == "create":
                assert w.fd is not None and w.source is not None
                t.row = w.row
                tracker.attach(t, w.fd, w.source)
                tracker.add(t)
                tracker.skipped.pop(t.row.path, None)
                log.debug("file_tracked", file=t.row.path, file_id=t.row.id, job=t.row.job_key)
            elif w.kind == "continue":
                assert isinstance(w.action, Continue) and w.source is not None
                a = w.action
                was_deleted = t.row.state != "active"
                old_source = t.source
                if old_source is w.source:
                    t.source = None  # (the same reader moves to the new descriptor)
                tracker.move(t, a.path, a.st, a.fd, w.source)
                t.row = w.row
                if was_deleted:
                    log.info("file_reappeared", file=a.path, file_id=t.row.id)
            elif w.kind == "retire":
                t.row = w.row
                tracker.remove(t)
                tracker.close(t)
                continue
            elif w.kind == "vanish":
                t.row = w.row
                if w.fd is not None:  # a new file that vanished at once
                    if w.source is not None:
                        w.source.close()
                    os.close(w.fd)
                tracker.mark_deleted(t)
                tracker.close(t)  # drained to its last byte
            else:
                t.row = w.row
            if w.tail is not None:
                t.tail = w.tail
            t.pending = w.pending
            if w.read_any:
                t.last_activity = now
        self.stats.files_tracked = len(tracker.by_path)
        if tracker.open_count > tracker.max_open:
            tracker.limit_open_files()

    # -- faults ----------------------------------------------------------------------------

    def _file_fault(self, path: str, reason: str, exc: BaseException) -> None:
        """An unexpected error about one file: quarantine it until it changes."""
        detail = "".join(traceback.format_exception_only(exc)).strip()[:2000]
        try:
            st = os.stat(path)
            self._faulty_files[path] = (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
        self.stats.faults += 1
        self._note_error(f"{reason}: {path}: {detail}")
        log.error("file_quarantined", file=path, reason=reason, error=detail[:500])
        self.book.faults.append(Fault("file", path, reason, detail))

    def _note_error(self, error: str) -> None:
        self.stats.last_error = error
        self.stats.last_error_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def record_fault(self, error: str) -> None:
        """Remember that the database refused a write (shown by `status` until a commit works)."""
        self.stats.fault = error
        self._note_error(error)

    def _note_skips(self, skips: list[Skip]) -> None:
        for skip in skips:
            if self.tracker.skipped.get(skip.path) != skip.reason:
                self.tracker.skipped[skip.path] = skip.reason
                log.warning("file_skipped", file=skip.path, reason=skip.reason)
                if skip.reason.startswith(("unreadable", "cannot stat")):
                    self._note_error(f"{skip.path}: {skip.reason}")

    # -- sessions ----------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Queue the sessions whose record is missing or stale (after a crash or a stop)."""
        keys = self.store.unfinalized_job_keys()
        for key in keys:
            if key not in self.book.jobs:
                job = self.book.invalidate(key)
                job.last_activity = time.monotonic()
                job.modified = time.time()
        return keys

    def finalize(self, key: str) -> None:
        """Archive the session's unterminated tails and write its final record."""
        self.finalize_many([key])

    def finalize_many(self, keys: Iterable[str]) -> None:
        """Finalize several sessions with one read pass and one write transaction."""
        wanted = set(keys)
        if not wanted:
            return
        tails: list[Action] = [
            Read(t)
            for t in [*self.tracker.by_id.values(), *self.tracker.deleted_by_inode.values()]
            if t.row.job_key in wanted and self._unread(t)
        ]
        self._run(tails, list(self.config.watch), final=True, finalize=wanted)
        self._flush_deferred(wanted)
        log.info("jobs_finalized", count=len(wanted), jobs=sorted(wanted)[:20])

    def _flush_deferred(self, keys: set[str] | None) -> None:
        if any(keys is None or key in keys for key, _bad in self._deferred.values()):
            rnd = _Round()
            self._report_deferred(rnd, keys)
            self._commit(rnd)

    def _unread(self, tracked: Tracked) -> bool:
        """Does the file hold bytes past the archived offset (a tail, or new appends)?"""
        if tracked.row.codec == "zstd":
            return tracked.unread()
        try:
            if tracked.fd is not None:
                size = os.fstat(tracked.fd).st_size
            elif tracked.row.state == "active":
                size = os.stat(tracked.row.path).st_size
            else:
                return False
        except OSError:
            return False
        return size > tracked.row.offset or tracked.row.in_long_line

    def finalize_idle(self, idle_timeout: float, *, fully_read_only: bool = False) -> list[str]:
        """Finalize the sessions whose files have not changed for `idle_timeout` seconds."""
        now = time.time()
        keys = [
            k
            for k, j in self.book.jobs.items()
            if not j.finalized and now - j.modified >= idle_timeout
            and k not in self.book.quarantined
        ]  # fmt: skip
        if keys and fully_read_only:
            waiting = {
                t.row.job_key
                for t in self.tracker.by_id.values()
                if t.row.state == "active" and t.row.size > t.row.offset + t.pending
            }
            keys = [k for k in keys if k not in waiting]
        self.finalize_many(keys)
        return keys

    def finalize_all(self) -> None:
        """Archive every unterminated tail and finalize every open session (shutdown, import),
        and every record the database still holds as active."""
        keys = {k for k, j in self.book.jobs.items() if not j.finalized}
        keys |= set(self.store.unfinalized_job_keys())
        tails: list[Action] = []
        for t in [*self.tracker.by_id.values(), *self.tracker.deleted_by_inode.values()]:
            if (t.row.state == "active" or t.fd is not None) and self._unread(t):
                tails.append(Read(t))
                if t.row.job_key:
                    keys.add(t.row.job_key)
        # Unread bytes of files still present wait for the next start when stopping; a
        # deleted file's are read regardless (see _plan).
        self._run(tails, list(self.config.watch), final=True,
                  finalize=keys - self.book.quarantined)  # fmt: skip
        self._flush_deferred(None)

    def flush(self) -> None:
        """Write every job whose record changed since it was last written."""
        rnd = _Round(force_write={k for k, j in self.book.jobs.items() if j.dirty})
        self._commit(rnd)

    def write_pending(self) -> float | None:
        """Write the records that were held back by the write interval.

        Returns the seconds until the next held-back record is due (None if none is), so the
        daemon wakes up for it instead of at its next rescan.
        """
        now = time.monotonic()
        dirty = [k for k, j in self.book.jobs.items() if j.dirty]
        due = self.book.due(dirty, now)
        if due:
            rnd = _Round(force_write={j.key for j in due})
            self._commit(rnd)
        return self.book.next_due(time.monotonic())

    def drain_vanished(self) -> None:
        """Drain the files that disappeared since the last look (at shutdown: their bytes
        exist nowhere else, while files still present can be read at the next start)."""
        actions: list[Action] = []
        for path, tracked in list(self.tracker.by_path.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                actions.append(Vanish(tracked))
                continue
            except OSError:
                continue
            if tracked.fd is not None and (st.st_dev, st.st_ino) != (
                tracked.row.dev,
                tracked.row.ino,
            ):
                actions.extend(self._look(path))
        if actions:
            self._run(actions, list(self.config.watch), force=True)

    # -- import and rebuild ----------------------------------------------------------------

    def ingest_once(
        self,
        roots: Iterable[Path],
        progress: Any = None,
        group_size: int = IMPORT_GROUP_FILES,
        paths: list[str] | None = None,
        sizes: dict[str, int] | None = None,
    ) -> list[str]:
        """Read every transcript under `roots` once and finalize it (`jobvault import`).

        Files are read grouped by session, a group of sessions per transaction, and each
        session is finalized in the transaction that reads its last file, so memory holds a
        few sessions at a time, not the whole import.
        """
        roots = list(roots)
        if paths is None:  # the caller may have walked the roots already (for a progress bar)
            paths = self.scan(roots)
        if sizes is None:  # ... and looked at their sizes
            sizes = {path: file_size(path) for path in paths}
        keyed: list[tuple[str, str]] = []
        for path in paths:
            classified = self.tracker.classify(path)
            key = classified[1].job_key if classified else None
            if key is None and classified is not None:
                # A flat subagent file names its session inside: peek, so it is read with its
                # parent instead of reopening (and re-reading) the finalized parent later.
                key = _peek_job_key(path, classified[0])
            keyed.append((key if key is not None else "\uffff", path))
        keyed.sort()
        last: dict[str, int] = {key: i for i, (key, _) in enumerate(keyed)}
        self._importing = True
        try:
            start = 0
            while start < len(keyed):
                end, size = start, 0
                while end < len(keyed) and end - start < group_size and (size < IMPORT_GROUP_BYTES):
                    size += sizes.get(keyed[end][1], 0)
                    end += 1
                # Never split a session across groups unless it alone is too large.
                while (
                    end < len(keyed)
                    and keyed[end][0] == keyed[end - 1][0]
                    and (size < 8 * IMPORT_GROUP_BYTES)
                ):
                    size += sizes.get(keyed[end][1], 0)
                    end += 1
                group = keyed[start:end]
                done = {k for k, _ in group if last[k] < end and k != "\uffff"}
                self.poll([p for _, p in group], roots, final=True, finalize=done)
                if progress is not None:
                    progress([p for _, p in group])
                start = end
        finally:
            self._importing = False
        self.finalize_all()
        return paths

    def rebuild(self, progress: Any = None, batch: int = 256) -> int:
        """Recompute every job record from the archive alone; return the number of jobs.

        Every session's message copies are settled first; then each record is built once,
        with the copies other sessions hold a better copy of excluded, so the result does not
        depend on the order of sessions. A session that fails is quarantined; the rest go on.
        """
        keys = self.store.job_keys()
        self.store.clear_usage_keys()
        self.store.clear_faults("session")
        self.book.quarantined.clear()
        self.book.jobs.clear()
        total = len(keys) * 2
        done = 0
        for part in _parts(keys, batch):  # pass 1: every session's copies
            with self.store.transaction():
                for key in part:
                    adapter = self.book.adapter_of(key)
                    try:
                        acc = self.book.replay(key, adapter)
                        self.store.settle_usage(key, acc.usage_candidates())
                    except StoreError:
                        raise
                    except Exception as exc:
                        self.book.quarantine(key, "the adapter failed reading the archive", exc)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        for part in _parts(keys, batch):  # pass 2: the records
            rnd = _Round()
            jobs = []
            for key in part:
                if key in self.book.quarantined:
                    continue
                job = self.book.invalidate(key)
                job.finalized = True
                jobs.append(job)
            self._rebuild_part(rnd, jobs)
            for job in jobs:
                self.book.drop(job.key)
            done += len(part)
            if progress is not None:
                progress(done, total)
        self.store.delete_orphan_jobs(keys)
        return len(keys)

    def _rebuild_part(self, rnd: _Round, jobs: list[Job]) -> None:
        lost = self.store.lost_keys(j.key for j in jobs)
        details = []
        for job in jobs:
            detail = self.book.build(job, self.store.machine_id, lost.get(job.key, frozenset()))
            if detail is not None:
                details.append((detail, True))
        with self.store.transaction():
            for detail, exc in self.store.write_jobs(details):
                self.book.quarantine(detail.record.session_id, "the database refused it", exc)
            self._write_faults()

    def _write_faults(self) -> None:
        """Record the faults raised so far (inside the caller's transaction)."""
        faults = self.book.take_faults()
        if faults:
            rows = [FaultRow(f.kind, f.key, f.reason, f.detail) for f in faults]
            self.store.write_batch(Batch(faults=rows))
            self.stats.faults += len(faults)

    # -- status ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What the engine knows now (for `status`); call it on the engine's thread."""
        now = time.time()
        lag = 0.0
        pending = 0
        for tracked in self.tracker.by_id.values():
            row = tracked.row
            if row.codec == "zstd":
                continue
            # A partial last line is not lag: it waits for its newline.
            unread = row.size - row.offset - tracked.pending
            if row.state == "active" and unread > 0:
                pending += unread
                lag = max(lag, now - row.mtime_ns / 1e9)
        skipped: dict[str, int] = {}
        for reason in self.tracker.skipped.values():
            label = reason.split(":")[0]
            skipped[label] = skipped.get(label, 0) + 1
        jobs = self.book.jobs.values()
        return {
            "files_tracked": len(self.tracker.by_path),
            "files_open": self.tracker.open_count,
            "files_skipped": skipped,
            "bytes_archived_since_start": self.stats.bytes_archived,
            "lines_archived_since_start": self.stats.lines_archived,
            "bad_lines_since_start": self.stats.bad_lines,
            "lost_bytes_since_start": self.stats.lost_bytes,
            "sessions_active": sum(1 for j in jobs if not j.finalized),
            "sessions_in_memory": sum(1 for j in jobs if j.acc is not None),
            # Very long sessions whose per-message state is in a scratch file (spill.py).
            "sessions_spilled": sum(1 for j in jobs if j.acc is not None and j.acc.spilled),
            "sessions_quarantined": len(self.book.quarantined),
            "files_quarantined": len(self._faulty_files),
            "faults_since_start": self.stats.faults,
            "pending_bytes": pending,
            "ingest_lag_seconds": round(lag, 3) if pending else 0.0,
            "last_error": self.stats.last_error,
            "last_error_at": self.stats.last_error_at,
            "store_fault": self.stats.fault,
        }

    def close(self) -> None:
        self.tracker.close_all()


def _parts(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
