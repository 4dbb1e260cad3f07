"""A round: the tracker's actions turned into work, and the files read into one batch.

`RoundReader` plans a round from the tracker's actions (no state changes: each file's row is
copied, and only `writing.RoundWriter` applies the copies once the round's transaction
commits) and reads the files within the batch budget, through `reading.read_file`, into the
round's batch and the session book.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from jobvault.config import Config
from jobvault.ingest.book import Fault, Job, SessionBook
from jobvault.ingest.reader import Source, codec_of, holds
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
from jobvault.records import JobDetail
from jobvault.sources import LineContext
from jobvault.store.archive import FileRow
from jobvault.store.increments import Row
from jobvault.store.writer import BadLine, Batch, Chunk, Store

log = structlog.get_logger("jobvault.engine")

WorkKind = Literal["read", "create", "continue", "retire", "vanish"]


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

    def note_error(self, error: str) -> None:
        self.last_error = error
        self.last_error_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(slots=True)
class Work:
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


Prebuilt = tuple[JobDetail, list[tuple[str, Row]], frozenset[str]]


@dataclass(slots=True)
class Round:
    batch: Batch = field(default_factory=Batch)
    work: list[Work] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # sessions that got lines
    invalidated: set[str] = field(default_factory=set)
    finalize: set[str] = field(default_factory=set)  # sessions finalized in this round
    force_write: set[str] = field(default_factory=set)
    flush: bool = False  # their held-back search texts too (`Engine.flush`: shutdown)
    skips: list[Skip] = field(default_factory=list)
    deferred: list[BadLine] = field(default_factory=list)  # tails of deleted files
    # Sessions read and built by a worker process: (detail, candidates, the messages it
    # was built without), final.
    prebuilt: dict[str, Prebuilt] = field(default_factory=dict)
    cold_files: list[tuple[Tracked, FileRow, bytes | None]] = field(default_factory=list)
    read: int = 0

    def carry(self) -> Round:
        """The next round of the same reads (the budget ran out before their end): each goes
        on from the row as this round leaves it (applied to its file when it commits)."""
        nxt = Round()
        for w in self.work:
            if w.more and w.kind in ("read", "create", "continue") and w.source is not None:
                nxt.work.append(Work("read", w.tracked, replace(w.row), w.source, final=w.final,
                                     force=w.force, tail=w.tail))  # fmt: skip
        return nxt


@dataclass
class Faults:
    """Files quarantined after an unexpected error, until they change."""

    stats: Stats
    book: SessionBook
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime)

    def file(self, path: str, reason: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(exc)).strip()[:2000]
        try:
            st = os.stat(path)
            self.files[path] = (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
        self.stats.faults += 1
        self.stats.note_error(f"{reason}: {path}: {detail}")
        log.error("file_quarantined", file=path, reason=reason, error=detail[:500])
        self.book.faults.append(Fault("file", path, reason, detail))

    def skip(self, path: str) -> bool:
        """Is `path` quarantined and unchanged since?"""
        fault = self.files.get(path)
        if fault is None:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_size, st.st_mtime_ns) == fault:
            return True
        del self.files[path]
        return False


def note_bad(stats: Stats, rnd: Round, row: FileRow, offset: int, length: int, reason: str) -> None:
    row.bad_lines += 1
    stats.bad_lines += 1
    rnd.batch.bad_lines.append(BadLine(row.id, offset, length, reason))
    log.warning("bad_line", file=row.path, file_id=row.id, session=row.job_key,
                offset=offset, length=length, reason=reason)  # fmt: skip


class RoundSink:
    """A file's reading in the engine: chunks and bad lines into the round, lines into the
    session book (binding the file to the session its lines name, when its path did not)."""

    def __init__(self, book: SessionBook, stats: Stats, rnd: Round, w: Work) -> None:
        self.book, self.stats, self.rnd, self.w = book, stats, rnd, w
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
            note_bad(self.stats, self.rnd, row, offset, length, reason)

    def line(self, row: FileRow, offset: int, obj: dict[str, Any]) -> str | None:
        book = self.book
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


class RoundReader:
    """Plans a round from actions and reads its files into the round's batch."""

    def __init__(
        self,
        config: Config,
        store: Store,
        tracker: FileTracker,
        book: SessionBook,
        stats: Stats,
        faults: Faults,
        deferred: dict[int, tuple[str | None, BadLine]],
    ) -> None:
        self.config, self.store, self.tracker, self.book = config, store, tracker, book
        self.stats, self.faults, self.deferred = stats, faults, deferred
        self.stopping = False
        self.next_id = store.max_file_id()

    # -- planning --------------------------------------------------------------------------

    def plan(
        self, rnd: Round, actions: list[Action], roots: list[Path], final: bool, force: bool
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
                    rnd.work.append(Work("read", t, replace(t.row), src, final=final,
                                         force=force or t.row.state != "active"))  # fmt: skip
            elif isinstance(action, Create):
                rnd.work.append(self.create(action, roots, final, force or action.gone))
            elif isinstance(action, Continue):
                t = action.tracked
                planned.add(id(t))
                row = replace(t.row, path=action.path, dev=action.st.st_dev,
                              ino=action.st.st_ino, state="active")  # fmt: skip
                row.codec = codec_of(action.path)
                if row.codec == "zstd":
                    row.disk_size = 0
                else:
                    row.size = max(row.size, action.st.st_size)
                rnd.work.append(Work("continue", t, row, action.source, final=final,
                                     force=True, fd=action.fd, action=action))  # fmt: skip
                log.info("file_continues", file=action.path, old=t.row.path, file_id=t.row.id)
                if action.path != t.row.path and t.row.job_key is not None:
                    # Its lines were read under the old path, which ranks copies of a message
                    # shared with another session (and names the record's file): rebuilt
                    # from the archive under the new one, as `rebuild` would.
                    rnd.invalidated.add(t.row.job_key)
                    self.book.invalidate(t.row.job_key, t.adapter)
            elif isinstance(action, Retire):
                t = action.tracked
                planned.add(id(t))
                log.info("file_" + action.reason, file=t.row.path, file_id=t.row.id,
                         offset=t.row.offset)  # fmt: skip
                src = t.source if action.drain else None
                rnd.work.append(Work("retire", t, replace(t.row, state=action.reason), src,
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
                rnd.work.append(Work("vanish", t, replace(t.row, state="deleted"), t.source,
                                     force=True, action=action))  # fmt: skip

    def new_row(self, action: Create, roots: list[Path]) -> FileRow:
        root, rel = self.tracker.root_of(action.path, roots)
        self.next_id += 1
        codec = codec_of(action.path)
        return FileRow(
            id=self.next_id, source=action.adapter.name, path=action.path, root=root,
            rel_path=rel, generation=self.store.next_generation(root, rel),
            dev=action.st.st_dev, ino=action.st.st_ino, fp_len=0, fp_hash=None, offset=0,
            size=action.st.st_size if codec == "plain" else 0,
            mtime_ns=action.st.st_mtime_ns, in_long_line=False, partial_tail=False,
            state="active", job_key=action.info.job_key, role=action.info.role,
            agent_id=action.info.agent_id, line_count=0, bad_lines=0, lost_bytes=0,
            codec=codec, disk_size=0,
        )  # fmt: skip

    def create(self, action: Create, roots: list[Path], final: bool, force: bool) -> Work:
        row = self.new_row(action, roots)
        tracked = Tracked(row, action.info, action.adapter, last_activity=time.monotonic())
        return Work("create", tracked, replace(row), action.source, final=final, force=force,
                    fd=action.fd, action=action)  # fmt: skip

    # -- reading ---------------------------------------------------------------------------

    def read(self, rnd: Round) -> None:
        """Read the round's files within the batch budget; parse and feed their lines."""
        budget = self.config.batch_max_bytes
        for w in rnd.work:
            if w.kind == "create":
                rnd.batch.new_files.append(w.row)
                if isinstance(w.action, Create) and w.action.gone:
                    w.kind = "vanish"  # seen while the database refused writes, deleted since
            if w.kind in ("retire", "vanish"):
                self._vanishing(rnd, w)
                continue
            if w.source is None:
                w.more = False
                continue
            if budget <= 0 or (self.stopping and not w.force):
                continue
            try:
                got = self._read(rnd, w, budget)
            except OSError as exc:  # EIO, a file gone in a way we did not foresee
                w.more = False
                log.warning("read_failed", file=w.row.path, error=str(exc))
                self.stats.note_error(f"reading {w.row.path}: {exc}")
                continue
            except Exception as exc:
                w.more = False
                self.faults.file(w.row.path, "reading the file failed", exc)
                continue
            budget -= got
            rnd.read += got

    def _vanishing(self, rnd: Round, w: Work) -> None:
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
                self.faults.file(row.path, "draining the file failed", exc)
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

    def _still_ours(self, w: Work) -> bool:
        """Does the descriptor still hold what we archived (not rewritten in place)?"""
        assert w.source is not None
        row = w.tracked.row
        try:
            tail = self.tracker.archived_tail(w.tracked) if row.fp_len else b""
            return holds(w.source, row.fp_len, row.fp_hash, row.offset, tail)
        except OSError:
            return False

    def _read(self, rnd: Round, w: Work, budget: int) -> int:
        """Read one file from its offset (up to `budget` bytes); return the bytes read."""
        row = w.row
        assert w.source is not None
        if row.partial_tail:
            # The previous read archived an unterminated tail; new bytes continue that line,
            # so the accumulator must re-read the joined line from the archive and the
            # tail's report (if any) was premature.
            rnd.batch.continued_tails.append(row.id)
            self.deferred.pop(row.id, None)
            if row.job_key is not None:
                rnd.invalidated.add(row.job_key)
                self.book.invalidate(row.job_key, w.tracked.adapter)
        fd = w.fd if w.fd is not None else w.tracked.fd
        out = read_file(
            row, w.source, fd, final=w.final, budget=budget,
            max_line=self.config.max_line_bytes, sink=RoundSink(self.book, self.stats, rnd, w),
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
