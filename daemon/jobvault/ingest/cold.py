"""Cold sessions to the worker processes, and what they send back into rounds.

A session is *cold* when everything this look found of it is new bytes (files created or
grown), it has no state in memory, and it is final once read: an import, or a backfill of
files idle for longer than `idle_timeout`. Enough cold work (`MIN_COLD_BYTES`) goes to
`workers.WorkerPool`, a unit of whole sessions at a time; the results are gathered into
rounds and committed by the one writer. Everything else — and any file a worker could not
read — is read by the engine itself.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

import structlog

from jobvault.config import Config
from jobvault.ingest import workers
from jobvault.ingest.book import Fault, SessionBook
from jobvault.ingest.rounds import Round, RoundReader, Stats
from jobvault.ingest.tracker import Action, Create, FileTracker, Read, Tracked
from jobvault.ingest.workers import FileTask, UnitResult, WorkerPool
from jobvault.ingest.writing import RoundWriter
from jobvault.store.writer import BadLine, Store

log = structlog.get_logger("jobvault.engine")

COMMIT_BYTES = 8 * 1024 * 1024  # transcripts' bytes gathered per transaction
QUEUE_HIGH = 64  # units waiting to be sent: past this, collecting waits for the workers
POOL_BREAKS = 4  # worker pools that may die in a process's life; after that the engine reads


def _project(actions: list[Action]) -> str:
    """The project of a cold session's files (to order the sessions by)."""
    for action in actions:
        if isinstance(action, Create) and action.info.project:
            return action.info.project
        if isinstance(action, Read) and action.tracked.info.project:
            return action.tracked.info.project
    return ""


class ColdReader:
    def __init__(
        self,
        config: Config,
        store: Store,
        tracker: FileTracker,
        book: SessionBook,
        reader: RoundReader,
        writer: RoundWriter,
        stats: Stats,
    ) -> None:
        self.config, self.store, self.tracker, self.book = config, store, tracker, book
        self.reader, self.writer, self.stats = reader, writer, stats
        self._pool: WorkerPool | None = None
        self.stopping = False
        self._queue: deque[workers.UnitTask] = deque()
        # Units sent, with the pool each went to (one that failed may be an old pool's).
        self._pending: dict[Future[UnitResult], tuple[workers.UnitTask, WorkerPool]] = {}
        self._owners: dict[int, Tracked] = {}  # file id -> its tracked file (rows in flight)
        self._round = Round()
        self._gathered = 0
        self._fallback: list[str] = []
        self._breaks = 0  # worker pools dropped because a worker died

    def split(
        self,
        actions: list[Action],
        final: bool,
        hints: dict[str, str] | None = None,
        *,
        force: bool = False,
    ) -> tuple[dict[str, list[Action]], set[str], list[Action]]:
        """The cold sessions among `actions`: those for the workers (key → their actions),
        every cold session's key, and the actions read here.

        A cold session read here is finalized in the round that reads it, as the workers'
        are. Too little cold work (`MIN_COLD_BYTES`) is read here, unless `force` (an import
        large enough as a whole, read a slice at a time); so is every session larger than
        `MAX_SESSION_BYTES` (it may spill to scratch files, which belong to this process).
        """
        hints = hints or {}
        now = time.time()
        idle = self.config.idle_timeout
        sessions: dict[str, list[Action]] = {}
        warm: set[str] = set()
        rest: list[Action] = []
        sizes: dict[str, int] = {}
        for action in actions:
            key: str | None = None
            size = 0
            mtime = now
            if isinstance(action, Create):
                key = action.info.job_key or hints.get(action.path)
                size, mtime = action.st.st_size, action.st.st_mtime
            elif isinstance(action, Read) and action.tracked.row.state == "active":
                row = action.tracked.row
                key = row.job_key
                size = max(row.size - row.offset, row.disk_size if row.codec == "zstd" else 0)
                try:  # (the row's time is its last read's: the file may have grown since)
                    mtime = os.stat(row.path).st_mtime
                except OSError:
                    key = None
                if row.partial_tail and key is not None:
                    # Its archived unterminated tail is continued: the engine withdraws the
                    # tail's report and rebuilds the record with the joined line read whole
                    # from the archive; a worker would lose that line.
                    warm.add(key)
            if key is None:
                rest.append(action)
                warm.update(_session_keys(action))
                continue
            if (
                key in self.book.jobs
                or key in self.book.quarantined
                or not (final or now - mtime >= idle)
            ):
                warm.add(key)
            sessions.setdefault(key, []).append(action)
            sizes[key] = sizes.get(key, 0) + size
        idle_keys = {key for key in sessions if key not in warm}
        cold: dict[str, list[Action]] = {}
        for key, acts in sessions.items():
            if key in warm or sizes[key] > workers.MAX_SESSION_BYTES:
                rest.extend(acts)
            else:
                cold[key] = acts
        if self.config.workers <= 0 or (
            not force and sum(sizes[k] for k in cold) < workers.MIN_COLD_BYTES
        ):
            return {}, idle_keys, actions
        return cold, idle_keys, rest

    def submit(self, cold: dict[str, list[Action]], roots: list[Path]) -> None:
        """Queue the cold sessions for the workers (their rows are numbered now)."""
        groups: list[list[FileTask]] = []
        # A project's sessions side by side: a resumed session and the one it copies then
        # mostly share a unit, whose worker settles the messages they share (`run_unit`).
        for key in sorted(cold, key=lambda k: (_project(cold[k]), k)):
            group = []
            for action in cold[key]:
                if isinstance(action, Create):
                    action.source.close()
                    os.close(action.fd)  # the worker opens it afresh
                    row = self.reader.new_row(action, roots)
                    if row.job_key is None:
                        row.job_key = key
                    tracked = Tracked(row, action.info, action.adapter)
                    group.append(FileTask(replace(row), action.info, new=True))
                else:
                    assert isinstance(action, Read)
                    tracked = action.tracked
                    tail = self.tracker.archived_tail(tracked) if tracked.row.fp_len else b""
                    group.append(FileTask(replace(tracked.row), tracked.info, new=False,
                                          tail=tail))  # fmt: skip
                self._owners[tracked.row.id] = tracked
            groups.append(group)
        self._queue.extend(workers.units(groups, self.book.archived))
        self._pump()

    def _pump(self) -> None:
        while self._queue and not self.stopping:
            pool = self._start()
            if pool is None:  # too many pools died: what was queued is read by the engine
                for task in self._queue:
                    self._give_back(task)
                self._queue.clear()
                return
            if len(self._pending) >= 2 * pool.workers + 1:
                return
            task = self._queue.popleft()
            try:
                future = pool.submit(task)
            except Exception as exc:  # a worker died (OOM killer, kill -9): a new pool
                # (BrokenProcessPool; or an OSError of the executor starting a process)
                self._queue.appendleft(task)
                self._broken(pool, exc)
                continue
            self._pending[future] = (task, pool)

    def _broken(self, pool: WorkerPool, cause: BaseException) -> None:
        """Drop a pool a worker of which died; its tasks in flight fail, and are read here."""
        error = "a worker process died: the files it held are read by the engine"
        self._breaks += 1
        log.error("worker_pool_broken", pools_broken=self._breaks, error=error,
                  cause=repr(cause)[:300])  # fmt: skip
        self.stats.note_error(error)
        self._pool = None
        try:
            pool.abandon()
        except Exception as exc:  # (the executor's own teardown): the pool is gone anyway
            log.warning("worker_pool_teardown_failed", error=repr(exc)[:300])

    def _give_back(self, task: workers.UnitTask) -> None:
        """A task no worker will read: the engine reads its files itself."""
        self._fallback.extend(ft.row.path for ft in task.files)
        self._forget(task)

    def _forget(self, task: workers.UnitTask) -> None:
        for ft in task.files:
            self._owners.pop(ft.row.id, None)

    @property
    def busy(self) -> bool:
        return bool(self._queue or self._pending or self._round.cold_files or self._fallback)

    def collect(self, wait_all: bool = False) -> tuple[int, list[str]]:
        """Commit what the workers sent back (all of it with `wait_all`); return (bytes
        archived, paths the workers could not read: the engine reads them itself)."""
        total = 0
        fallback: list[str] = []
        while self._pending:
            block = wait_all or len(self._queue) > QUEUE_HIGH
            done, _ = wait(list(self._pending), timeout=None if block else 0,
                           return_when=FIRST_COMPLETED)  # fmt: skip
            if not done:
                break
            for future in done:
                task, pool = self._pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # a worker died: its files are read here instead
                    log.warning("worker_failed", error=repr(exc)[:300], files=len(task.files))
                    self._give_back(task)
                    if isinstance(exc, BrokenProcessPool) and pool is self._pool:
                        self._broken(pool, exc)
                    continue
                self._gathered += self._gather(self._round, result, fallback)
            self._pump()
            if self._gathered >= COMMIT_BYTES:
                total += self._commit()
        if wait_all or not (self._pending or self._queue):
            total += self._commit()
        if self.stopping and self._queue:  # what was not sent is read at the next start
            log.info("cold_read_stopped", units_left=len(self._queue))
            for task in self._queue:
                self._forget(task)
            self._queue.clear()
        fallback += self._fallback  # (the units given back: a worker died, or no pool is left)
        self._fallback = []
        return total, fallback

    def _commit(self) -> int:
        rnd, gathered = self._round, self._gathered
        if not (rnd.cold_files or rnd.prebuilt or not rnd.batch.empty()):
            return 0
        self._round, self._gathered = Round(), 0
        self.writer.commit(rnd)
        for _tracked, row, _tail in rnd.cold_files:
            self._owners.pop(row.id, None)
        return gathered

    def _gather(self, rnd: Round, result: UnitResult, fallback: list[str]) -> int:
        read = 0
        for fr in result.files:
            if fr.row is None:
                log.info("cold_file_given_back", file=fr.task.row.path, file_id=fr.task.row.id,
                         reason=fr.error)  # fmt: skip
                fallback.append(fr.task.row.path)
                continue
            row = fr.row
            row.bad_lines += len(fr.bad)
            if fr.task.new:
                rnd.batch.new_files.append(row)
            else:
                rnd.batch.files[row.id] = row
            rnd.batch.chunks.extend(fr.chunks)
            for offset, length, reason in fr.bad:
                rnd.batch.bad_lines.append(BadLine(row.id, offset, length, reason))
                log.warning("bad_line", file=row.path, file_id=row.id, session=row.job_key,
                            offset=offset, length=length, reason=reason)  # fmt: skip
            self.stats.bad_lines += len(fr.bad)
            rnd.cold_files.append((self._owners[row.id], row, fr.tail))
            read += sum(c.raw_length for c in fr.chunks)
        self.stats.lines_archived += result.lines
        for session in result.sessions:
            if session.fault is not None:
                reason, detail = session.fault
                self.book.quarantined.add(session.key)
                self.book.faults.append(Fault("session", session.key, reason, detail))
                log.error("session_quarantined", session=session.key, reason=reason,
                          error=detail[:500])  # fmt: skip
            elif session.detail is not None:
                rnd.prebuilt[session.key] = (session.detail, session.candidates,
                                             session.excluded)  # fmt: skip
        rnd.read += read
        return read

    def _start(self) -> WorkerPool | None:
        """The worker pool, started if need be; None once `POOL_BREAKS` pools have died."""
        if self._pool is None:
            if self._breaks >= POOL_BREAKS:
                return None
            try:
                self._pool = WorkerPool(
                    self.config.workers, Path(self.store.path),
                    max_line=self.config.max_line_bytes, level=self.config.compression_level,
                    follow_symlinks=self.config.follow_symlinks,
                    machine_id=self.store.machine_id,
                )  # fmt: skip
            except Exception as exc:  # (no processes to be had): the engine reads everything
                log.error("worker_pool_failed", error=repr(exc)[:300])
                self.stats.note_error(f"the worker processes could not start: {exc}")
                self._breaks = POOL_BREAKS
                return None
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (after `collect(wait_all=True)`: nothing is in flight)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _session_keys(action: Action) -> Iterable[str]:
    """Sessions an action touches that the split cannot send away (kept warm)."""
    tracked = getattr(action, "tracked", None)
    key = tracked.row.job_key if tracked is not None else None
    return [key] if key else []
