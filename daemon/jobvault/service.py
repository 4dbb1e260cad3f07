"""The daemon's lifecycle: start-up, the event loop's schedule, signals and shutdown.

All engine work runs on one worker thread (so SQLite has exactly one writer); the event loop
only decides *when*: watchdog hints and the periodic rescan mark files dirty, an idle timer
finalizes sessions. Signal handlers only set an event. Shutdown runs in a fixed order with a
bound: stop intake (watcher) → read what is left → finalize every session → close the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from jobvault.config import Config
from jobvault.engine import Engine
from jobvault.errors import JobvaultError, StoreError
from jobvault.records import JobRecord
from jobvault.server import Hub, InstanceLock, Server, ServerLimits, bind_socket, prepare_socket_dir
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from jobvault.watch import Watcher

log = structlog.get_logger("jobvault.service")
T = TypeVar("T")

SHUTDOWN_BOUND = 60.0
MAX_BACKOFF = 30.0


@dataclass
class Daemon:
    """A running daemon; `stop()` asks it to shut down."""

    config: Config
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    engine: Engine | None = None
    server: Server | None = None
    started_at: float = field(default_factory=time.time)
    _dirty: set[str] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _rescan_dirs: set[str] = field(default_factory=set)

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def hint(self, path: str) -> None:
        """Called on the loop (from the watcher thread) with a path that changed."""
        if path.endswith(os.sep):
            self._rescan_dirs.add(path.rstrip(os.sep))
        else:
            self._dirty.add(path)
        self._wake.set()


async def _on_worker(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)


async def serve(daemon: Daemon) -> None:
    """Run the daemon until `daemon.stop()`; always shuts down in order."""
    config = daemon.config
    roots = list(config.watch)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobvault-ingest")
    loop = asyncio.get_running_loop()
    watcher: Watcher | None = None
    store: Store | None = None
    engine: Engine | None = None
    server: Server | None = None
    instance = InstanceLock(config.socket)
    bound: Path | None = None
    hub = Hub()
    try:
        prepare_socket_dir(config.socket)
        instance.acquire()  # one instance at a time: fail before touching anything
        store = Store(
            await _on_worker(executor, open_writer, config.db, config.synchronous),
            config.compression_level,
        )
        engine = Engine(config, store)
        daemon.engine = engine
        sock = bind_socket(config.socket)
        bound = config.socket
        last_snapshot: dict[str, Any] = {}

        async def status() -> dict[str, Any]:
            nonlocal last_snapshot
            assert engine is not None
            try:
                last_snapshot = await asyncio.wait_for(_on_worker(executor, engine.snapshot), 2.0)
                fresh = True
            except TimeoutError:  # the worker is busy with a long batch
                fresh = False
            return {
                **last_snapshot,
                "snapshot_fresh": fresh,
                "watch": [str(r) for r in roots],
                "watch_existing": [str(r) for r in roots if r.is_dir()],
                "idle_timeout": config.idle_timeout,
                "socket": str(config.socket),
            }

        server = Server(config.db, _limits(config), status, hub)
        await server.start(sock)
        daemon.server = server

        def on_record(record: JobRecord, finalized: bool) -> None:
            event = "job.finalized" if finalized else "job.updated"
            loop.call_soon_threadsafe(hub.publish, event, record.to_dict())

        engine.on_record = on_record
        if config.watch_events:
            watcher = Watcher(loop, daemon.hint)
            watcher.refresh(roots)
        log.info(
            "daemon_started",
            db=str(config.db),
            socket=str(config.socket),
            roots=[str(r) for r in roots],
            idle_timeout=config.idle_timeout,
        )
        recovered = await _on_worker(executor, engine.recover)
        if recovered:
            log.info("sessions_recovered", count=len(recovered))
        daemon.ready.set()
        await _loop(daemon, engine, executor, watcher, roots)
    finally:
        # Fixed order: stop intake, close the socket server, finalize, close the database,
        # remove the socket file.
        if watcher is not None:
            watcher.stop()
        if server is not None:
            await server.close()
        if engine is not None:
            try:
                await asyncio.wait_for(
                    _on_worker(executor, _final_pass, engine, roots), SHUTDOWN_BOUND
                )
            except (TimeoutError, JobvaultError) as exc:
                log.error("shutdown_incomplete", error=str(exc) or type(exc).__name__)
            await _on_worker(executor, engine.close)
        if store is not None:
            await _on_worker(executor, store.close)
        executor.shutdown(wait=True)
        if bound is not None:
            with contextlib.suppress(FileNotFoundError):
                bound.unlink()
        instance.release()
        log.info("daemon_stopped")


def _limits(config: Config) -> ServerLimits:
    return ServerLimits(
        request_timeout=config.request_timeout,
        sql_time_limit=config.sql_time_limit,
        sql_max_rows=config.sql_max_rows,
        max_request_bytes=config.max_request_bytes,
        max_connections=config.max_connections,
        idle_timeout=config.connection_idle_timeout,
    )


def _final_pass(engine: Engine, roots: list[Path]) -> None:
    engine.poll_all(roots)
    engine.finalize_all()


async def _loop(
    daemon: Daemon,
    engine: Engine,
    executor: ThreadPoolExecutor,
    watcher: Watcher | None,
    roots: list[Path],
) -> None:
    config = daemon.config
    next_rescan = 0.0  # the first pass is the start-up backfill
    backoff = 0.0
    while not daemon.stopping.is_set():
        now = time.monotonic()
        try:
            if now >= next_rescan or daemon._rescan_dirs:
                daemon._rescan_dirs.clear()
                daemon._dirty.clear()
                if watcher is not None:
                    watcher.refresh(roots)
                await _on_worker(executor, engine.rescan, roots)
                next_rescan = time.monotonic() + config.rescan_interval
            elif daemon._dirty:
                paths, daemon._dirty = sorted(daemon._dirty), set()
                await _on_worker(executor, engine.poll, paths, roots)
            await _on_worker(executor, engine.finalize_idle, config.idle_timeout)
            await _on_worker(executor, engine.write_pending)
            backoff = 0.0
        except StoreError as exc:
            # The database refused a write (disk full, read-only...): nothing moved; retry
            # with backoff. The files still hold the bytes.
            backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)
            log.error("store_error_retrying", error=str(exc), retry_in=backoff)
            next_rescan = time.monotonic() + backoff
        timeout = max(0.0, min(next_rescan - time.monotonic(), _idle_check(config)))
        if config.batch_interval and not daemon.stopping.is_set():
            # Coalesce bursts of appends into one batch.
            await asyncio.sleep(config.batch_interval)
        daemon._wake.clear()
        if daemon._dirty or daemon._rescan_dirs or daemon.stopping.is_set():
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(daemon._wake.wait(), timeout)


def _idle_check(config: Config) -> float:
    return max(0.5, min(config.idle_timeout / 4, 30.0))


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT ask for a clean stop; a second SIGINT forces an immediate exit."""
    loop = asyncio.get_running_loop()
    interrupted = 0

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted += 1
        if interrupted > 1:
            log.warning("forced_exit")
            os._exit(130)
        daemon.stop()

    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    loop.add_signal_handler(signal.SIGINT, on_sigint)


@contextlib.asynccontextmanager
async def run_daemon(config: Config) -> AsyncIterator[Daemon]:
    """Start the daemon in this event loop for the duration of the block (tests, embedding)."""
    daemon = Daemon(config)
    task = asyncio.create_task(serve(daemon))
    ready = asyncio.create_task(daemon.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises the start-up error
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, SHUTDOWN_BOUND + 10)


async def main(config: Config) -> None:
    daemon = Daemon(config)
    install_signal_handlers(daemon)
    await serve(daemon)
