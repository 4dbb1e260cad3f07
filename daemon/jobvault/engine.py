"""The ingest engine: tracked files → archived chunks → parsed lines → job records.

Synchronous and single-threaded by design: `jobvault import` drives it in a loop and the
daemon drives it from one worker thread, so there is exactly one writer. Each `poll` reads
what was appended to the files it is given (complete lines only), parses every line once,
feeds the session accumulators and commits chunks, offsets, bad lines and due job records in
one transaction. If that transaction fails nothing moved: offsets are restored and the
affected sessions are rebuilt from the archive on their next use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import structlog

from jobvault.config import Config
from jobvault.errors import StoreError
from jobvault.records import JobDetail, JobRecord
from jobvault.sources import ADAPTERS, Adapter, FileInfo, LineContext
from jobvault.sources.base import Accumulator
from jobvault.store.writer import (
    BadLine,
    Batch,
    Chunk,
    FileRow,
    Store,
    iter_archived_objects,
)
from jobvault.tail import Segment, fingerprint, fingerprint_len, read_lines, read_tail

log = structlog.get_logger("jobvault.engine")

CHUNK_MAX = 4 * 1024 * 1024
TOO_LONG = "line longer than max_line_bytes"
UNTERMINATED = "unterminated final line"
TAIL_CHECK = 64  # bytes before the offset compared with the archive to detect rewrites


@dataclass(slots=True)
class Tracked:
    """A file being tailed: its stored row plus what only lives in memory."""

    row: FileRow
    info: FileInfo
    adapter: Adapter
    fd: int | None = None
    last_activity: float = 0.0
    pending: int = 0  # bytes of an incomplete last line seen after the offset
    tail: bytes | None = None  # the last archived bytes (None: not loaded yet)


@dataclass(slots=True)
class Job:
    key: str
    adapter: Adapter
    acc: Accumulator | None  # None: must be rebuilt from the archive before use
    last_activity: float = 0.0
    modified: float = 0.0  # newest modification time of its files (epoch seconds)
    finalized: bool = False
    dirty: bool = False
    last_written: float = 0.0


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


def _iter_segment_lines(segment: Segment) -> Iterator[tuple[int, bytes]]:
    data = segment.data
    start = 0
    while True:
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        yield segment.start + start, data[start:newline]
        start = newline + 1
    if start < len(data):
        yield segment.start + start, data[start:]


class Engine:
    """Tails files into the archive and keeps job records current."""

    def __init__(self, config: Config, store: Store, *, job_write_interval: float = 2.0) -> None:
        self.config = config
        self.store = store
        self.job_write_interval = job_write_interval
        self.by_path: dict[str, Tracked] = {}
        self.by_id: dict[int, Tracked] = {}
        self.by_inode: dict[tuple[int, int], Tracked] = {}
        self._open_count = 0
        # path -> (descriptor, stat, roots) of files seen while the database refused writes.
        self._pending: dict[str, tuple[int, os.stat_result, list[Path]]] = {}
        # Never use more descriptors than the process may open, leaving room for SQLite, the
        # socket server and the watcher.
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._fd_room = soft - 96 if soft != resource.RLIM_INFINITY else 1 << 20
        self.jobs: dict[str, Job] = {}
        self.stats = Stats()
        self._adapters = list(ADAPTERS.values())
        self._affected: set[str] = set()
        self._settling = False
        # Set (from any thread) to stop reading after the batch in progress: a shutdown
        # commits what was read and leaves the rest in the files for the next start.
        self.stopping = threading.Event()
        # Called on the worker thread after a record is written: (record, finalized).
        self.on_record: Callable[[JobRecord, bool], None] | None = None
        # Deleted files whose inode and first bytes may reappear under another name (a move
        # whose events were lost): they are revived rather than archived a second time.
        self.deleted_by_inode: dict[tuple[int, int], Tracked] = {}
        for row in store.load_files():
            tracked = self._restore(row)
            if tracked is None:
                continue
            if row.state == "active":
                self.by_path[row.path] = tracked
                self.by_id[row.id] = tracked
                self.by_inode[(row.dev, row.ino)] = tracked
            else:
                self.deleted_by_inode[(row.dev, row.ino)] = tracked
        self.stats.files_tracked = len(self.by_path)

    @property
    def max_open(self) -> int:
        """How many transcript descriptors to hold: the config, within the process's limit."""
        return max(8, min(self.config.max_open_files, self._fd_room))

    # -- discovery ---------------------------------------------------------------------------

    def _restore(self, row: FileRow) -> Tracked | None:
        adapter = ADAPTERS.get(row.source)
        if adapter is None:
            return None
        info = adapter.classify(Path(row.path))
        if info is None:
            return None
        return Tracked(row, info, adapter)

    def classify(self, path: Path) -> tuple[Adapter, FileInfo] | None:
        for adapter in self._adapters:
            info = adapter.classify(path)
            if info is not None:
                return adapter, info
        return None

    def scan(self, roots: Iterable[Path]) -> list[str]:
        """Walk `roots` (files or directories); return the paths of every transcript found."""
        found: list[str] = []
        for root in roots:
            root_s = os.path.abspath(str(root))
            if os.path.isfile(root_s):
                if self.classify(Path(root_s)) is not None:
                    found.append(root_s)
                continue
            for dirpath, dirnames, filenames in os.walk(root_s, followlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.endswith(".jsonl"):
                        found.append(os.path.join(dirpath, name))
        return found

    def root_of(self, path: str, roots: Iterable[Path]) -> tuple[str, str]:
        """Return (root, path relative to it) for `path` under the first matching root."""
        for root in roots:
            root_s = os.path.abspath(str(root))
            if os.path.isfile(root_s):
                if root_s == path:
                    return os.path.dirname(root_s), os.path.basename(root_s)
                continue
            if path.startswith(root_s.rstrip(os.sep) + os.sep):
                return root_s, os.path.relpath(path, root_s)
        return os.path.dirname(path), os.path.basename(path)

    def track(self, path: str, roots: Iterable[Path]) -> Tracked | None:
        """Stat `path` and make sure the tracked state matches the file now at that path.

        Detects new files, renames (same device+inode and first bytes), replacement (another
        inode, or the same inode with different first bytes) and truncation.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.gone(path)
            return None
        except OSError as exc:
            log.warning("stat_failed", file=path, error=str(exc))
            return None
        tracked = self.by_path.get(path)
        if tracked is not None:
            row = tracked.row
            same_inode = (row.dev, row.ino) == (st.st_dev, st.st_ino)
            unchanged = st.st_size == row.size and st.st_mtime_ns == row.mtime_ns
            if (
                same_inode
                and st.st_size >= row.offset
                and (unchanged or self._fingerprint_ok(tracked))
            ):
                row.size = st.st_size
                if tracked.fd is None and self._open_count < self.max_open:
                    # Hold every tracked file open while descriptors allow, so one deleted
                    # right after an append is still drained to its end.
                    self._open(tracked)
                return tracked
            reason = "truncated" if same_inode and st.st_size < row.offset else "replaced"
            # Another inode at the path: the old one still holds its bytes, drain it. The same
            # inode rewritten in place holds only the new content: nothing left to drain.
            self._supersede(tracked, reason, st.st_size, drain=not same_inode)
        else:
            moved = self._find_moved(path, st)
            if moved is not None:
                moved.row.size = st.st_size  # it may have grown since: read on
                if moved.fd is None and self._open_count < self.max_open:
                    self._open(moved)
                return moved
        return self._track_new(path, st, roots)

    def _track_new(self, path: str, st: os.stat_result, roots: Iterable[Path]) -> Tracked | None:
        classified = self.classify(Path(path))
        if classified is None:
            return None
        adapter, info = classified
        # Open it before recording it: if the database refuses the row (full, read-only),
        # the descriptor is kept so the file can still be drained if it is deleted meanwhile.
        pending = self._pending.pop(path, None)
        fd = None
        if pending is not None:
            if (pending[1].st_dev, pending[1].st_ino) == (st.st_dev, st.st_ino):
                fd = pending[0]
            else:  # another file took the path meanwhile
                os.close(pending[0])
        if fd is None and self._open_count < self.max_open:
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                    os.close(fd)
                    fd = None
        root, rel = self.root_of(path, roots)
        row = FileRow(
            id=0,
            source=adapter.name,
            path=path,
            root=root,
            rel_path=rel,
            generation=self.store.next_generation(root, rel),
            dev=st.st_dev,
            ino=st.st_ino,
            fp_len=0,
            fp_hash=None,
            offset=0,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            in_long_line=False,
            partial_tail=False,
            state="active",
            job_key=info.job_key,
            role=info.role,
            agent_id=info.agent_id,
            line_count=0,
            bad_lines=0,
            lost_bytes=0,
        )
        try:
            row.id = self.store.insert_file(row)
        except StoreError:
            if fd is not None:
                self._pending[path] = (fd, st, list(roots))
            raise
        tracked = Tracked(row, info, adapter, last_activity=time.monotonic())
        if fd is not None:
            tracked.fd = fd
            self._open_count += 1
        self.by_path[path] = tracked
        self.by_id[row.id] = tracked
        self.by_inode[(row.dev, row.ino)] = tracked
        self.stats.files_tracked = len(self.by_path)
        log.debug("file_tracked", file=path, file_id=row.id, job=info.job_key)
        return tracked

    def _find_moved(self, path: str, st: os.stat_result) -> Tracked | None:
        """A tracked file renamed inside the tree: same device, inode and first bytes."""
        key = (st.st_dev, st.st_ino)
        tracked = self.by_inode.get(key)
        if tracked is not None:
            row = tracked.row
            old_path = row.path
            if old_path == path or os.path.exists(old_path):
                return None
            if st.st_size < row.offset or not self._fingerprint_ok(tracked, path):
                # Moved and then cut or rewritten in place: that generation is over.
                reason = "truncated" if st.st_size < row.offset else "replaced"
                self._supersede(tracked, reason, st.st_size, drain=False)
                return None
            self.store.write_file_path(row.id, path, "active")
            del self.by_path[old_path]
            row.path = path
            self.by_path[path] = tracked
            log.info("file_moved", file=path, old=old_path, file_id=row.id)
            return tracked
        tracked = self.deleted_by_inode.get(key)
        if tracked is not None:
            row = tracked.row
            if st.st_size < row.offset or not self._fingerprint_ok(tracked, path):
                return None
            # Taken for deleted (its old name vanished before the new one was seen): the
            # same file, so continue it instead of archiving its bytes a second time.
            self.store.write_file_path(row.id, path, "active")
            del self.deleted_by_inode[key]
            old_path, row.path, row.state = row.path, path, "active"
            self.by_path[path] = tracked
            self.by_id[row.id] = tracked
            self.by_inode[key] = tracked
            log.info("file_reappeared", file=path, old=old_path, file_id=row.id)
            return tracked
        return None

    def _forget_inode(self, tracked: Tracked) -> None:
        key = (tracked.row.dev, tracked.row.ino)
        if self.by_inode.get(key) is tracked:
            del self.by_inode[key]

    def _close(self, tracked: Tracked) -> None:
        if tracked.fd is not None:
            os.close(tracked.fd)
            tracked.fd = None
            self._open_count -= 1

    def _open(self, tracked: Tracked, path: str | None = None) -> int | None:
        if tracked.fd is not None:
            return tracked.fd
        if self._open_count >= self.max_open:
            self._limit_open_files()
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path or tracked.row.path, flags)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return None  # gone or unreadable: the rescan will tell which
            # Out of descriptors (another part of the process, or a low limit): close idle
            # files and try once more rather than skipping this one.
            self._limit_open_files(force=True)
            try:
                fd = os.open(path or tracked.row.path, flags)
            except OSError as again:
                log.warning("open_failed", file=tracked.row.path, error=str(again))
                return None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (tracked.row.dev, tracked.row.ino):
            os.close(fd)
            return None
        tracked.fd = fd
        self._open_count += 1
        return fd

    def _limit_open_files(self, force: bool = False) -> None:
        """Close descriptors of fully read, idle files beyond `max_open_files`."""
        open_files = [t for t in self.by_id.values() if t.fd is not None]
        # Close down to three quarters of the limit (half when the process ran out) so this
        # sort runs rarely.
        keep = self.max_open // 2 if force else (self.max_open * 3) // 4
        excess = len(open_files) - keep
        open_files.sort(key=lambda t: t.last_activity)
        for tracked in open_files:
            if excess <= 0:
                break
            if tracked.pending == 0 and tracked.row.offset >= tracked.row.size:
                self._close(tracked)
                excess -= 1

    def _fingerprint_ok(self, tracked: Tracked, path: str | None = None) -> bool:
        row = tracked.row
        if row.fp_len == 0 or row.fp_hash is None:
            return True
        fd = tracked.fd if path is None else None
        own = fd is None
        if own:
            try:
                fd = os.open(path or row.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return False
        assert fd is not None
        try:
            if fingerprint(fd, row.fp_len) != row.fp_hash:
                return False
            # The first bytes match; so must the last bytes we archived, or the file was cut
            # and rewritten past its start (a truncation that grew back beyond our offset).
            tail = self._archived_tail(tracked)
            return not tail or os.pread(fd, len(tail), row.offset - len(tail)) == tail
        finally:
            if own:
                os.close(fd)

    def _archived_tail(self, tracked: Tracked) -> bytes:
        """The last archived bytes of the file (kept in memory, else read from the archive)."""
        if tracked.tail is None:
            tracked.tail = self.store.archived_tail(tracked.row.id, TAIL_CHECK)
        return tracked.tail

    def _supersede(self, tracked: Tracked, reason: str, new_size: int, drain: bool) -> None:
        """Retire a file generation: drain what its descriptor still holds, then mark it."""
        row = tracked.row
        log.info("file_" + reason, file=row.path, file_id=row.id, offset=row.offset, size=new_size)
        if drain and tracked.fd is not None and self._fingerprint_ok(tracked):
            self._drain([tracked], final=True, force=True)
        self._close(tracked)
        row.state = reason
        self.store.write_file_state(row.id, reason)
        self.by_path.pop(row.path, None)
        self.by_id.pop(row.id, None)
        self._forget_inode(tracked)
        if row.job_key is not None:
            self._invalidate(row.job_key, tracked.adapter)

    def gone(self, path: str) -> None:
        """The file at `path` was deleted (or moved out of the watched tree)."""
        if path in self._pending and path not in self.by_path:
            # Seen while the database refused writes; it holds a descriptor: record it now.
            _fd, st, roots = self._pending[path]
            if self._track_new(path, st, roots) is None:
                return
        tracked = self.by_path.get(path)
        if tracked is None or tracked.row.state != "active":
            return
        row = tracked.row
        if tracked.fd is not None and self._fingerprint_ok(tracked):
            # Its bytes exist nowhere else now: drain it even while shutting down. (If the
            # inode was rewritten in place under another name, it is not ours to drain.)
            self._drain([tracked], final=True, force=True)
        elif row.offset < row.size:
            row.lost_bytes = row.size - row.offset
            self.stats.lost_bytes += row.lost_bytes
            log.warning("file_lost_bytes", file=path, file_id=row.id, lost_bytes=row.lost_bytes)
        self._close(tracked)
        self.store.commit(Batch(files={row.id: replace(row, state="deleted")}), stale_jobs=set())
        row.state = "deleted"
        del self.by_path[path]
        del self.by_id[row.id]
        self._forget_inode(tracked)
        self.deleted_by_inode[(row.dev, row.ino)] = tracked
        log.info("file_deleted", file=path, file_id=row.id, offset=row.offset)
        if row.job_key is not None and row.role == "main":
            self.finalize(row.job_key)

    # -- reading -----------------------------------------------------------------------------

    def poll(self, paths: Iterable[str], roots: Iterable[Path]) -> int:
        """Track and read the given paths until each is read to its end; return bytes read."""
        roots = list(roots)
        todo: list[Tracked] = []
        # Paths that exist first, missing ones last: a rename's new name must be seen
        # before its old name is taken for a deletion.
        paths = sorted(paths, key=lambda p: not os.path.exists(p))
        for path in paths:
            tracked = self.track(path, roots)
            if tracked is not None and (
                tracked.row.size > tracked.row.offset or tracked.row.in_long_line
            ):
                todo.append(tracked)
        return self._drain(todo, final=False)

    def poll_all(self, roots: Iterable[Path]) -> int:
        roots = list(roots)
        return self.poll(self.scan(roots), roots)

    def ingest_once(
        self, roots: Iterable[Path], progress: Any = None, group_size: int = 64
    ) -> list[str]:
        """Read every transcript under `roots` once and finalize it (`jobvault import`).

        Files are read grouped by session and each session is finalized as soon as all of its
        files are read, so memory holds a few sessions at a time, not the whole import.
        """
        roots = list(roots)
        paths = self.scan(roots)
        keyed: list[tuple[str, str]] = []
        for path in paths:
            classified = self.classify(Path(path))
            key = classified[1].job_key if classified else None
            # Flat subagent files name their session inside: read them last.
            keyed.append((key if key is not None else "\uffff", path))
        keyed.sort()
        last: dict[str, int] = {key: i for i, (key, _) in enumerate(keyed)}
        for start in range(0, len(keyed), group_size):
            group = keyed[start : start + group_size]
            self.poll([p for _, p in group], roots)
            end = start + len(group)
            done = sorted(
                k
                for k, _ in group
                if last[k] < end and k in self.jobs and not self.jobs[k].finalized
            )
            self.finalize_many(done)
            if progress is not None:
                progress([p for _, p in group])
        self.finalize_all()
        return paths

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
            for p in list(self.by_path)
            if p not in seen and (p.startswith(prefixes) or p in files)
        )
        self.retry_pending()
        read = self.poll(paths, roots)
        try:
            # Keep the WAL bounded even when readers come and go (never waits for them).
            self.store.checkpoint()
        except sqlite3.Error as exc:
            log.warning("checkpoint_failed", error=str(exc))
        return read

    def record_fault(self, error: str) -> None:
        """Remember that the database refused a write (shown by `status` until a commit works)."""
        self.stats.last_error = self.stats.fault = error
        self.stats.last_error_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def snapshot(self) -> dict[str, Any]:
        """What the engine knows now (for `status`); call it on the engine's thread."""
        now = time.time()
        lag = 0.0
        pending = 0
        for tracked in self.by_id.values():
            row = tracked.row
            # A partial last line is not lag: it waits for its newline.
            unread = row.size - row.offset - tracked.pending
            if row.state == "active" and unread > 0:
                pending += unread
                lag = max(lag, now - row.mtime_ns / 1e9)
        return {
            "files_tracked": len(self.by_path),
            "files_open": self._open_count,
            "bytes_archived_since_start": self.stats.bytes_archived,
            "lines_archived_since_start": self.stats.lines_archived,
            "bad_lines_since_start": self.stats.bad_lines,
            "lost_bytes_since_start": self.stats.lost_bytes,
            "sessions_active": sum(1 for j in self.jobs.values() if not j.finalized),
            "sessions_in_memory": sum(1 for j in self.jobs.values() if j.acc is not None),
            "pending_bytes": pending,
            "ingest_lag_seconds": round(lag, 3) if pending else 0.0,
            "last_error": self.stats.last_error,
            "last_error_at": self.stats.last_error_at,
            "store_fault": self.stats.fault,
        }

    def retry_pending(self) -> None:
        """Record the files first seen while the database refused writes (whatever became of
        their paths since: a deleted one is drained through the descriptor kept for it)."""
        for path in list(self._pending):
            if os.path.exists(path):
                _fd, _st, roots = self._pending[path]
                self.poll([path], roots)
            else:
                self.gone(path)

    def drain_vanished(self) -> None:
        """Drain the files that disappeared since the last look (at shutdown: their bytes
        exist nowhere else, while files still present can be read at the next start)."""
        for path, tracked in list(self.by_path.items()):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self.gone(path)
                continue
            if tracked.fd is not None and (st.st_dev, st.st_ino) != (
                tracked.row.dev,
                tracked.row.ino,
            ):
                self._supersede(tracked, "replaced", st.st_size, drain=True)

    def write_pending(self) -> float | None:
        """Write the records that were held back by the write interval.

        Returns the seconds until the next held-back record is due (None if none is), so the
        daemon wakes up for it instead of at its next rescan.
        """
        dirty = [k for k, j in self.jobs.items() if j.dirty]
        self._write_due(dirty)
        waits = [
            j.last_written + self.job_write_interval - time.monotonic()
            for j in self.jobs.values()
            if j.dirty
        ]
        return max(0.0, min(waits)) if waits else None

    def _drain(self, files: list[Tracked], final: bool, force: bool = False) -> int:
        """Read the files to their end in batches (stops early when stopping, unless forced)."""
        total = 0
        queue = [t for t in files if t.row.state == "active"]
        while queue and (force or not self.stopping.is_set()):
            batch = Batch()
            touched: set[str] = set()
            snapshot: dict[int, FileRow] = {}
            budget = self.config.batch_max_bytes
            next_queue: list[Tracked] = []
            for tracked in queue:
                if budget <= 0:
                    next_queue.append(tracked)
                    continue
                fd = self._open(tracked)
                if fd is None:
                    continue
                snapshot[tracked.row.id] = replace(tracked.row)
                read, more = self._read_file(tracked, fd, budget, batch, touched, final)
                budget -= read
                total += read
                if more:
                    next_queue.append(tracked)
            self._commit(batch, snapshot, touched)
            self._write_due(touched)
            if not final and self.jobs:
                # A backfill of old transcripts finalizes them as it goes, so memory holds
                # the sessions being read, not all of history.
                self.finalize_idle(self.config.idle_timeout, fully_read_only=True)
            queue = next_queue
        return total

    def _read_file(
        self,
        tracked: Tracked,
        fd: int,
        budget: int,
        batch: Batch,
        touched: set[str],
        final: bool,
    ) -> tuple[int, bool]:
        row = tracked.row
        st = os.fstat(fd)
        result = read_lines(fd, row.offset, row.in_long_line, budget, self.config.max_line_bytes)
        segments = result.segments
        more = not result.eof
        if final and not more and not result.in_long_line:
            tail = read_tail(fd, result.offset, self.config.max_line_bytes)
            if tail is not None:
                segments.append(tail)
        if not segments:
            tracked.pending = result.pending
            row.size = max(st.st_size, row.size)
            return 0, more
        if row.partial_tail and row.job_key is not None:
            # The previous read archived an unterminated tail; the new bytes continue that
            # line, so the accumulator must re-read the joined line from the archive.
            self._invalidate(row.job_key, tracked.adapter)
        row.partial_tail = False
        read = 0
        pending_chunk: list[bytes] = []
        pending_start = -1
        pending_lines = 0

        def flush_chunk() -> None:
            nonlocal pending_chunk, pending_start, pending_lines
            if pending_chunk:
                batch.chunks.append(
                    Chunk(row.id, pending_start, b"".join(pending_chunk), pending_lines)
                )
            pending_chunk, pending_start, pending_lines = [], -1, 0

        for segment in segments:
            read += len(segment.data)
            if pending_start < 0:
                pending_start = segment.start
            pending_chunk.append(segment.data)
            if segment.kind == "long":
                if segment.line_start:
                    self._bad(batch, tracked, segment.start, len(segment.data), TOO_LONG)
                    pending_lines += 1
                    row.line_count += 1
            else:
                pending_lines += self._parse_segment(tracked, segment, batch, touched)
            if sum(len(p) for p in pending_chunk) >= CHUNK_MAX:
                flush_chunk()
            if segment.kind == "tail":
                row.partial_tail = True
        flush_chunk()
        new_offset = segments[-1].end
        if row.job_key:
            touched.add(row.job_key)
        row.offset = new_offset
        row.in_long_line = result.in_long_line
        row.size = max(st.st_size, new_offset)
        row.mtime_ns = st.st_mtime_ns
        if row.fp_len < fingerprint_len(row.offset):
            row.fp_len = fingerprint_len(row.offset)
            row.fp_hash = fingerprint(fd, row.fp_len)
        batch.files[row.id] = row
        last = segments[-1].data
        if len(last) >= TAIL_CHECK or tracked.tail is not None:
            tracked.tail = ((tracked.tail or b"") + last)[-TAIL_CHECK:]
        tracked.pending = result.pending if not final else 0
        tracked.last_activity = time.monotonic()
        job = self.jobs.get(row.job_key) if row.job_key else None
        if job is not None:  # idleness follows the files' own clock (a backfill is old news)
            job.modified = max(job.modified, min(st.st_mtime, time.time()))
        return read, more

    def _parse_segment(
        self, tracked: Tracked, segment: Segment, batch: Batch, touched: set[str]
    ) -> int:
        """Parse the lines of a segment, feed their job; return the number of lines."""
        row = tracked.row
        ctx = LineContext(
            file_id=row.id,
            role=tracked.info.role,
            agent_id=tracked.info.agent_id,
            layout=tracked.info.layout,
            project=tracked.info.project,
            path=row.path,
        )
        max_line = self.config.max_line_bytes
        count = 0
        job = self._job(row.job_key, tracked.adapter) if row.job_key else None
        is_tail = segment.kind == "tail"
        for offset, line in _iter_segment_lines(segment):
            count += 1
            problem = None
            obj: Any = None
            if len(line) > max_line:
                problem = TOO_LONG
            elif line.strip():
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    problem = f"invalid JSON: {exc}"
                else:
                    if not isinstance(obj, dict):
                        problem = "not a JSON object"
            if is_tail:
                # The unterminated last line of a finalized file: archived, always reported.
                problem = UNTERMINATED + (f" ({problem})" if problem else "")
            if problem is not None:
                self._bad(batch, tracked, offset, len(line), problem)
            if not isinstance(obj, dict):
                continue
            if job is None:
                key = tracked.adapter.job_key_from_line(obj)
                if key is None:
                    continue
                row.job_key = key
                job = self._job(key, tracked.adapter)
                # Lines of this file archived before its session was known: rebuild.
                if row.offset > 0 or offset > segment.start:
                    job.acc = None
            job.last_activity = time.monotonic()
            job.dirty = True
            if job.finalized:
                job.finalized = False
            touched.add(job.key)
            if job.acc is not None:
                job.acc.feed(obj, ctx, offset)
        row.line_count += count
        self.stats.lines_archived += count
        return count

    def _bad(self, batch: Batch, tracked: Tracked, offset: int, length: int, reason: str) -> None:
        row = tracked.row
        row.bad_lines += 1
        self.stats.bad_lines += 1
        batch.bad_lines.append(BadLine(row.id, offset, length, reason))
        log.warning(
            "bad_line",
            file=row.path,
            file_id=row.id,
            session=row.job_key,
            offset=offset,
            length=length,
            reason=reason,
        )

    # -- jobs --------------------------------------------------------------------------------

    def _job(self, key: str, adapter: Adapter) -> Job:
        job = self.jobs.get(key)
        if job is None:
            # A session seen for the first time starts empty; one with archived bytes (a
            # restart, a resume) is rebuilt from the archive after the next commit.
            fresh = not self.store.job_has_archive(key)
            job = Job(key, adapter, adapter.new_job(key) if fresh else None)
            self.jobs[key] = job
        return job

    def _invalidate(self, key: str, adapter: Adapter) -> None:
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = Job(key, adapter, None)
        job.acc = None
        job.dirty = True

    def recover(self) -> list[str]:
        """Queue the sessions whose record is missing or stale (after a crash or a stop)."""
        keys = self.store.unfinalized_job_keys()
        for key in keys:
            if key not in self.jobs:
                adapter = self._adapter_of_job(key)
                self.jobs[key] = Job(
                    key, adapter, None, last_activity=time.monotonic(), dirty=True,
                    modified=time.time(),
                )  # fmt: skip
        return keys

    def load_job(self, key: str, adapter: Adapter) -> Accumulator:
        """Rebuild a session's accumulator from the archive alone."""
        acc = adapter.new_job(key)
        max_line = self.config.max_line_bytes
        for row in self.store.files_of_job(key):
            info = adapter.classify(Path(row.path))
            if info is None:
                continue
            ctx = LineContext(row.id, info.role, info.agent_id, info.layout, info.project, row.path)
            for offset, obj in iter_archived_objects(self.store.iter_chunks(row.id), max_line):
                acc.feed(obj, ctx, offset)
        return acc

    def _detail(self, job: Job) -> JobDetail:
        if job.acc is None:
            job.acc = self.load_job(job.key, job.adapter)
        lost, affected = self.store.settle_usage(job.key, job.acc.usage_candidates())
        for other in affected:
            self._mark_affected(other)
        return job.acc.build(
            finalized=job.finalized, machine_id=self.store.machine_id, excluded_keys=lost
        )

    def _mark_affected(self, key: str) -> None:
        """Another job shares messages with one just recomputed: recompute it too."""
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = Job(key, self._adapter_of_job(key), None, finalized=True)
            job.last_activity = time.monotonic()
        job.dirty = True
        self._affected.add(key)

    def _write_due(self, touched: Iterable[str], force: bool = False) -> None:
        """Write the records of touched sessions whose last write is old enough (or all)."""
        now = time.monotonic()
        due: list[tuple[JobDetail, bool]] = []
        for key in sorted(touched):
            job = self.jobs.get(key)
            if job is None or not job.dirty:
                continue
            if force or now - job.last_written >= self.job_write_interval:
                due.append((self._detail(job), job.finalized))
        if due:
            try:
                self.store.write_jobs(due)
            except StoreError as exc:  # the records stay dirty and are written on a retry
                self.record_fault(str(exc))
                raise
            self.stats.jobs_written += len(due)
            for detail, finalized in due:
                if self.on_record is not None:
                    self.on_record(detail.record, finalized)
                job = self.jobs[detail.record.session_id]
                job.dirty = False
                job.last_written = now
                if job.finalized:
                    job.acc = None  # free the memory; rebuilt from the archive if resumed
        if self._affected and not self._settling:
            # Rewrite the jobs whose share of duplicated messages may have moved. Their own
            # message copies did not change, so this does not cascade further.
            self._settling = True
            try:
                while self._affected:
                    keys, self._affected = self._affected, set()
                    self._write_due(keys, force=True)
            finally:
                self._settling = False

    def _commit(self, batch: Batch, snapshot: dict[int, FileRow], touched: set[str]) -> None:
        try:
            self.store.commit(batch, stale_jobs=touched)
        except StoreError as exc:
            # Nothing of the batch is stored: put the offsets back and rebuild the sessions
            # from the archive once a later batch commits.
            for file_id, old in snapshot.items():
                tracked = self.by_id.get(file_id)
                if tracked is not None:
                    tracked.row = old
                    tracked.tail = None  # reloaded from the archive when next needed
            for key in touched:
                job = self.jobs.get(key)
                if job is not None:
                    job.acc = None
                    job.dirty = True
            self.record_fault(str(exc))
            log.error("batch_failed", error=str(exc), files=len(snapshot))
            raise
        self.stats.bytes_archived += batch.raw_bytes
        self.stats.fault = None

    def finalize(self, key: str) -> None:
        """Archive the session's unterminated tails and write its final record."""
        self.finalize_many([key])

    def finalize_many(self, keys: Iterable[str]) -> None:
        """Finalize several sessions with one read pass and one write transaction."""
        keys = list(keys)
        if not keys:
            return
        wanted = set(keys)
        for key in keys:
            if key not in self.jobs:
                self.jobs[key] = Job(key, self._adapter_of_job(key), None)
        tails = [
            t
            for t in self.by_id.values()
            if t.row.job_key in wanted and t.row.state == "active" and self._unread(t)
        ]
        if tails:
            self._drain(tails, final=True)
        for key in keys:
            job = self.jobs[key]
            job.finalized = True
            job.dirty = True
        self._write_due(keys, force=True)
        for key in keys:
            # Free the memory; a resumed session is rebuilt from the archive.
            self.jobs[key].acc = None
        log.info("jobs_finalized", count=len(keys), jobs=keys[:20])

    def _unread(self, tracked: Tracked) -> bool:
        """Does the file hold bytes past the archived offset (a tail, or new appends)?"""
        try:
            if tracked.fd is not None:
                size = os.fstat(tracked.fd).st_size
            else:
                size = os.stat(tracked.row.path).st_size
        except OSError:
            return False
        return size > tracked.row.offset or tracked.row.in_long_line

    def finalize_idle(self, idle_timeout: float, *, fully_read_only: bool = False) -> list[str]:
        """Finalize the sessions whose files have not changed for `idle_timeout` seconds."""
        now = time.time()
        keys = [
            k for k, j in self.jobs.items() if not j.finalized and now - j.modified >= idle_timeout
        ]
        if fully_read_only:
            waiting = {
                t.row.job_key
                for t in self.by_id.values()
                if t.row.state == "active" and t.row.size > t.row.offset + t.pending
            }
            keys = [k for k in keys if k not in waiting]
        self.finalize_many(keys)
        return keys

    def finalize_all(self) -> None:
        """Archive every unterminated tail and finalize every open session (shutdown, import)."""
        waiting = [t for t in self.by_id.values() if t.row.state == "active" and self._unread(t)]
        if waiting:
            self._drain(waiting, final=True)
        self.finalize_many(sorted(k for k, j in self.jobs.items() if not j.finalized))

    def flush(self) -> None:
        """Write every job whose record changed since it was last written."""
        self._write_due(list(self.jobs), force=True)

    def close(self) -> None:
        for tracked in self.by_id.values():
            self._close(tracked)
        for fd, _st, _roots in self._pending.values():
            os.close(fd)
        self._pending.clear()

    # -- rebuild -----------------------------------------------------------------------------

    def rebuild(self, progress: Any = None) -> int:
        """Recompute every job record from the archive alone; return the number of jobs.

        Two passes: the first records every job's message copies (and writes a record), the
        second recomputes the jobs that share messages with another job, now that every copy
        is known.
        """
        keys = self.store.job_keys()
        self.store.clear_usage_keys()
        self.jobs.clear()
        shared: set[str] = set()
        for n, key in enumerate(keys):
            shared |= self._rebuild_one(key)
            if progress is not None:
                progress(n + 1, len(keys))
        for key in sorted(shared):
            self._rebuild_one(key)
        self.store.delete_orphan_jobs(keys)
        return len(keys)

    def _rebuild_one(self, key: str) -> set[str]:
        adapter = self._adapter_of_job(key)
        acc = self.load_job(key, adapter)
        lost, affected = self.store.settle_usage(key, acc.usage_candidates())
        detail = acc.build(finalized=True, machine_id=self.store.machine_id, excluded_keys=lost)
        self.store.write_jobs([(detail, True)])
        return affected

    def _adapter_of_job(self, key: str) -> Adapter:
        rows = self.store.files_of_job(key)
        source = rows[0].source if rows else "claude"
        return ADAPTERS[source]
