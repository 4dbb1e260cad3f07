"""The engine's shared state: what is tracked, the open sessions, counters.

The engine is split by concern into mixins over this base: `tracking.FileTracking` (file
identity, descriptors, renames, truncation, deletion), `sessions.Sessions` (session
accumulators, records, finalization, rebuild) and `engine.Engine` (reading, parsing, batching).
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from jobvault.config import Config
from jobvault.records import JobRecord
from jobvault.sources import ADAPTERS, Adapter, FileInfo, spill
from jobvault.sources.base import Accumulator
from jobvault.store.archive import FileRow
from jobvault.store.writer import Batch, Store

log = structlog.get_logger("jobvault.engine")

CHUNK_MAX = 4 * 1024 * 1024
MAX_WRITE_INTERVAL = 60.0  # seconds: the longest lag of an active session's record
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
    build_cost: float = 0.0  # seconds the last record build took
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


class EngineBase:
    """State shared by the engine's parts."""

    def __init__(
        self, config: Config, store: Store, *, job_write_interval: float = MAX_WRITE_INTERVAL
    ) -> None:
        self.config = config
        self.store = store
        self.job_write_interval = job_write_interval
        # Very long sessions keep their per-message state in scratch files next to the
        # database; those of a killed run are removed (this process holds the writer lock).
        if store.path:
            db = Path(store.path)
            spill.set_spill_dir(db.parent, db.name)
            spill.remove_stale(db.parent, db.name)
        else:
            spill.set_spill_dir(None)
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

    @property
    def max_open(self) -> int:
        """How many transcript descriptors to hold: the config, within the process's limit."""
        return max(8, min(self.config.max_open_files, self._fd_room))

    # Implemented by the mixins and the engine; declared here so each part can call the
    # others (and mypy can check those calls).
    def _drain(self, files: list[Tracked], final: bool, force: bool = False) -> int:
        raise NotImplementedError

    def poll(self, paths: Iterable[str], roots: Iterable[Path]) -> int:
        raise NotImplementedError

    def _invalidate(self, key: str, adapter: Adapter) -> None:
        raise NotImplementedError

    def finalize(self, key: str) -> None:
        raise NotImplementedError

    def finalize_many(self, keys: Iterable[str]) -> None:
        raise NotImplementedError

    def finalize_idle(self, idle_timeout: float, *, fully_read_only: bool = False) -> list[str]:
        raise NotImplementedError

    def _adapter_of_job(self, key: str) -> Adapter:
        raise NotImplementedError

    def _job(self, key: str, adapter: Adapter) -> Job:
        raise NotImplementedError

    def _write_due(self, touched: Iterable[str], force: bool = False) -> None:
        raise NotImplementedError

    def _commit(self, batch: Batch, snapshot: dict[int, FileRow], touched: set[str]) -> None:
        raise NotImplementedError

    def _fingerprint_ok(self, tracked: Tracked, path: str | None = None) -> bool:
        raise NotImplementedError

    def _close(self, tracked: Tracked) -> None:
        raise NotImplementedError

    def record_fault(self, error: str) -> None:
        raise NotImplementedError
