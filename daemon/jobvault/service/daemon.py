"""The daemon's lifecycle: start-up, the event loop's schedule, signals, reload and shutdown.

All engine work runs on one worker thread (so SQLite has exactly one writer); the event loop
only decides *when*: watchdog hints and the periodic rescan mark files dirty, an idle timer
finalizes sessions. Signal handlers only set events.

Start-up: instance lock → writer lock → database and migrations → socket (bound, or passed
by systemd) → dashboard (127.0.0.1, if enabled) → READY=1 → backfill (STATUS= reports
progress). Shutdown, in a fixed order with a bound: STOPPING=1 → stop intake (watcher; the
read in progress ends after its batch) → close the dashboard, then the socket server →
finalize every session with what was read → close the database → remove the socket file
(unless systemd owns it) → release the locks.

After every round the worker checks that the database path still names the open file
(`store/guard.py`) and takes the snapshot `status` reads, so `status` never waits for the
engine. When the database was deleted or moved, the daemon shuts down without writing
another byte into the lost file, puts the open copy back at the path and starts again on it
(`serve` runs one such cycle after another); when it was replaced, it saves its copy beside
it and exits with code 74.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from jobvault import pricing
from jobvault.config import Config
from jobvault.errors import JobvaultError, StoreError
from jobvault.ingest.engine import Engine
from jobvault.ingest.watch import Watching, open_watcher
from jobvault.records import JobRecord
from jobvault.serve.methods import Limits
from jobvault.serve.server import Hub, Server, ServerLimits, bind_socket, prepare_socket_dir
from jobvault.service import dashboard
from jobvault.service.systemd import Notifier, listen_socket, watchdog_interval
from jobvault.store.db import open_writer
from jobvault.store.guard import DatabaseGuard, Incident
from jobvault.store.lock import InstanceLock, WriterLock
from jobvault.store.writer import Store
from jobvault.team.pusher import Pusher

log = structlog.get_logger("jobvault.service")
T = TypeVar("T")

SHUTDOWN_BOUND = 60.0
MAX_BACKOFF = 30.0
STATUS_EVERY = 5.0
GUARD_EVERY = 2.0  # seconds between the loop's stat of the database path
HEALTHY_RESCAN_FACTOR = 10  # full rescans this much rarer while the watcher misses nothing


@dataclass
class Daemon:
    """A running daemon; `stop()` asks it to shut down, `request_reload()` to re-read config."""

    config: Config
    # Re-reads the configuration on SIGHUP (the CLI passes its file and flags along).
    reloader: Callable[[], Config] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    engine: Engine | None = None
    server: Server | None = None
    web: dashboard.WebServer | None = None  # the dashboard, when it runs
    pusher: Pusher | None = None  # the team vault's background push ([sync] url)
    started_at: float = field(default_factory=time.time)
    _dirty: set[str] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _rescan_dirs: set[str] = field(default_factory=set)
    _reload: asyncio.Event = field(default_factory=asyncio.Event)
    _executor: ThreadPoolExecutor | None = None
    # What `status` shows of the engine: its last snapshot, taken at the end of each round.
    snapshot: dict[str, Any] = field(default_factory=dict)
    snapshot_at: float = 0.0
    in_round: bool = False  # a round is under way: the snapshot is the previous round's
    guard: DatabaseGuard | None = None
    incident: Incident | None = None  # the last thing that happened to the database file
    incidents: int = 0
    incident_pending: Incident | None = None  # found by the guard, not yet acted on
    _stop_requested: bool = False

    async def on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the engine's thread (the only thread that may touch the writer)."""
        assert self._executor is not None, "the daemon is not running"
        return await _on_worker(self._executor, fn, *args)

    def stop(self) -> None:
        self._stop_requested = True
        self._halt()

    def _halt(self) -> None:
        self.stopping.set()
        self._wake.set()
        if self.engine is not None:
            # Let a long backlog read end after the batch in progress (thread-safe Event).
            self.engine.stopping.set()

    def after_round(self) -> None:
        """On the worker, once per round: check the database file, then take the snapshot.

        The hook an engine loop calls between rounds (never during one): the guard compares
        the database path with the open file (and re-creates a deleted lock file); an
        incident stops the daemon before anything else is written.
        """
        engine = self.engine
        if self.guard is not None and self.incident_pending is None:
            incident = self.guard.check()
            if incident is not None:
                self.incident_pending = incident
        if engine is not None:
            self.snapshot = engine.snapshot()
            self.snapshot_at = time.time()
        self.in_round = False

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def hint(self, path: str) -> None:
        """Called on the loop (by the watcher) with a path that changed."""
        if path.endswith(os.sep):
            self._rescan_dirs.add(path.rstrip(os.sep))
        else:
            self._dirty.add(path)
        self._wake.set()


async def _on_worker(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)


async def serve(daemon: Daemon) -> None:
    """Run the daemon until `daemon.stop()`; always shuts down in order.

    A cycle ends early when the database file was deleted or moved under it: its open copy
    is put back, and the next cycle starts on it (a replaced file ends the daemon instead).
    """
    while True:
        incident = await _serve_once(daemon)
        if incident is None or daemon._stop_requested:
            return
        if incident["kind"] == "replaced":
            raise StoreError(f"{incident['message']}; {incident['action']}")
        daemon.stopping.clear()
        daemon.ready.clear()  # set again once the next cycle serves
        daemon._wake.clear()
        log.warning("daemon_restarting", reason=incident["kind"])


async def _serve_once(daemon: Daemon) -> Incident | None:
    """One cycle: start, run until stopped, shut down in order; the incident that ended it."""
    config = daemon.config
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobvault-ingest")
    daemon._executor = executor
    daemon.incident_pending = None
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    watcher: Watching | None = None
    store: Store | None = None
    engine: Engine | None = None
    server: Server | None = None
    web: dashboard.WebServer | None = None
    instance = InstanceLock(config.socket)
    writer_lock = WriterLock(config.db)
    owned_socket: Path | None = None
    hub = Hub()
    helpers: list[asyncio.Task[None]] = []
    incident: Incident | None = None
    try:
        prepare_socket_dir(config.socket)
        instance.acquire()  # one instance at a time: fail before touching anything
        writer_lock.acquire()  # one writer per database, the lock file deleted or not
        if writer_lock.tightened is not None:
            log.warning("db_dir_tightened", directory=str(config.db.parent),
                        old_mode=f"{writer_lock.tightened:o}", mode="700")  # fmt: skip
        if writer_lock.open_note is not None:
            log.warning("db_dir_open", message=writer_lock.open_note)
        store = Store(
            await _on_worker(executor, open_writer, config.db, config.synchronous),
            config.compression_level,
        )
        pricing.configure(config.pricing)
        daemon.guard = DatabaseGuard(config.db, writer_lock)
        daemon.guard.record()
        sock = listen_socket()  # systemd socket activation: serve it, never unlink it
        if sock is None:
            sock = bind_socket(config.socket)
            owned_socket = config.socket
        own = dashboard.socket_methods(daemon, lambda: store, lambda: web)
        server = Server(config.db, _limits(config), _status_provider(daemon), hub, own)
        # The socket answers at once (`status` says "starting" until the engine is up): the
        # engine loads every tracked file, and the dashboard imports its web stack, meanwhile.
        await server.start(sock)
        daemon.server = server
        daemon.snapshot, daemon.snapshot_at = {}, 0.0  # (a restarted cycle: not the last one's)
        engine = await _on_worker(executor, Engine, config, store)
        daemon.engine = engine
        web = daemon.web = await dashboard.start(config, server, hub)  # (never fatal)

        def on_record(record: JobRecord, finalized: bool) -> None:
            event = "job.finalized" if finalized else "job.updated"
            if hub.subscribers:  # (a record's dict is built only when someone listens)
                loop.call_soon_threadsafe(hub.publish, event, record.to_dict())

        engine.on_record = on_record
        if config.watch_events:
            watcher = open_watcher(loop, daemon.hint)
            watcher.refresh(list(config.watch))
        log.info(
            "daemon_started",
            db=str(config.db),
            socket=str(config.socket),
            socket_activated=owned_socket is None,
            roots=[str(r) for r in config.watch],
            idle_timeout=config.idle_timeout,
        )
        recovered = await _on_worker(executor, engine.recover)
        if recovered:
            log.info("sessions_recovered", count=len(recovered))
        await _on_worker(executor, daemon.after_round)
        daemon.ready.set()
        notifier.ready("database open, socket listening; reading transcripts")
        helpers.append(asyncio.create_task(_report_status(daemon, engine, notifier)))
        helpers.append(asyncio.create_task(_watch_database(daemon)))
        daemon.pusher = Pusher(lambda: daemon.config)  # idle unless [sync] url is set
        helpers.append(asyncio.create_task(daemon.pusher.run()))
        interval = watchdog_interval()
        if interval:
            helpers.append(asyncio.create_task(_watchdog(notifier, interval)))
        await _loop(daemon, engine, executor, watcher)
    finally:
        incident = daemon.incident_pending
        notifier.stopping()
        if daemon.pusher is not None:
            daemon.pusher.stop()  # between batches; the query in flight is cancelled
        for task in helpers:
            task.cancel()
        if watcher is not None:
            watcher.stop()
        if web is not None:  # before the socket server: its pages read on the server's readers
            await web.close()
        if server is not None:
            await server.close()
        if engine is not None:
            if incident is None:
                try:
                    await asyncio.wait_for(
                        _on_worker(executor, _final_pass, engine), SHUTDOWN_BOUND
                    )
                except (TimeoutError, JobvaultError) as exc:
                    log.error("shutdown_incomplete", error=str(exc) or type(exc).__name__)
            # After an incident nothing more is written into the lost file; the sessions
            # read so far are finalized by the next start's recovery, from the archive.
            await _on_worker(executor, engine.close)
        copy = None
        if store is not None:
            if incident is not None and daemon.guard is not None:
                copy = await _on_worker(executor, daemon.guard.preserve, store.conn)
            await _on_worker(executor, store.close)
        if incident is not None and copy is not None and daemon.guard is not None:
            where = daemon.guard.put_back(copy, incident)
            daemon.incident, daemon.incidents = incident, daemon.incidents + 1
            log.error("database_incident", kind=incident["kind"], message=incident["message"],
                      action=incident["action"], copy=str(where))  # fmt: skip
        executor.shutdown(wait=True)
        if owned_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                owned_socket.unlink()
        writer_lock.release()
        instance.release()
        notifier.close()
        log.info("daemon_stopped")
    return incident


def _status_provider(daemon: Daemon) -> Callable[[], Any]:
    async def status() -> dict[str, Any]:
        """The engine's snapshot of its last round and its live counters; never waits."""
        roots = list(daemon.config.watch)
        engine = daemon.engine
        if engine is None or not daemon.snapshot_at:
            # The socket answers while the engine loads its files and until its first snapshot
            # (taken once its sessions are recovered, before the first round).
            return {
                "state": "starting",
                "snapshot_fresh": False,
                "watch": [str(r) for r in roots],
                "watch_existing": [str(r) for r in roots if r.is_dir()],
                "idle_timeout": daemon.config.idle_timeout,
                "socket": str(daemon.config.socket),
                "db_incident": daemon.incident,
                "db_incidents": daemon.incidents,
            }
        snapshot = dict(daemon.snapshot)
        age = max(0.0, time.time() - daemon.snapshot_at) if daemon.snapshot_at else 0.0
        if snapshot.get("pending_bytes"):  # the oldest unread line has aged since
            snapshot["ingest_lag_seconds"] = round(snapshot["ingest_lag_seconds"] + age, 3)
        # What the engine updates as it goes, safe to read from the loop: current even in the
        # middle of a long round (a backfill, a huge session).
        snapshot.update(engine.counters())
        snapshot["snapshot_fresh"] = not daemon.in_round
        incident = daemon.incident_pending or daemon.incident
        if incident is not None:
            snapshot["last_error"] = f"{incident['message']}; {incident['action']}"
            snapshot["last_error_at"] = incident["detected_at"]
        guard = daemon.guard
        return {
            **snapshot,
            "state": "stopping" if daemon.stopping.is_set() else "running",
            "snapshot_age_seconds": round(age, 3),
            "watch": [str(r) for r in roots],
            "watch_existing": [str(r) for r in roots if r.is_dir()],
            "idle_timeout": daemon.config.idle_timeout,
            "socket": str(daemon.config.socket),
            "db_incident": incident,
            "db_incidents": daemon.incidents,
            "writer_lock_restored": guard.lock_restored if guard is not None else 0,
            "sync": daemon.pusher.status() if daemon.pusher is not None else None,
        }

    return status


async def _watch_database(daemon: Daemon) -> None:
    """Stat the database path every few seconds; wake the loop when it names another file.

    The guard's own check runs on the worker after every round; this only makes sure a
    round comes soon even when nothing else would wake the loop for up to 30 s.
    """
    while True:
        await asyncio.sleep(GUARD_EVERY)
        guard = daemon.guard
        if guard is not None and guard.changed():
            daemon._wake.set()


def _limits(config: Config) -> ServerLimits:
    return ServerLimits(
        reads=Limits(
            request_timeout=config.request_timeout,
            sql_time_limit=config.sql_time_limit,
            sql_max_rows=config.sql_max_rows,
            sql_max_bytes=config.sql_max_bytes,
        ),
        max_request_bytes=config.max_request_bytes,
        max_connections=config.max_connections,
        idle_timeout=config.connection_idle_timeout,
        request_read_timeout=config.request_read_timeout,
    )


def _final_pass(engine: Engine) -> None:
    """Finalize every open session with what was read; unread bytes wait in their files."""
    engine.stopping.set()
    engine.drain_vanished()
    engine.finalize_all()


async def _report_status(daemon: Daemon, engine: Engine, notifier: Notifier) -> None:
    """Keep systemd's STATUS= current (backfill progress, then steady state)."""
    if not notifier.enabled:
        return
    while True:
        stats = engine.stats
        notifier.status(
            f"{len(engine.by_path)} files tracked, {stats.bytes_archived / 1e6:.1f} MB and "
            f"{stats.lines_archived} lines archived since start, {stats.bad_lines} bad lines"
        )
        await asyncio.sleep(STATUS_EVERY)


async def _watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 at half of WATCHDOG_USEC, from the event loop (a hung loop stops it)."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _apply_reload(daemon: Daemon, engine: Engine, watcher: Watching | None) -> bool:
    """Re-read the configuration; apply what can change while running. True if applied."""
    if daemon.reloader is None:
        return False
    old = daemon.config
    try:
        new = daemon.reloader()
    except JobvaultError as exc:
        log.error("reload_failed", error=str(exc), kept="the previous configuration")
        return False
    for key in ("db", "socket", "synchronous"):
        if getattr(new, key) != getattr(old, key):
            log.warning("reload_needs_restart", key=key, value=str(getattr(new, key)))
            new = new.replace(**{key: getattr(old, key)})
    daemon.config = new
    engine.config = new  # idle time, limits, batch sizes; the engine reads them per use
    if new.pricing != old.pricing and daemon._executor is not None:
        # On the engine's thread, between two rounds: no record is priced half and half.
        # Records already written keep their prices until `jobvault rebuild`.
        daemon._executor.submit(pricing.configure, new.pricing)
        log.warning("pricing_changed", hint="run `jobvault rebuild` to re-price the history")
    if watcher is not None:
        watcher.retain(list(new.watch))
    log.info(
        "config_reloaded",
        roots=[str(r) for r in new.watch],
        added=[str(r) for r in new.watch if r not in old.watch],
        removed=[str(r) for r in old.watch if r not in new.watch],
        idle_timeout=new.idle_timeout,
    )
    return True


async def _loop(
    daemon: Daemon,
    engine: Engine,
    executor: ThreadPoolExecutor,
    watcher: Watching | None,
) -> None:
    next_rescan = 0.0  # the first pass is the start-up backfill
    next_refresh = 0.0  # roots that appeared since are watched (and then rescanned)
    backoff = 0.0
    write_due: float | None = None
    while not daemon.stopping.is_set():
        if daemon._reload.is_set():
            daemon._reload.clear()
            if _apply_reload(daemon, engine, watcher):
                next_rescan = 0.0  # pick up new roots now
        config = daemon.config
        roots = list(config.watch)
        if daemon.guard is not None and daemon.guard.changed():
            # Never write into a file that is no longer the database: check before the round.
            await _on_worker(executor, daemon.after_round)
            if daemon.incident_pending is not None:
                break
        now = time.monotonic()
        daemon.in_round = True  # until after_round
        paths: list[str] | None = []
        if watcher is not None and now >= next_refresh:
            next_refresh = now + config.rescan_interval
            if watcher.refresh(roots):
                next_rescan = now  # a root watched now: read what it holds at once
        if now >= next_rescan or daemon._rescan_dirs:
            daemon._rescan_dirs.clear()
            daemon._dirty.clear()
            paths = None  # a rescan
            next_rescan = now + rescan_every(config, watcher)
        elif daemon._dirty:
            paths, daemon._dirty = sorted(daemon._dirty), set()
        # One hop to the engine's thread a round: read, finalize the idle, write what is
        # due, then the guard and `status`'s snapshot (`_round`).
        write_due, error = await _on_worker(
            executor, _round, daemon, engine, paths, roots, config.idle_timeout
        )
        if error is None:
            if paths is None:
                next_rescan = time.monotonic() + rescan_every(config, watcher)
            backoff = 0.0
        else:
            # The database refused a write (disk full, read-only...): nothing moved;
            # retry with backoff. The files still hold the bytes.
            backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)
            log.error("store_error_retrying", error=error, retry_in=backoff)
            next_rescan = time.monotonic() + backoff
        if daemon.incident_pending is not None:
            break
        ended = time.monotonic()
        timeout = max(0.0, min(next_rescan - ended, _idle_check(config)))
        if watcher is not None:
            timeout = min(timeout, max(0.0, next_refresh - ended))
        if write_due is not None:  # a record held back by the write interval
            timeout = min(timeout, write_due)
        # (A stop, a reload or a hint that came during the round is not waited out.)
        if not (
            daemon._dirty
            or daemon._rescan_dirs
            or daemon._reload.is_set()
            or daemon.stopping.is_set()
        ):
            daemon._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(daemon._wake.wait(), timeout)
        # Coalesce bursts of appends: rounds start at least `batch_interval` apart. A line
        # that comes after a quiet spell is read at once (no timer wakes the loop for it).
        wait = config.batch_interval - (time.monotonic() - ended)
        if wait > 0 and not daemon.stopping.is_set():
            await asyncio.sleep(wait)


def _round(
    daemon: Daemon, engine: Engine, paths: list[str] | None, roots: list[Path], idle: float
) -> tuple[float | None, str | None]:
    """One round on the engine's thread: `Engine.tick`, then `Daemon.after_round` (always).

    Returns (seconds until a held-back record is due, or None; the database's refusal, if
    it refused a write).
    """
    try:
        due, error = engine.tick(paths, roots, idle), None
    except (StoreError, sqlite3.Error) as exc:
        due, error = None, str(exc)
        engine.record_fault(error)
    daemon.after_round()
    return due, error


def rescan_every(config: Config, watcher: Watching | None) -> float:
    """Seconds between full rescans: `rescan_interval`, or `HEALTHY_RESCAN_FACTOR` times it
    while the watcher sees every change (inotify with every directory watched, no event
    lost). A rescan stats every tracked file (0.13 s of CPU at 3,000 sessions, growing with
    the history), which made most of an idle daemon's CPU."""
    if watcher is not None and watcher.healthy:
        return config.rescan_interval * HEALTHY_RESCAN_FACTOR
    return config.rescan_interval


def _idle_check(config: Config) -> float:
    return max(0.5, min(config.idle_timeout / 4, 30.0))


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT ask for a clean stop (a second SIGINT exits at once); SIGHUP reloads."""
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
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)


@contextlib.asynccontextmanager
async def run_daemon(
    config: Config, reloader: Callable[[], Config] | None = None
) -> AsyncIterator[Daemon]:
    """Start the daemon in this event loop for the duration of the block (tests, embedding)."""
    daemon = Daemon(config, reloader)
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


async def main(
    config: Config,
    reloader: Callable[[], Config] | None = None,
    early_stop: list[int] | None = None,
) -> None:
    """Run the daemon until a signal stops it; `early_stop` holds the SIGTERMs that arrived
    before the event loop took the signals over (the daemon then stops at once, cleanly)."""
    daemon = Daemon(config, reloader)
    install_signal_handlers(daemon)
    if early_stop:
        log.info("stop_requested_during_start_up")
        daemon.stop()
    await serve(daemon)
