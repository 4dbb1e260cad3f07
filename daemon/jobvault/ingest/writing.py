"""The one commit of a round, and applying it once it is durable.

`RoundWriter.commit` writes everything a round produced in **one transaction**: new file
rows, offsets and states, chunks, bad lines and faults (`Store.write_batch`), then the
duplicates of every session whose record is due, settled together before any record is built
(so which copy of a message counts never depends on the order sessions were read in), then
the records of those sessions and of the sessions whose share of a duplicated message moved.
Only when the transaction has committed is the round applied to the tracker; if it fails
nothing moved, and the sessions it touched are rebuilt from the archive when next used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import structlog

from jobvault.errors import StoreError
from jobvault.ingest.book import Job, SessionBook
from jobvault.ingest.rounds import Round, Stats
from jobvault.ingest.tracker import Continue, Create, FileTracker, Skip
from jobvault.records import JobDetail, JobRecord
from jobvault.sources import ADAPTERS
from jobvault.sources.base import Accumulator
from jobvault.store.increments import Row, Written
from jobvault.store.writer import BadLine, Batch, FaultRow, Store, key_rows

log = structlog.get_logger("jobvault.engine")

Deferred = dict[int, tuple[str | None, BadLine]]


class RoundWriter:
    def __init__(
        self,
        store: Store,
        tracker: FileTracker,
        book: SessionBook,
        stats: Stats,
        deferred: Deferred,
    ) -> None:
        self.store, self.tracker, self.book = store, tracker, book
        self.stats, self.deferred = stats, deferred
        # Called on the engine's thread after a record is written: (record, finalized).
        self.on_record: Callable[[JobRecord, bool], None] | None = None
        # What was last written and settled of each live session, so its next write changes
        # only what differs (store/increments.py). Dropped when final, and all of it when a
        # transaction fails (the next writes are whole).
        self.written: dict[str, Written] = {}
        self.settled: dict[str, dict[str, Row]] = {}
        self.settled_by: dict[str, Accumulator] = {}  # the accumulator `settled` follows
        self.lost: dict[str, frozenset[str]] = {}  # the keys each live session lost
        self.sessions_read: set[str] = set()  # sessions that got lines (for `import`)
        # False during `import`: a file a worker read to its end belongs to a session that
        # was finalized with it and that the import never looks at again, so it is not kept
        # in the tracker (its row, identity and tail made the import's memory grow with the
        # history, about 2 KB a file: 17 MB at 10,000 sessions).
        self.track_cold = True

    def commit(self, rnd: Round) -> None:
        """Write the round in one transaction, then apply it; raise StoreError if refused."""
        book = self.book
        changed: set[str] | None = None
        for key in sorted(rnd.finalize):
            job = book.jobs.get(key)
            if job is None:
                if key in book.quarantined or not (
                    key in book.archived or self.store.job_has_record_or_archive(key)
                ):
                    continue  # nothing of it was ever read
                if changed is None:
                    changed = _changed_sessions(rnd)
                if key not in changed and self.store.has_final_record(key):
                    continue  # final already, and nothing of it changed (an import again)
                job = book.invalidate(key)
            job.finalized = True
            job.dirty = True
        now = time.monotonic()
        keys = rnd.touched | rnd.finalize | rnd.invalidated | rnd.force_write
        due = [j for j in book.due(keys, now, force=bool(rnd.force_write))
               if j.key not in rnd.prebuilt]  # fmt: skip
        # Sessions that gained bytes: their stored records are marked not final, unless the
        # stored one is known to be the live record written here.
        rnd.batch.stale_jobs |= {
            k for k in rnd.touched if not ((job := book.jobs.get(k)) and job.written_live)
        }
        self._take_faults(rnd.batch)
        if rnd.batch.empty() and not due and not rnd.prebuilt:
            self.apply(rnd)
            return
        written: list[tuple[JobDetail, bool]] = []
        try:
            with self.store.transaction():
                self.store.write_batch(rnd.batch)
                # (records held back by their interval keep the text's pace too)
                defer = set() if rnd.flush else book.defer_text(due, now)
                written = self._records(due, rnd, defer)
        except StoreError as exc:
            self._rollback(rnd)
            self.stats.fault = str(exc)
            self.stats.note_error(str(exc))
            log.error("batch_failed", error=str(exc), files=len(rnd.work))
            raise
        self.apply(rnd)
        book.archived |= rnd.touched | set(rnd.prebuilt)
        self.sessions_read |= rnd.touched | set(rnd.prebuilt)
        for bad in rnd.deferred:
            self.deferred[bad.file_id] = (self._job_of_file(bad.file_id), bad)
        self.stats.bytes_archived += rnd.batch.raw_bytes
        self.stats.bad_lines -= min(self.store.withdrawn_bad_lines, self.stats.bad_lines)
        self.stats.fault = None
        self.stats.jobs_written += len(written)
        for detail, finalized in written:
            job = book.jobs.get(detail.record.session_id)
            if job is not None:
                state = self.written.get(job.key)
                book.written(job, now, text_stale=state is not None and state.text_stale)
                if job.finalized:
                    book.drop(job.key)  # final: rebuilt from the archive if resumed
            if self.on_record is not None and not detail.empty:  # (no job: nothing to tell)
                self.on_record(detail.record, finalized)
        for job in due:  # quarantined or refused: not dirty any more either way
            if job.key in book.quarantined:
                job.dirty = job.text_pending = False

    def _records(
        self, due: list[Job], rnd: Round, defer_text: set[str]
    ) -> list[tuple[JobDetail, bool]]:
        """Settle the due sessions' duplicates, then build and write their records and those
        of the other sessions whose share of a duplicated message moved (the live ones in
        `defer_text` keep their indexed search text, `SessionBook.defer_text`)."""
        store, book = self.store, self.book
        affected: set[str] = set()
        ready: list[Job] = []
        partial: dict[str, set[str]] = {}  # live sessions settled by their changed keys
        for job in due:
            acc = book.load(job)
            if acc is None:
                continue
            try:
                hit, changed = self._settle(job, acc)
            except StoreError:
                raise
            except Exception as exc:
                book.quarantine(job.key, "the adapter failed listing its messages", exc)
                continue
            affected |= hit
            if changed is not None:
                partial[job.key] = changed
            ready.append(job)
        hit, by_new = store.settle_many({k: c for k, (_d, c, _x) in rnd.prebuilt.items()})
        affected |= hit
        settled = {j.key for j in ready} | set(rnd.prebuilt)
        # A final record that only new sessions share messages with is rebuilt only if it
        # loses one to them (a resumed session read after the one it copies mostly wins
        # nothing: the copies are equal and the first path wins).
        unchanged = by_new - affected - settled - book.jobs.keys()
        unchanged -= store.new_losses(unchanged, rnd.prebuilt)
        affected |= by_new - unchanged
        others = []
        for key in sorted(affected - settled):
            if key in book.quarantined:
                continue
            other = book.jobs.get(key)
            if other is None:
                # Not in memory: its record is final (recover() queued every other one).
                other = book.invalidate(key)
                other.finalized = True
            others.append(other)
        # Which copies a session loses: asked of every session at once, after all settled; a
        # live session settled by its changes keeps what it lost, give or take those keys.
        whole = (settled | {j.key for j in others}) - (partial.keys() - affected)
        lost = store.lost_keys(whole)
        for key, changed in partial.items():
            if key in whole or key not in self.lost:
                continue
            lost[key] = frozenset((self.lost[key] - changed) | store.lost_among(key, changed))
        details: list[tuple[JobDetail, bool]] = []
        machine = store.machine_id
        for job in [*ready, *others]:
            excluded = lost.get(job.key)
            if excluded is None:  # (a partial one whose losses were not known yet)
                excluded = store.lost_keys([job.key])[job.key]
            detail = book.build(job, machine, excluded)
            if detail is not None:
                details.append((detail, job.finalized))
            self._remember(job, excluded)
        for key, (prebuilt, _candidates, excluded) in rnd.prebuilt.items():
            # Built without what it lost to its unit's sessions: rebuilt here only when it
            # loses other messages (to a session of another unit, or of an earlier round).
            if lost.get(key, frozenset()) != excluded:
                job = book.invalidate(key, ADAPTERS[prebuilt.record.source])
                job.finalized = True
                rebuilt = book.build(job, machine, lost[key])
                if rebuilt is not None:
                    details.append((rebuilt, True))
                book.drop(key)
            else:
                details.append((prebuilt, True))
        for refused, error in store.write_jobs(details, self.written, defer_text):
            book.quarantine(refused.record.session_id, "the database refused the record", error)
            details = [(d, f) for d, f in details if d is not refused]
        batch = Batch()
        self._take_faults(batch)  # raised while building: recorded in this same transaction
        if not batch.empty():
            store.write_batch(batch)
        return details

    def _settle(self, job: Job, acc: Accumulator) -> tuple[set[str], set[str] | None]:
        """Settle a due session's message copies; return (other sessions affected, the keys
        written when settled by what changed — a live session whose stored rows are known
        here — or None when settled whole)."""
        live = not job.finalized and not acc.spilled
        known = self.settled.get(job.key)
        if live and known is not None and self.settled_by.get(job.key) is acc:
            changes = acc.usage_changes()
            if changes is not None:
                return self.store.settle_changes(job.key, changes, known)
        known = {} if live else None
        affected = self.store.settle_usage(job.key, key_rows(acc.usage_candidates()), known)
        if known is not None:
            self.settled[job.key], self.settled_by[job.key] = known, acc
        else:
            self._forget(job.key)
        return affected, None

    def _remember(self, job: Job, excluded: frozenset[str]) -> None:
        if job.finalized:
            self._forget(job.key)
        elif job.key in self.settled:
            self.lost[job.key] = excluded

    def _forget(self, key: str) -> None:
        for state in (self.settled, self.settled_by, self.lost):
            state.pop(key, None)

    def forget_all(self) -> None:
        """Forget every live session's written state: their next writes are whole."""
        self.written.clear()
        for state in (self.settled, self.settled_by, self.lost):
            state.clear()

    def _take_faults(self, batch: Batch) -> None:
        for fault in self.book.take_faults():
            batch.faults.append(FaultRow(fault.kind, fault.key, fault.reason, fault.detail))
            self.stats.faults += 1
            if fault.kind == "session":  # (a file's fault is noted where it is found)
                self.stats.note_error(f"session {fault.key} quarantined: {fault.reason}")

    def _rollback(self, rnd: Round) -> None:
        """The transaction failed: the tracker keeps its committed state; the sessions the
        round touched are rebuilt from the archive after the next commit."""
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
        self.forget_all()

    def apply(self, rnd: Round) -> None:
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
                if t.source is w.source:
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
        tracker.changed.update(w.tracked.row.id for w in rnd.work)
        for t, row, tail in rnd.cold_files:  # read by a worker
            tracker.changed.add(row.id)
            t.row = row
            if tail is not None:
                t.tail = tail
            t.last_activity = now
            if not self.track_cold:
                tracker.skipped.pop(row.path, None)
                log.debug("file_imported", file=row.path, file_id=row.id, job=row.job_key)
                continue
            if tracker.by_id.get(row.id) is not t:
                tracker.add(t)
                tracker.skipped.pop(row.path, None)
                log.debug("file_tracked", file=row.path, file_id=row.id, job=row.job_key)
        self.stats.files_tracked = len(tracker.by_path)
        if tracker.open_count > tracker.max_open:
            tracker.limit_open_files()
        self._note_skips(rnd.skips)

    def _note_skips(self, skips: list[Skip]) -> None:
        for skip in skips:
            if self.tracker.skipped.get(skip.path) != skip.reason:
                self.tracker.skipped[skip.path] = skip.reason
                log.warning("file_skipped", file=skip.path, reason=skip.reason)
                if skip.reason.startswith(("unreadable", "cannot stat")):
                    self.stats.note_error(f"{skip.path}: {skip.reason}")

    def _job_of_file(self, file_id: int) -> str | None:
        for t in self.tracker.deleted_by_inode.values():
            if t.row.id == file_id:
                return t.row.job_key
        active = self.tracker.by_id.get(file_id)
        return active.row.job_key if active is not None else None

    def report_deferred(self, rnd: Round, keys: set[str] | None) -> None:
        """Report the held-back tails of these sessions' deleted files (all when None)."""
        for file_id, (key, bad) in list(self.deferred.items()):
            if keys is None or key in keys:
                del self.deferred[file_id]
                rnd.batch.bad_lines.append(bad)
                self.stats.bad_lines += 1
                log.warning("bad_line", file_id=bad.file_id, session=key, offset=bad.offset,
                            length=bad.length, reason=bad.reason)  # fmt: skip


def _changed_sessions(rnd: Round) -> set[str]:
    """The sessions a round changes anything of: bytes, files, or their records."""
    batch = rnd.batch
    files = [*batch.new_files, *batch.files.values()]
    return (
        rnd.touched | rnd.invalidated | batch.stale_jobs | set(rnd.prebuilt)
        | {row.job_key for row in files if row.job_key is not None}
    )  # fmt: skip
