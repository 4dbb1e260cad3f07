"""Sessions for the engine: accumulators, job records, finalization and rebuild.

A session's accumulator is fed as lines are read; whenever it could differ from the archive
(a restart, a resume after finalization, a failed commit) it is dropped and rebuilt from the
archive alone, which is also what `rebuild` does for every session.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jobvault.errors import StoreError
from jobvault.ingest.engine_base import EngineBase, Job, Tracked, log
from jobvault.records import JobDetail
from jobvault.sources import ADAPTERS, Adapter, LineContext
from jobvault.sources.base import Accumulator
from jobvault.store.archive import FileRow, iter_archived_objects
from jobvault.store.writer import Batch

MIN_WRITE_INTERVAL = 0.1  # seconds: the shortest lag of an active session's record


class Sessions(EngineBase):
    """Open sessions, their records, and when they are final."""

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
        todo = [
            job
            for job in (self.jobs.get(key) for key in sorted(touched))
            if job is not None
            and job.dirty
            and (force or now - job.last_written >= self._interval(job))
        ]
        if todo:
            try:
                # Settling duplicates, building and writing the records: one transaction.
                with self.store.transaction():
                    for job in todo:
                        started = time.monotonic()
                        due.append((self._detail(job), job.finalized))
                        job.build_cost = time.monotonic() - started
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

    def _interval(self, job: Job) -> float:
        """How long an active session's record may lag its lines.

        Rebuilding a record costs time proportional to the session, so the interval adapts:
        about ten times the last build (a small session is rewritten every 0.1 s, one whose
        record takes a second to build every 10 s, none less often than `job_write_interval`,
        60 s in the daemon), keeping record building under a tenth of one core.
        """
        if math.isinf(self.job_write_interval):  # an import: records only when final
            return math.inf
        return min(self.job_write_interval, max(MIN_WRITE_INTERVAL, 10 * job.build_cost))

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
        keys = sorted(set(keys))
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
        if keys and fully_read_only:
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

    def write_pending(self) -> float | None:
        """Write the records that were held back by the write interval.

        Returns the seconds until the next held-back record is due (None if none is), so the
        daemon wakes up for it instead of at its next rescan.
        """
        dirty = [k for k, j in self.jobs.items() if j.dirty]
        self._write_due(dirty)
        waits = [
            j.last_written + self._interval(j) - time.monotonic()
            for j in self.jobs.values()
            if j.dirty
        ]
        return max(0.0, min(waits)) if waits else None

    def record_fault(self, error: str) -> None:
        """Remember that the database refused a write (shown by `status` until a commit works)."""
        self.stats.last_error = self.stats.fault = error
        self.stats.last_error_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
