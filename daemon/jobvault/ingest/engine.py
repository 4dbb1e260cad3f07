"""The ingest engine: the tracker's actions → the reader's lines → the session book → the writer.

One one-way pipeline of parts with typed seams, composed here:

* `tracker.FileTracker` decides what each path holds (actions; no database, no lines);
* `rounds.RoundReader` plans a round from the actions and reads the files (through
  `reading.read_file`) into the round's batch and the `book.SessionBook`, which feeds the
  sessions' accumulators and builds records, and never writes;
* `cold.ColdReader` sends cold sessions (an import, an old backfill) to `workers` processes;
* `writing.RoundWriter` commits **one batch per round** in one transaction — new file rows,
  offsets and states, chunks, bad lines, faults, then the settled duplicates and the records
  that are due — and only then applies the round to the tracker. If it fails nothing moved.

Synchronous and single-threaded by design: `jobvault import` drives it in a loop and the
daemon from one worker thread, so there is exactly one writer.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import structlog

from jobvault.config import Config
from jobvault.errors import StoreError
from jobvault.ingest import workers
from jobvault.ingest.book import MAX_WRITE_INTERVAL, Job, SessionBook
from jobvault.ingest.cold import ColdReader
from jobvault.ingest.rounds import Faults, Round, RoundReader, Stats
from jobvault.ingest.tracker import Action, Continue, Create, FileTracker, Read, Tracked, Vanish
from jobvault.ingest.writing import Deferred, RoundWriter
from jobvault.records import JobDetail, JobRecord
from jobvault.sources import Adapter, spill
from jobvault.store.writer import Batch, FaultRow, Store, key_rows

log = structlog.get_logger("jobvault.engine")

IMPORT_GROUP_BYTES = 16 * 1024 * 1024  # transcripts read per group by `import`
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
        self.stats = Stats(files_tracked=len(self.tracker.by_path))
        self.faults = Faults(self.stats, self.book)
        # Unterminated tails of deleted files, reported when their session is finalized for
        # good (idle, shutdown), unless the file reappears and finishes the line first.
        self._deferred: Deferred = {}
        self.reader = RoundReader(config, store, self.tracker, self.book, self.stats,
                                  self.faults, self._deferred)  # fmt: skip
        self.writer = RoundWriter(store, self.tracker, self.book, self.stats, self._deferred)
        self._unread_seen: dict[int, int] | None = None  # file id -> unread bytes, at `snapshot`
        self.cold = ColdReader(config, store, self.tracker, self.book, self.reader,
                               self.writer, self.stats)  # fmt: skip
        # Set (from any thread) to stop reading after the batch in progress: a shutdown
        # commits what was read and leaves the rest in the files for the next start.
        self.stopping = threading.Event()
        self._importing = False
        self._cold_import = False  # an import large enough for the workers, as a whole

    @staticmethod
    def _max_open(config: Config) -> int:
        """How many transcript descriptors to hold: the config, within the process's limit,
        leaving room for SQLite, the socket server and the watcher."""
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = soft - 96 if soft != resource.RLIM_INFINITY else 1 << 20
        return max(8, min(config.max_open_files, room))

    # -- what the parts hold (the service and tests look at these) -----------------------

    @property
    def by_path(self) -> dict[str, Tracked]:
        return self.tracker.by_path

    @property
    def by_id(self) -> dict[int, Tracked]:
        return self.tracker.by_id

    @property
    def jobs(self) -> dict[str, Job]:
        return self.book.jobs

    @property
    def sessions_read(self) -> set[str]:
        return self.writer.sessions_read

    @property
    def on_record(self) -> Callable[[JobRecord, bool], None] | None:
        return self.writer.on_record

    @on_record.setter
    def on_record(self, callback: Callable[[JobRecord, bool], None] | None) -> None:
        self.writer.on_record = callback

    def scan(self, roots: Iterable[Path]) -> list[str]:
        return self.tracker.scan(roots)

    def record_fault(self, error: str) -> None:
        """Remember that the database refused a write (shown by `status` until a commit works)."""
        self.stats.fault = error
        self.stats.note_error(error)

    # -- entry points --------------------------------------------------------------------

    def poll(
        self,
        paths: Iterable[str],
        roots: Iterable[Path],
        *,
        final: bool = False,
        finalize: Iterable[str] = (),
        hints: dict[str, str] | None = None,
    ) -> int:
        """Look at the given paths and read each to its end; return the bytes read.

        Cold sessions go to the worker processes. New files read here each hold a descriptor
        until their round commits, so the paths are taken a slice at a time, within the
        process's descriptors (10,000 new files under a limit of 256 are many rounds, never a
        file skipped for want of a descriptor).
        """
        roots = list(roots)
        present: list[str] = []
        missing: list[str] = []
        for path in paths:
            (present if os.path.lexists(path) else missing).append(path)
        return self._poll(present, missing, roots, final, finalize, hints)

    def _poll(
        self,
        present: list[str],
        missing: list[str],
        roots: list[Path],
        final: bool = False,
        finalize: Iterable[str] = (),
        hints: dict[str, str] | None = None,
    ) -> int:
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
                total += self._slice(actions, roots, final, (), hints)
                actions, held = [], 0
        total += self._slice(actions, roots, final, finalize, hints)
        if not self._importing and self.cold.busy:
            total += self._collect(roots, final, finalize, wait_all=True)
            self.cold.close()  # the backfill is done: free the processes
        return total

    def _slice(
        self,
        actions: list[Action],
        roots: list[Path],
        final: bool,
        finalize: Iterable[str],
        hints: dict[str, str] | None,
    ) -> int:
        """Read what a slice of looks found: cold sessions go to the workers (their results
        are committed as they come back), the rest is read here."""
        cold, idle, actions = self.cold.split(actions, final, hints, force=self._cold_import)
        finalize = set(finalize)
        if cold:
            self.cold.stopping = self.stopping.is_set()
            self.cold.submit(cold, roots)
            finalize -= set(cold)  # final already (built by a worker)
        total = 0
        idle -= set(cold)
        if idle and not final and not self._importing:
            # A backfill finalizes old sessions as it reads them (their tails too), so memory
            # holds the sessions being read, not all of history.
            old = [a for a in actions if _key_of(a) in idle]
            actions = [a for a in actions if _key_of(a) not in idle]
            total += self._run(old, roots, final=True, finalize=idle)
        total += self._run(actions, roots, final=final, finalize=finalize)
        if self.cold.busy:
            total += self._collect(roots, final, finalize, wait_all=False)
        return total

    def _collect(
        self, roots: list[Path], final: bool, finalize: Iterable[str], wait_all: bool
    ) -> int:
        read, fallback = self.cold.collect(wait_all)
        if fallback:  # what the workers could not read is read here
            actions = [a for path in fallback for a in self._look(path)]
            read += self._run(actions, roots, final=final, finalize=finalize)
        return read

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
        # Tracked files under the roots that the walk did not find: deleted or moved away;
        # and skipped paths that are gone (no longer counted as skipped in `status`).
        # (Files under a root removed from the configuration are left alone.)
        # (The walk found the paths it lists: only the others need a look for existence.)
        unseen = [
            p
            for p in [*self.tracker.by_path, *self.tracker.limbo, *self.tracker.skipped]
            if p not in seen and (p.startswith(prefixes) or p in files)
        ]
        gone = [p for p in unseen if not os.path.lexists(p)]
        read = self._poll(paths + [p for p in unseen if p not in gone], gone, roots)
        try:
            # Keep the WAL bounded even when readers come and go (never waits for them).
            self.store.checkpoint()
        except sqlite3.Error as exc:
            log.warning("checkpoint_failed", error=str(exc))
        return read

    def tick(
        self, paths: list[str] | None, roots: Iterable[Path], idle_timeout: float
    ) -> float | None:
        """One round of the daemon: read `paths` (None: rescan every root), finalize the
        idle sessions, write the records held back; return the seconds until the next
        held-back record is due (None if none is)."""
        roots = list(roots)
        if paths is None:
            self.rescan(roots)
        elif paths:
            self.poll(paths, roots)
        self.finalize_idle(idle_timeout)
        return self.write_pending()

    def _look(self, path: str) -> list[Action]:
        if self.faults.skip(path):
            return []  # quarantined until it changes
        try:
            return self.tracker.look(path)
        except Exception as exc:  # an unexpected error about one file: contain it
            self.faults.file(path, "identifying the file failed", exc)
            return []

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
        rnd = Round(finalize=set(finalize))
        self.reader.plan(rnd, actions, roots, final, force)
        total = 0
        while True:
            self.reader.stopping = stopping = self.stopping.is_set()
            self.reader.read(rnd)
            nxt = rnd.carry()
            if stopping:
                nxt.work = [w for w in nxt.work if w.force]
            later = {w.row.job_key for w in nxt.work if w.row.job_key} & rnd.finalize
            rnd.finalize -= later
            nxt.finalize = later
            self.writer.commit(rnd)
            total += rnd.read
            if not nxt.work:
                if later:  # (their reads were stopped: finalize with what was read)
                    self.writer.commit(Round(finalize=later))
                break
            rnd = nxt
        return total

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
            rnd = Round()
            self.writer.report_deferred(rnd, keys)
            self.writer.commit(rnd)

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
        self._close_quarantined(
            k
            for k, j in self.book.jobs.items()
            if not j.finalized and now - j.modified >= idle_timeout
        )
        return keys

    def _close_quarantined(self, keys: Iterable[str]) -> None:
        """Quarantined sessions cannot be built: their records (if any) are made final as
        they stand, with status 'error', so that no job stays active for good."""
        closing = sorted(set(keys) & self.book.quarantined)
        if closing:
            self.store.close_records(closing)
            for key in closing:
                # Its row changed outside the writer's state: never diffed against again.
                self.writer.written.pop(key, None)
                job = self.book.jobs.get(key)
                if job is not None:
                    job.finalized = True
            log.info("quarantined_jobs_closed", count=len(closing), jobs=closing[:20])

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
        # deleted file's are read regardless (see RoundReader.plan).
        self._run(tails, list(self.config.watch), final=True,
                  finalize=keys - self.book.quarantined)  # fmt: skip
        self._flush_deferred(None)
        self._close_quarantined(keys)

    def flush(self) -> None:
        """Write every job whose record changed since it was last written, and every search
        text held back by its pace."""
        pending = {k for k, j in self.book.jobs.items() if j.pending}
        self.writer.commit(Round(force_write=pending, flush=True))

    def write_pending(self) -> float | None:
        """Write the records that were held back by the write interval.

        Returns the seconds until the next held-back record is due (None if none is), so the
        daemon wakes up for it instead of at its next rescan.
        """
        now = time.monotonic()
        pending = [k for k, j in self.book.jobs.items() if j.pending]
        due = self.book.due(pending, now)
        if due:
            self.writer.commit(Round(force_write={j.key for j in due}))
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

        Files are read grouped by session, a group of whole sessions at a time, and each
        session is finalized in the transaction that reads its last file, so memory holds a
        few sessions at a time, not the whole import. Cold sessions are read by the worker
        processes while this process writes.
        """
        roots = list(roots)
        if paths is None:  # the caller may have walked the roots already (for a progress bar)
            paths = self.scan(roots)
        if sizes is None:  # ... and looked at their sizes
            sizes = {path: file_size(path) for path in paths}
        keyed: list[tuple[str, str]] = []
        hints: dict[str, str] = {}
        for path in paths:
            classified = self.tracker.classify(path)
            key = classified[1].job_key if classified else None
            if key is None and classified is not None:
                # A flat subagent file names its session inside: peek, so it is read with its
                # parent instead of reopening (and re-reading) the finalized parent later.
                key = _peek_job_key(path, classified[0])
                if key is not None:
                    hints[path] = key
            keyed.append((key if key is not None else "\uffff", path))
        keyed.sort()
        last: dict[str, int] = {key: i for i, (key, _) in enumerate(keyed)}
        self._importing = True
        self._cold_import = sum(sizes.values()) >= workers.MIN_COLD_BYTES
        self.writer.track_cold = False  # (what the workers read is final: see RoundWriter)
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
                self.poll([p for _, p in group], roots, final=True, finalize=done, hints=hints)
                if progress is not None:
                    progress([p for _, p in group])
                start = end
            self._collect(roots, True, set(last), wait_all=True)
        finally:
            self._importing = self._cold_import = False
            self.writer.track_cold = True
            self.cold.close()
        self.finalize_all()
        return paths

    def rebuild(self, progress: Any = None, batch: int = 256) -> int:
        """Recompute every job record from the archive alone; return the number of jobs.

        Every session's message copies are settled first; then each record is built once,
        with the copies other sessions hold a better copy of excluded, so the result does not
        depend on the order of sessions. A session that fails is quarantined; the rest go on.
        """
        keys = self.store.job_keys()
        self.writer.forget_all()  # every record is written whole again
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
                        self.store.settle_usage(key, key_rows(acc.usage_candidates()))
                    except StoreError:
                        raise
                    except Exception as exc:
                        self.book.quarantine(key, "the adapter failed reading the archive", exc)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        for part in _parts(keys, batch):  # pass 2: the records
            jobs = []
            for key in part:
                if key in self.book.quarantined:
                    continue
                job = self.book.invalidate(key)
                job.finalized = True
                jobs.append(job)
            self._rebuild_part(jobs)
            for job in jobs:
                self.book.drop(job.key)
            done += len(part)
            if progress is not None:
                progress(done, total)
        self.store.delete_orphan_jobs(keys)
        return len(keys)

    def _rebuild_part(self, jobs: list[Job]) -> None:
        lost = self.store.lost_keys(j.key for j in jobs)
        details: list[tuple[JobDetail, bool]] = []
        for job in jobs:
            detail = self.book.build(job, self.store.machine_id, lost.get(job.key, frozenset()))
            if detail is not None:
                details.append((detail, True))
        with self.store.transaction():
            for refused, exc in self.store.write_jobs(details):
                self.book.quarantine(refused.record.session_id, "the database refused it", exc)
            faults = self.book.take_faults()
            if faults:
                rows = [FaultRow(f.kind, f.key, f.reason, f.detail) for f in faults]
                self.store.write_batch(Batch(faults=rows))
                self.stats.faults += len(faults)

    # -- status ------------------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """What can be read safely from another thread while the engine works: counters and
        sizes (for `status` during a long round); `snapshot` has the rest."""
        stats = self.stats
        return {
            "files_tracked": len(self.tracker.by_path),
            "files_open": self.tracker.open_count,
            "bytes_archived_since_start": stats.bytes_archived,
            "lines_archived_since_start": stats.lines_archived,
            "bad_lines_since_start": stats.bad_lines,
            "lost_bytes_since_start": stats.lost_bytes,
            "sessions_quarantined": len(self.book.quarantined),
            "files_quarantined": len(self.faults.files),
            "faults_since_start": stats.faults,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
            "store_fault": stats.fault,
        }

    def _unread_bytes(self, ids: Iterable[int]) -> dict[int, int]:
        """The bytes past the committed offset of these files, for those that have some."""
        out: dict[int, int] = {}
        by_id = self.tracker.by_id
        for file_id in ids:
            tracked = by_id.get(file_id)
            if tracked is None:
                continue
            row = tracked.row
            if row.codec == "zstd":
                continue
            # A partial last line is not lag: it waits for its newline.
            unread = row.size - row.offset - tracked.pending
            if row.state == "active" and unread > 0:
                out[file_id] = unread
        return out

    def snapshot(self) -> dict[str, Any]:
        """What the engine knows now (for `status`); call it on the engine's thread.

        The unread bytes are looked for among the files changed since the last snapshot
        and those unread then (`FileTracker.changed`): a round costs what it touched, not a
        walk over every file of the history (3,000 files took 3 to 35 ms a round)."""
        now = time.time()
        tracker = self.tracker
        if self._unread_seen is None:  # the first: every file
            ids: Iterable[int] = list(tracker.by_id)
        else:
            ids = tracker.changed | self._unread_seen.keys()
        tracker.changed = set()
        self._unread_seen = self._unread_bytes(ids)
        pending = sum(self._unread_seen.values())
        lag = max(
            (now - tracker.by_id[i].row.mtime_ns / 1e9 for i in self._unread_seen), default=0.0
        )
        skipped: dict[str, int] = {}
        for reason in [*self.tracker.skipped.values(), *self.tracker.unlisted.values()]:
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
            "files_quarantined": len(self.faults.files),
            "faults_since_start": self.stats.faults,
            "pending_bytes": pending,
            "ingest_lag_seconds": round(lag, 3) if pending else 0.0,
            "last_error": self.stats.last_error,
            "last_error_at": self.stats.last_error_at,
            "store_fault": self.stats.fault,
        }

    def close(self) -> None:
        self.cold.close()
        self.tracker.close_all()


def _key_of(action: Action) -> str | None:
    """The session an action's file belongs to, as far as its path or row says."""
    if isinstance(action, Create):
        return action.info.job_key
    tracked = getattr(action, "tracked", None)
    return tracked.row.job_key if tracked is not None else None


def _parts(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
