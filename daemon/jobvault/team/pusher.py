"""The daemon's background push to the team database.

An asyncio task in the daemon's loop decides *when*: every `[sync] interval` seconds while
there is something to push, sooner after a push stopped short, and with exponential backoff
(up to MAX_BACKOFF) while the server cannot be reached or refuses. Each round runs in its own
daemon thread with its own read-only SQLite connection and its PostgreSQL connection, never
on the engine's thread and never holding a write lock, so ingestion never waits for the
network; a round blocked on a dead network ends by libpq's timeouts, and at shutdown the
running query is cancelled and the thread abandoned (its open transaction rolls back on the
server). `status()` is what `jobvault status` shows under "sync".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypedDict, TypeVar

import structlog

from jobvault.config import Config
from jobvault.errors import JobvaultError

log = structlog.get_logger("jobvault.team")
T = TypeVar("T")

MAX_BACKOFF = 60.0
State = Literal["off", "starting", "idle", "pushing", "retrying"]


class SyncStatus(TypedDict):
    """The push's state, as `status` reports it."""

    state: State
    url: str | None
    include: list[str]
    interval: float
    last_push_at: str | None  # the end of the last push that sent something
    last_check_at: str | None  # the end of the last round that reached the server
    last_error: str | None
    last_error_at: str | None
    rows_pending: int | None  # job changes not yet acknowledged (None: not known yet)
    acked_seq: int | None
    jobs_pushed: int  # since the daemon started
    retry_in_seconds: float | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Pusher:
    """Pushes the daemon's database to `[sync] url` in the background (see the module doc)."""

    def __init__(self, config_of: Callable[[], Config]) -> None:
        self._config_of = config_of
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = threading.Event()  # a round is running on its thread
        self._wake = asyncio.Event()
        self._conn: Any = None
        self._conn_url: str | None = None
        self._failures = 0
        self._pushed: tuple[str, tuple[str, ...]] | None = None  # (url, include) last pushed
        self._status: SyncStatus = {
            "state": "off", "url": None, "include": [], "interval": 0.0, "last_push_at": None,
            "last_check_at": None, "last_error": None, "last_error_at": None,
            "rows_pending": None, "acked_seq": None, "jobs_pushed": 0, "retry_in_seconds": None,
        }  # fmt: skip

    def status(self) -> SyncStatus:
        with self._lock:
            return SyncStatus(**self._status)

    def _set(self, **changes: Any) -> None:
        with self._lock:
            self._status.update(changes)  # type: ignore[typeddict-item]

    def poke(self) -> None:
        """Push soon (called on the loop)."""
        self._wake.set()

    async def run(self) -> None:
        """The task: rounds until cancelled (then the connection is closed, or it will be by
        the round in flight once it stops)."""
        try:
            await self._rounds()
        finally:
            if not self._busy.is_set():
                self._close()

    async def _rounds(self) -> None:
        while not self._stop.is_set():
            config = self._config_of()
            if not config.sync_url:
                self._set(state="off", url=None, retry_in_seconds=None)
                self._close()
                delay = 5.0
            else:
                ok, more = await _in_thread(self._round, config)
                if ok:
                    self._failures = 0
                    delay = 0.0 if more else config.sync_interval
                else:
                    self._failures += 1
                    delay = min(MAX_BACKOFF, config.sync_interval * 2 ** min(self._failures, 16))
                    self._set(state="retrying", retry_in_seconds=round(delay, 3))
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def stop(self) -> None:
        """Stop between batches; cancel the query in flight (any thread)."""
        self._stop.set()
        conn = self._conn
        if conn is not None:
            try:
                cancel = getattr(conn, "cancel_safe", None)
                if cancel is not None:
                    cancel(timeout=2.0)
                else:
                    conn.cancel()
            except Exception as exc:  # the connection may be gone already
                log.debug("sync_cancel_failed", error=str(exc))

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:
                log.debug("sync_close_failed", error=str(exc))
            self._conn = None
            self._conn_url = None

    def _round(self, config: Config) -> tuple[bool, bool]:
        """One push (on its own thread). Returns (succeeded, stopped with more to send)."""
        self._busy.set()
        try:
            return self._push_round(config)
        finally:
            self._busy.clear()
            if self._stop.is_set():
                self._close()

    def _push_round(self, config: Config) -> tuple[bool, bool]:
        import jobvault
        from jobvault.team import connect
        from jobvault.team.sync import Settings, push
        from jobvault.team.vault import Vault

        url = config.sync_url or ""
        shown = connect.display(url)
        self._set(url=shown, include=list(config.sync_include), interval=config.sync_interval)
        try:
            vault = Vault(config.db)
        except JobvaultError as exc:
            self._fail(str(exc))
            return False, False
        try:
            status = self.status()
            acked = status["acked_seq"]
            local_max = vault.max_seq()
            if acked is not None:
                pending = vault.pending(acked)
                self._set(rows_pending=pending)
                same = self._pushed == (url, tuple(config.sync_include))
                archive = "archive" in config.sync_include
                if pending == 0 and same and not archive and local_max >= acked:
                    self._set(state="idle", retry_in_seconds=None)
                    return True, False  # nothing changed here: the server need not be asked
            self._set(state="pushing" if acked is not None else "starting")
            if self._conn is None or self._conn_url != url or self._conn.closed:
                self._close()
                self._conn = connect.connect(url, application="jobvault-daemon")
                self._conn_url = url
            settings = Settings(
                include=config.sync_include,
                name=config.sync_name or socket.gethostname(),
                batch_rows=config.sync_batch_rows,
                client_version=jobvault.__version__,
            )

            def progress(done: int, total: int) -> None:
                self._set(rows_pending=max(0, total - done))

            try:
                result = push(vault, self._conn, settings, stop=self._stop, progress=progress)
            except JobvaultError:
                raise
            except connect.driver().Error as exc:  # one line, and a new connection next time
                raise connect.classify(exc, url) from exc
            pushed = result.jobs + result.deleted + result.chunks
            with self._lock:
                self._status.update({
                    "state": "idle", "acked_seq": result.acked_seq,
                    "rows_pending": result.pending, "last_check_at": _now(),
                    "retry_in_seconds": None,
                    "jobs_pushed": self._status["jobs_pushed"] + result.jobs,
                })  # fmt: skip
                if pushed:
                    self._status["last_push_at"] = _now()
            self._pushed = (url, tuple(config.sync_include))
            if pushed:
                log.info("sync_pushed", url=shown, jobs=result.jobs, deleted=result.deleted,
                         chunks=result.chunks, seconds=result.seconds,
                         full=result.full)  # fmt: skip
            return True, result.pending > 0 and not self._stop.is_set()
        except JobvaultError as exc:
            self._close()
            self._pushed = None
            self._fail(str(exc))
            return False, False
        except Exception as exc:  # a bug must not stop the daemon: log it, retry later
            self._close()
            self._fail(f"{type(exc).__name__}: {exc}")
            log.exception("sync_failed")
            return False, False
        finally:
            vault.close()

    def _fail(self, error: str) -> None:
        self._set(last_error=error, last_error_at=_now())
        log.warning("sync_error", error=error)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on a new daemon thread (never joined at exit, unlike the loop's executor)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            outcome: tuple[bool, Any] = (False, exc)
        else:
            outcome = (True, result)
        with contextlib.suppress(RuntimeError):  # a closed loop: the daemon has stopped
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=target, name="jobvault-sync", daemon=True).start()
    return await future
