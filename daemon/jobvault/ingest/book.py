"""The session book: one accumulator per open session, fed parsed lines, asked for records.

It never writes. A session's accumulator is fed as lines are read; whenever it could differ
from the archive (a restart, a resume after finalization, a failed commit) it is dropped and
rebuilt from the archive alone, through the narrow `ArchiveView` (the files of a job and their
chunks), which is also what `rebuild` does for every session.

A session whose adapter raises an unexpected error (a line shaped as nothing the adapter
expects, say) is *quarantined*: its accumulator is dropped, it is reported to the engine
(which records the fault in the database and in `status`) and it is neither fed nor built
again until `jobvault rebuild`, so one bad session never stops the others.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from jobvault.records import JobDetail
from jobvault.sources import ADAPTERS, Adapter, LineContext
from jobvault.sources.base import Accumulator
from jobvault.store.archive import FileRow, iter_archived_objects

log = structlog.get_logger("jobvault.book")

MIN_WRITE_INTERVAL = 0.1  # seconds: the shortest lag of an active session's record
MAX_WRITE_INTERVAL = 60.0  # seconds: the longest lag of an active session's record
# Seconds the search text of an active session may lag its record. Re-indexing the text
# (up to 32 KB, tokenized again by FTS5) was a quarter of the CPU of a line appended to a
# live session; the record itself still follows within `interval`.
SEARCH_PACE = 5.0


class ArchiveView(Protocol):
    """What the book may read of the archive."""

    def files_of_job(self, job_key: str) -> list[FileRow]: ...

    def source_of_job(self, job_key: str) -> str | None: ...

    def iter_chunks(self, file_id: int) -> Iterator[tuple[int, bytes]]: ...

    def archived_job_keys(self) -> set[str]: ...


@dataclass(slots=True)
class Job:
    key: str
    adapter: Adapter
    acc: Accumulator | None  # None: must be rebuilt from the archive before use
    last_activity: float = 0.0
    modified: float = 0.0  # newest modification time of its files (epoch seconds)
    build_cost: float = 0.0  # seconds the last record build took
    finalized: bool = False
    dirty: bool = False
    last_written: float = 0.0
    written_live: bool = False  # its stored record is the active one written here
    text_written: float = 0.0  # when its search text was last indexed (monotonic)
    text_pending: bool = False  # its record was written, its newer search text not yet

    @property
    def pending(self) -> bool:
        """Something of it waits to be written: its record, or only its search text."""
        return self.dirty or self.text_pending


@dataclass(frozen=True, slots=True)
class Fault:
    """An unexpected error in one session (or one file): what the engine records."""

    kind: str  # "session" | "file"
    key: str
    reason: str
    detail: str


@dataclass
class SessionBook:
    archive: ArchiveView
    max_line: int
    write_interval: float = MAX_WRITE_INTERVAL
    jobs: dict[str, Job] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)
    # Sessions with archived bytes: one met again starts from the archive, not empty. Read
    # once from the database; the engine adds the sessions of every committed round.
    archived: set[str] = field(default_factory=set)
    faults: list[Fault] = field(default_factory=list)  # new since the engine last took them

    # -- sessions --------------------------------------------------------------------------

    def job(self, key: str, adapter: Adapter) -> Job:
        """The session `key`; one seen for the first time starts empty, one with archived
        bytes (a restart, a resume) is rebuilt from the archive when next needed."""
        job = self.jobs.get(key)
        if job is None:
            fresh = key not in self.archived
            job = Job(key, adapter, self._new(key, adapter) if fresh else None)
            self.jobs[key] = job
        return job

    def adapter_of(self, key: str) -> Adapter:
        job = self.jobs.get(key)
        if job is not None:
            return job.adapter
        rows = self.archive.files_of_job(key)
        if rows:
            return ADAPTERS[rows[0].source]
        # No current file (every one superseded): its record is still rewritten (removed,
        # being empty) by its own adapter, under its own id.
        source = self.archive.source_of_job(key)
        return ADAPTERS[source if source in ADAPTERS else "claude"]

    def invalidate(self, key: str, adapter: Adapter | None = None) -> Job:
        """The session's accumulator may differ from the archive: rebuild it when needed."""
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = Job(key, adapter or self.adapter_of(key), None)
        job.acc = None
        job.dirty = True
        return job

    def touch(self, job: Job) -> None:
        if job.finalized:
            job.written_live = False  # its stored record may be final: marked stale
        job.dirty = True
        job.finalized = False
        job.last_activity = time.monotonic()

    def drop(self, key: str) -> None:
        self.jobs.pop(key, None)

    def _new(self, key: str, adapter: Adapter) -> Accumulator | None:
        return None if key in self.quarantined else adapter.new_job(key)

    # -- feeding and building --------------------------------------------------------------

    def feed(self, job: Job, obj: dict[str, Any], ctx: LineContext, offset: int) -> str | None:
        """Feed one line to its session; return the line's bad values (None if fine)."""
        acc = job.acc
        if acc is None:
            return None
        try:
            return acc.feed(obj, ctx, offset)
        except Exception as exc:  # an adapter bug or a line it cannot take: contain it
            self.quarantine(job.key, "the adapter failed on a line", exc, f"offset {offset}")
            return None

    def load(self, job: Job) -> Accumulator | None:
        """The session's accumulator, rebuilt from the archive alone if it is not in memory."""
        if job.acc is None and job.key not in self.quarantined:
            try:
                job.acc = self.replay(job.key, job.adapter)
            except Exception as exc:
                self.quarantine(job.key, "the adapter failed reading the archive", exc)
        return job.acc

    def replay(self, key: str, adapter: Adapter) -> Accumulator:
        """A new accumulator fed with every archived line of the session's current files."""
        acc = adapter.new_job(key)
        for row in self.archive.files_of_job(key):
            info = adapter.classify(Path(row.path))
            if info is None:
                continue
            ctx = LineContext(row.id, info.role, info.agent_id, info.layout, info.project, row.path)
            for offset, obj in iter_archived_objects(
                self.archive.iter_chunks(row.id), self.max_line
            ):
                acc.feed(obj, ctx, offset)
        return acc

    def build(self, job: Job, machine_id: str | None, excluded: frozenset[str]) -> JobDetail | None:
        """The session's record (None if it is quarantined)."""
        acc = self.load(job)
        if acc is None:
            return None
        started = time.monotonic()
        try:
            detail = acc.build(
                finalized=job.finalized, machine_id=machine_id, excluded_keys=excluded
            )
        except Exception as exc:
            self.quarantine(job.key, "the adapter failed building the record", exc)
            return None
        job.build_cost = time.monotonic() - started
        return detail

    def quarantine(self, key: str, reason: str, exc: BaseException, where: str = "") -> None:
        self.quarantined.add(key)
        job = self.jobs.get(key)
        if job is not None:
            job.acc = None
            job.dirty = job.text_pending = False
        detail = "".join(traceback.format_exception_only(exc)).strip()
        if where:
            detail = f"{detail} ({where})"
        self.faults.append(Fault("session", key, reason, detail[:2000]))
        log.error("session_quarantined", session=key, reason=reason, error=detail[:500])

    def take_faults(self) -> list[Fault]:
        faults, self.faults = self.faults, []
        return faults

    # -- what is due -------------------------------------------------------------------------

    def interval(self, job: Job) -> float:
        """How long an active session's record may lag its lines.

        Rebuilding a record costs time proportional to the session, so the interval adapts:
        about ten times the last build (a small session is rewritten every 0.1 s, one whose
        record takes a second to build every 10 s, none less often than `write_interval`,
        60 s in the daemon), keeping record building under a tenth of one core.
        """
        if math.isinf(self.write_interval):  # an import: records only when final
            return math.inf
        return min(self.write_interval, max(MIN_WRITE_INTERVAL, 10 * job.build_cost))

    def _wait(self, job: Job, now: float) -> float:
        """Seconds until what waits of `job` is due (<= 0: due now)."""
        if job.finalized:
            return 0.0
        wait = math.inf
        if job.dirty:
            wait = job.last_written + self.interval(job) - now
        if job.text_pending:
            wait = min(wait, job.text_written + SEARCH_PACE - now)
        return wait

    def due(self, keys: Iterable[str], now: float, force: bool = False) -> list[Job]:
        """The sessions among `keys` whose record (or held-back search text) should be
        written now."""
        out = []
        for key in sorted(set(keys)):
            job = self.jobs.get(key)
            if job is None or not job.pending or key in self.quarantined:
                continue
            if force or self._wait(job, now) <= 0:
                out.append(job)
        return out

    def defer_text(self, jobs: Iterable[Job], now: float) -> set[str]:
        """Those of `jobs` (live, due) whose search text may wait: indexed less than
        `SEARCH_PACE` ago. Never during an import, whose records are all final."""
        return {
            j.key for j in jobs
            if not j.finalized and j.text_written and now - j.text_written < SEARCH_PACE
        }  # fmt: skip

    def written(self, job: Job, now: float, text_stale: bool = False) -> None:
        """`job`'s record was written at `now`; its search text too unless `text_stale`."""
        job.dirty = False
        job.last_written = now
        job.written_live = not job.finalized
        job.text_pending = text_stale and not job.finalized
        if not job.text_pending:
            job.text_written = now
        if job.finalized:
            job.acc = None  # free the memory; rebuilt from the archive if resumed

    def next_due(self, now: float) -> float | None:
        """Seconds until the next held-back record is due (None if none is)."""
        waits = [
            self._wait(j, now)
            for j in self.jobs.values()
            if j.pending and j.key not in self.quarantined
        ]
        return max(0.0, min(waits)) if waits else None
