"""The Unix socket: JSON-RPC 2.0, one object per line, for local tools and the CLI.

Secure by default: the socket's directory is 0700 and the socket 0600 from the moment it
exists (bound under a tight umask); every connection's peer uid is checked and a foreign uid
is refused. One instance at a time: a lock file beside the socket is held for the daemon's
life, so a socket left by a crash is known to be stale and replaced.

Each connection is its own task and answers its requests in order; a slow or malicious client
(half a line, no newline for megabytes, never reading its answers) only ever waits on its own
timeouts and is cut off. Reads run on a small pool of reader threads, each with its own
read-only connection, under a per-request deadline; subscribers get notifications through a
bounded queue and are dropped, with a last notice, when they fall behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from jobvault import __version__
from jobvault.errors import ConfigError, LockedError
from jobvault.serve.methods import Limits, read_methods, run_read
from jobvault.serve.protocol import (
    DROPPED,
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    OVERLOADED,
    REFUSED,
    TIMEOUT,
    TOO_LARGE,
    RpcError,
    encode_error,
    encode_notification,
    encode_result,
    error_id,
    invalid_params,
    parse_request,
)
from jobvault.store import queries
from jobvault.store.db import BUSY_TIMEOUT_MS

log = structlog.get_logger("jobvault.server")

EVENTS = ("job.updated", "job.finalized")


@dataclass(frozen=True)
class ServerLimits(Limits):
    max_request_bytes: int = 1024 * 1024
    max_connections: int = 64
    idle_timeout: float = 300.0
    write_timeout: float = 10.0
    subscriber_queue: int = 1000
    reader_threads: int = 4


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None if unknown)."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    if sys.platform == "darwin":  # getpeereid(): LOCAL_PEERCRED returns a struct xucred
        sol_local, local_peercred = 0, 1
        creds = sock.getsockopt(sol_local, local_peercred, struct.calcsize("2Ih2x16I"))
        return int(struct.unpack("2Ih2x16I", creds)[1])
    return None


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's directory 0700 if it is missing; check that an existing one is ours
    and that no other user can write in it (they could replace the socket with their own).

    An existing directory's mode is never changed: it may be a home directory or a shared one
    such as /tmp (as root, tightening it to 0700 would lock every other user out of it). The
    socket itself is 0600 and checks the peer of every connection.
    """
    directory = path.parent
    if not directory.exists():
        old = os.umask(0o077)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise LockedError(f"{directory} belongs to another user: choose another socket path")
    if st.st_mode & 0o022:
        raise ConfigError(
            "socket",
            f"other users can write in {directory}, the socket's directory, and could replace "
            "the socket: choose a socket path in a directory only you can write to (the "
            "default is $XDG_RUNTIME_DIR/jobvault/jobvault.sock)",
        )


def bind_socket(path: Path) -> socket.socket:
    """Bind a listening socket at `path`, 0600 from the start; replaces a stale socket file."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # we hold the instance lock: any socket file here is stale
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Reader:
    """A small pool of threads, each with its own read-only connection."""

    def __init__(self, db_path: Path, threads: int) -> None:
        self.db_path = db_path
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="jobvault-read")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                f"{self.db_path.absolute().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._conn()))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[bytes]
    events: frozenset[str]
    dropped: bool = False


@dataclass
class Hub:
    """Fans job notifications out to subscribers without ever blocking the publisher."""

    subscribers: set[Subscription] = field(default_factory=set)
    dropped_total: int = 0

    def publish(self, event: str, params: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        message = encode_notification(event, params)
        for sub in list(self.subscribers):
            if event not in sub.events or sub.dropped:
                continue
            try:
                sub.queue.put_nowait(message)
            except asyncio.QueueFull:
                sub.dropped = True  # told and dropped by its forwarder
                self.subscribers.discard(sub)
                self.dropped_total += 1


StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
# A method the daemon answers itself (a write on its writer thread, the dashboard's URL).
LoopMethod = Callable[[dict[str, Any] | list[Any]], Awaitable[Any]]


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close our side, then discard what the client still sends for a moment.

    Closing a socket with unread input makes the kernel send a reset, which can destroy the
    error answer still in flight; reading the rest first lets the client see it.
    """
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()

        async def discard() -> None:
            while await reader.read(1024 * 1024):
                pass

        await asyncio.wait_for(discard(), 1.0)


class Server:
    def __init__(
        self,
        db_path: Path,
        limits: ServerLimits,
        status: StatusProvider,
        hub: Hub,
        loop_methods: dict[str, LoopMethod] | None = None,
    ) -> None:
        self.db_path = db_path
        self.loop_methods = dict(loop_methods or {})
        self.limits = limits
        self.status_provider = status
        self.hub = hub
        self.reader = Reader(db_path, limits.reader_threads)
        self.methods = read_methods(limits)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.started = time.time()
        self.requests = 0
        self.refused_peers = 0

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(
            self._accept, sock=sock, limit=self.limits.max_request_bytes
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, release the readers."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=timeout)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
        await asyncio.get_running_loop().run_in_executor(None, self.reader.close)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection_failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, lock: asyncio.Lock, data: bytes) -> None:
        async with lock:
            writer.write(data)
            # A client that never reads its answers blocks here only, then is cut off.
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else None
        if uid is not None and uid != os.getuid():
            self.refused_peers += 1
            log.warning("peer_refused", peer_uid=uid)
            error = RpcError(REFUSED, "forbidden", "connections from another user are refused")
            with contextlib.suppress(Exception):
                await self._send(writer, lock, encode_error(None, error))
            return
        if len(self._connections) > self.limits.max_connections:
            error = RpcError(OVERLOADED, "too_many_connections", "too many connections; retry")
            await self._send(writer, lock, encode_error(None, error))
            return
        forwarders: list[asyncio.Task[None]] = []
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.limits.idle_timeout)
                except TimeoutError:
                    return  # idle (or stalled mid-line): close
                except (ValueError, asyncio.LimitOverrunError):
                    error = RpcError(
                        TOO_LARGE, "request_too_large",
                        f"a request line is limited to {self.limits.max_request_bytes} bytes",
                    )  # fmt: skip
                    await self._send(writer, lock, encode_error(None, error))
                    await _linger(reader, writer)
                    return
                if not line or not line.endswith(b"\n"):
                    return  # end of stream (a final partial line is not a request)
                if not line.strip():
                    continue
                reply = await self._handle(line, writer, lock, forwarders)
                if reply is not None:
                    await self._send(writer, lock, reply)
        finally:
            for task in forwarders:
                task.cancel()

    async def _handle(
        self,
        line: bytes,
        writer: asyncio.StreamWriter,
        lock: asyncio.Lock,
        forwarders: list[asyncio.Task[None]],
    ) -> bytes | None:
        self.requests += 1
        try:
            request = parse_request(line)
        except RpcError as exc:
            return encode_error(error_id(exc), exc)
        try:
            result = await asyncio.wait_for(
                self._dispatch(request.method, request.params, writer, lock, forwarders),
                self.limits.request_timeout,
            )
        except RpcError as exc:
            error = exc
        except TimeoutError:
            error = RpcError(
                TIMEOUT, "timeout", f"no answer within {self.limits.request_timeout:g}s"
            )
        except Exception as exc:
            log.exception("request_failed", method=request.method)
            error = RpcError(INTERNAL_ERROR, "internal", f"{type(exc).__name__}: {exc}")
        else:
            return None if request.is_notification else encode_result(request.id, result)
        return None if request.is_notification else encode_error(request.id, error)

    async def _dispatch(
        self,
        method: str,
        params: dict[str, Any] | list[Any],
        writer: asyncio.StreamWriter,
        lock: asyncio.Lock,
        forwarders: list[asyncio.Task[None]],
    ) -> Any:
        if method == "status":
            return await self.status()
        if method == "subscribe":
            return self._subscribe(params, writer, lock, forwarders)
        own = self.loop_methods.get(method)
        if own is not None:
            return await own(params)
        handler = self.methods.get(method)
        if handler is None:
            known = ", ".join(sorted([*self.methods, *self.loop_methods, "status", "subscribe"]))
            raise RpcError(METHOD_NOT_FOUND, "method_not_found", f"no method {method!r} ({known})")
        timeout = self.limits.request_timeout
        return await self.reader.run(lambda conn: run_read(handler, conn, params, timeout))

    async def status(self) -> dict[str, Any]:
        db = await self.reader.run(lambda conn: queries.db_status(conn, str(self.db_path)))
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            **db,
            **(await self.status_provider()),
            "connections": len(self._connections),
            "subscribers": len(self.hub.subscribers),
            "requests": self.requests,
        }

    def _subscribe(
        self,
        raw: dict[str, Any] | list[Any],
        writer: asyncio.StreamWriter,
        lock: asyncio.Lock,
        forwarders: list[asyncio.Task[None]],
    ) -> dict[str, Any]:
        params = raw if isinstance(raw, dict) else {}
        events = params.get("events", list(EVENTS))
        if not isinstance(events, list) or not all(e in EVENTS for e in events) or not events:
            raise invalid_params(f"events must be a non-empty list of {', '.join(EVENTS)}")
        if forwarders:
            raise invalid_params("this connection is already subscribed")
        sub = Subscription(asyncio.Queue(self.limits.subscriber_queue), frozenset(events))
        self.hub.subscribers.add(sub)

        async def forward() -> None:
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(sub.queue.get(), 0.5)
                    except TimeoutError:
                        if sub.dropped and sub.queue.empty():
                            break
                        continue
                    await self._send(writer, lock, message)
                    if sub.dropped and sub.queue.empty():
                        break
                if sub.dropped:
                    notice = encode_notification(
                        "subscription.dropped",
                        {"reason": "the subscriber fell behind; notifications were lost",
                         "code": DROPPED},
                    )  # fmt: skip
                    await self._send(writer, lock, notice)
                    writer.close()
            except TimeoutError:
                writer.close()  # the subscriber stopped reading: cut it off
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                self.hub.subscribers.discard(sub)

        forwarders.append(asyncio.create_task(forward()))
        return {"subscribed": sorted(sub.events)}
