"""The ingest engine: tracked files → archived chunks → parsed lines → job records.

Synchronous and single-threaded by design: `jobvault import` drives it in a loop and the
daemon drives it from one worker thread, so there is exactly one writer. Each `poll` reads
what was appended to the files it is given (complete lines only), parses every line once,
feeds the session accumulators and commits chunks, offsets, bad lines and due job records in
one transaction. If that transaction fails nothing moved: offsets are restored and the
affected sessions are rebuilt from the archive on their next use.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from jobvault.config import Config
from jobvault.ingest.engine_base import (
    CHUNK_MAX,
    MAX_WRITE_INTERVAL,
    TAIL_CHECK,
    TOO_LONG,
    UNTERMINATED,
    Job,
    Stats,
    Tracked,
    log,
)
from jobvault.ingest.sessions import Sessions
from jobvault.ingest.tail import Segment, fingerprint, fingerprint_len, read_lines, read_tail
from jobvault.ingest.tracking import FileTracking
from jobvault.sources import Adapter, LineContext
from jobvault.store.archive import FileRow
from jobvault.store.writer import BadLine, Batch, Chunk, Store

__all__ = ["Engine", "Job", "Stats", "Tracked"]


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


IMPORT_GROUP_BYTES = 16 * 1024 * 1024  # transcripts read between finalizations by `import`


def file_size(path: str) -> int:
    """A file's size, 0 when it cannot be stat'ed (it is looked at again when read)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _iter_segment_lines(segment: Segment) -> Iterator[tuple[int, memoryview]]:
    """The lines of a segment, as views of its bytes (a long line is not copied)."""
    data = segment.data
    view = memoryview(data)
    start = 0
    while True:
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        yield segment.start + start, view[start:newline]
        start = newline + 1
    if start < len(data):
        yield segment.start + start, view[start:]


class Engine(FileTracking, Sessions):
    """Tails files into the archive and keeps job records current."""

    def __init__(
        self, config: Config, store: Store, *, job_write_interval: float = MAX_WRITE_INTERVAL
    ) -> None:
        super().__init__(config, store, job_write_interval=job_write_interval)
        self._load_files()
        # `ingest_once` finalizes session by session itself; the daemon's idle check would
        # otherwise close a session whose flat subagent file is still to be read.
        self._importing = False

    def poll(self, paths: Iterable[str], roots: Iterable[Path]) -> int:
        """Track and read the given paths until each is read to its end; return bytes read."""
        roots = list(roots)
        todo: list[Tracked] = []
        present: list[tuple[str, os.stat_result]] = []
        missing: list[str] = []
        for path in paths:  # one stat per path
            try:
                present.append((path, os.stat(path)))
            except FileNotFoundError:
                missing.append(path)
            except OSError as exc:
                log.warning("stat_failed", file=path, error=str(exc))
        # Paths that exist first, missing ones last: a rename's new name must be seen
        # before its old name is taken for a deletion.
        for path, st in present:
            tracked = self.track_stat(path, st, roots)
            if tracked is not None and (
                tracked.row.size > tracked.row.offset or tracked.row.in_long_line
            ):
                todo.append(tracked)
        for path in missing:
            self.gone(path)
        return self._drain(todo, final=False)

    def poll_all(self, roots: Iterable[Path]) -> int:
        roots = list(roots)
        return self.poll(self.scan(roots), roots)

    def ingest_once(
        self,
        roots: Iterable[Path],
        progress: Any = None,
        group_size: int = 64,
        paths: list[str] | None = None,
        sizes: dict[str, int] | None = None,
    ) -> list[str]:
        """Read every transcript under `roots` once and finalize it (`jobvault import`).

        Files are read grouped by session and each session is finalized as soon as all of its
        files are read, so memory holds a few sessions at a time, not the whole import.
        """
        roots = list(roots)
        if paths is None:  # the caller may have walked the roots already (for a progress bar)
            paths = self.scan(roots)
        if sizes is None:  # ... and looked at their sizes
            sizes = {path: file_size(path) for path in paths}
        keyed: list[tuple[str, str]] = []
        for path in paths:
            classified = self.classify(Path(path))
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
            self._ingest_groups(keyed, last, sizes, roots, progress, group_size)
        finally:
            self._importing = False
        self.finalize_all()
        return paths

    def _ingest_groups(
        self,
        keyed: list[tuple[str, str]],
        last: dict[str, int],
        sizes: dict[str, int],
        roots: list[Path],
        progress: Any,
        group_size: int,
    ) -> None:
        start = 0
        while start < len(keyed):
            # A group ends after `group_size` files or IMPORT_GROUP_BYTES of transcripts, so
            # the sessions in memory at once stay few however large they are.
            end, size = start, 0
            while end < len(keyed) and end - start < group_size and size < IMPORT_GROUP_BYTES:
                size += sizes.get(keyed[end][1], 0)
                end += 1
            group = keyed[start:end]
            self.poll([p for _, p in group], roots)
            done = sorted(
                {
                    k
                    for k, _ in group
                    if last[k] < end and k in self.jobs and not self.jobs[k].finalized
                }
            )
            self.finalize_many(done)
            if progress is not None:
                progress([p for _, p in group])
            start = end

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
            # Very long sessions whose per-message state is in a scratch file (spill.py).
            "sessions_spilled": sum(
                1 for j in self.jobs.values() if j.acc is not None and j.acc.spilled
            ),
            "pending_bytes": pending,
            "ingest_lag_seconds": round(lag, 3) if pending else 0.0,
            "last_error": self.stats.last_error,
            "last_error_at": self.stats.last_error_at,
            "store_fault": self.stats.fault,
        }

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
            if not final and self.jobs and not self._importing:
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
        # Cut the segments into chunks and start compressing them before parsing, so the
        # compression thread works while this one parses.
        groups: list[tuple[Chunk, list[Segment]]] = []
        run: list[Segment] = []
        run_size = 0
        for segment in segments:
            run.append(segment)
            run_size += len(segment.data)
            if run_size >= CHUNK_MAX:
                groups.append(self._chunk(row.id, run))
                run, run_size = [], 0
        if run:
            groups.append(self._chunk(row.id, run))
        read = 0
        for chunk, members in groups:
            for segment in members:
                read += len(segment.data)
                if segment.kind == "long":
                    if segment.line_start:
                        self._bad(batch, tracked, segment.start, len(segment.data), TOO_LONG)
                        chunk.line_count += 1
                        row.line_count += 1
                else:
                    chunk.line_count += self._parse_segment(tracked, segment, batch, touched)
                if segment.kind == "tail":
                    row.partial_tail = True
            batch.chunks.append(chunk)
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

    def _chunk(self, file_id: int, run: list[Segment]) -> tuple[Chunk, list[Segment]]:
        data = run[0].data if len(run) == 1 else b"".join(seg.data for seg in run)
        chunk = Chunk(file_id, run[0].start, data, 0)
        self.store.pack(chunk)
        return chunk, run

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
        loads = orjson.loads
        for offset, line in _iter_segment_lines(segment):
            count += 1
            problem = None
            obj: Any = None
            if len(line) > max_line:
                problem = TOO_LONG
            elif line:
                try:
                    obj = loads(line)
                except orjson.JSONDecodeError as exc:
                    if not line.tobytes().isspace():  # a blank line is no error
                        problem = f"invalid JSON: {exc}"
                else:
                    if obj.__class__ is not dict:
                        problem = "not a JSON object"
            if is_tail:
                # The unterminated last line of a finalized file: archived, always reported.
                problem = UNTERMINATED + (f" ({problem})" if problem else "")
            if problem is not None:
                self._bad(batch, tracked, offset, len(line), problem)
            if obj.__class__ is not dict:
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
            if not job.dirty or job.finalized or job.key not in touched:
                job.dirty = True
                job.finalized = False
                touched.add(job.key)
            if job.acc is not None:
                bad_value = job.acc.feed(obj, ctx, offset)
                if bad_value is not None and problem is None:
                    self._bad(batch, tracked, offset, len(line), bad_value)
        if job is not None:
            job.last_activity = time.monotonic()
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

    def close(self) -> None:
        for tracked in self.by_id.values():
            self._close(tracked)
        for fd, _st, _roots in self._pending.values():
            os.close(fd)
        self._pending.clear()
