"""The Unix socket: JSON-RPC 2.0, one object per line, for local tools and the CLI.

Secure by default: the socket's directory is 0700 and the socket 0600 from the moment it
exists (bound under a tight umask); every connection's peer uid is checked and a foreign uid
is refused. One instance at a time: a lock file beside the socket is held for the daemon's
life, so a socket left by a crash is known to be stale and replaced.

It always answers its owner. Each connection is its own task and answers its requests in
order; a request line must arrive whole within `request_read_timeout` of its first byte (a
half-sent line is cut off), a silent connection is closed after `idle_timeout`, and at
`max_connections` the connection idle longest makes room for the new one
(`connections.py`). Methods run on reader lanes (`readers.py`) sized by what they cost, so
`status`, `jobs.*` and the reports never wait behind `sql` or `search`. Subscribers get
notifications through a bounded queue and are dropped, with a last notice, when they fall
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from jobvault import __version__
from jobvault.errors import ConfigError, LockedError
from jobvault.serve.connections import Full, Peer, Registry
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
from jobvault.serve.readers import Lane, Readers
from jobvault.store import queries

Reader = Lane  # the name serve/web knows a pool of reader threads by

log = structlog.get_logger("jobvault.server")

EVENTS = ("job.updated", "job.finalized")


@dataclass(frozen=True)
class ServerLimits:
    reads: Limits = field(default_factory=Limits)  # what one request may cost
    max_request_bytes: int = 1024 * 1024
    max_connections: int = 512
    idle_timeout: float = 300.0
    request_read_timeout: float = 5.0  # from a request line's first byte to its newline
    write_timeout: float = 10.0
    subscriber_queue: int = 1000


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
    sock.listen(4096)  # the kernel caps it at net.core.somaxconn
    sock.setblocking(False)
    return sock


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


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files toward `wanted` (within the hard limit); return it.

    Every connection is a descriptor, and so is every transcript the engine keeps open; the
    usual soft limit of 1024 would be reached before `max_connections`.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


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
        self.readers = Readers(db_path)
        # The dashboard's reads (serve/web) have a lane of their own: its pages never delay
        # the socket's methods, nor they its pages.
        self.reader: Reader = self.readers.lanes["web"]
        self.methods = read_methods(limits.reads)
        self._server: asyncio.Server | None = None
        self.registry = Registry(limits.max_connections)
        self.started = time.time()
        self.requests = 0
        self.refused_peers = 0
        self.cut_off = 0  # connections closed because a request line did not arrive in time
        self._last_db: dict[str, Any] = {}

    async def start(self, sock: socket.socket) -> None:
        # Room for every connection, the engine's open transcripts and SQLite's files.
        soft = raise_fd_limit(self.limits.max_connections + 2048)
        room = soft - 1024
        if room < self.limits.max_connections:
            log.warning("connection_limit_lowered", wanted=self.limits.max_connections,
                        allowed=max(16, room), open_files_limit=soft)  # fmt: skip
            self.registry.limit = max(16, room)
        self._server = await asyncio.start_unix_server(
            self._accept, sock=sock, limit=self.limits.max_request_bytes
        )

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, release the readers."""
        if self._server is not None:
            self._server.close()
        tasks = [p.task for p in self.registry.peers if p.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
        await asyncio.get_running_loop().run_in_executor(None, self.readers.close)

    def reopen_readers(self) -> None:
        """After the database file was replaced: every reader opens the new one (thread-safe)."""
        self.readers.reopen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer, asyncio.current_task())
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection_failed")
        finally:
            self.registry.leave(peer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, lock: asyncio.Lock, data: bytes) -> None:
        async with lock:
            writer.write(data)
            # A client that never reads its answers blocks here only, then is cut off.
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)

    def _admit(self, peer: Peer) -> bool:
        """Make room for `peer` (closing the connection idle longest); False if all are busy."""
        try:
            victim = self.registry.admit(peer)
        except Full:
            return False
        if victim is not None:
            log.info("connection_evicted", idle_seconds=round(time.monotonic() -
                     victim.last_active, 1), subscribed=victim.subscribed)  # fmt: skip
            notice = RpcError(
                OVERLOADED,
                "connection_evicted",
                "closed to make room for a new connection (it was idle longest)",
            )
            with contextlib.suppress(Exception):
                victim.writer.write(encode_error(None, notice))  # no wait: it may not read
            victim.writer.close()
            if victim.task is not None:
                victim.task.cancel()
        return True

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request line; None when the connection should close.

        Waiting for a line to start is bounded by the idle timeout; once its first byte has
        come, the rest must follow within `request_read_timeout` (slowloris: a line sent a
        byte at a time, or half a line and then nothing, holds no connection for long).
        """
        try:
            first = await asyncio.wait_for(reader.read(1), self.limits.idle_timeout)
        except TimeoutError:
            return None  # idle: close
        if not first:
            return None  # end of stream
        if first == b"\n":
            return first
        try:
            rest = await asyncio.wait_for(reader.readline(), self.limits.request_read_timeout)
        except TimeoutError:
            self.cut_off += 1
            return None
        line = first + rest
        if not line.endswith(b"\n"):
            return None  # end of stream in a line: a final partial line is not a request
        return line

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
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
        if not self._admit(peer):
            error = RpcError(OVERLOADED, "too_many_connections",
                             "every connection is busy with a request; retry")  # fmt: skip
            await self._send(writer, lock, encode_error(None, error))
            return
        forwarders: list[asyncio.Task[None]] = []
        try:
            while True:
                try:
                    line = await self._read_line(reader)
                except (ValueError, asyncio.LimitOverrunError):
                    error = RpcError(
                        TOO_LARGE, "request_too_large",
                        f"a request line is limited to {self.limits.max_request_bytes} bytes",
                    )  # fmt: skip
                    await self._send(writer, lock, encode_error(None, error))
                    await _linger(reader, writer)
                    return
                if line is None:
                    return
                if not line.strip():
                    continue
                peer.started()
                try:
                    reply = await self._handle(line, writer, lock, forwarders, peer)
                    if reply is not None:
                        await self._send(writer, lock, reply)
                finally:
                    peer.finished()
        finally:
            for task in forwarders:
                task.cancel()

    async def _handle(
        self,
        line: bytes,
        writer: asyncio.StreamWriter,
        lock: asyncio.Lock,
        forwarders: list[asyncio.Task[None]],
        peer: Peer,
    ) -> bytes | None:
        self.requests += 1
        try:
            request = parse_request(line)
        except RpcError as exc:
            return encode_error(error_id(exc), exc)
        try:
            result = await asyncio.wait_for(
                self._dispatch(request.method, request.params, writer, lock, forwarders, peer),
                self.limits.reads.request_timeout,
            )
        except RpcError as exc:
            error = exc
        except TimeoutError:
            error = RpcError(
                TIMEOUT, "timeout", f"no answer within {self.limits.reads.request_timeout:g}s"
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
        peer: Peer,
    ) -> Any:
        if method == "status":
            return await self.status()
        if method == "subscribe":
            result = self._subscribe(params, writer, lock, forwarders)
            peer.subscribed = True
            return result
        own = self.loop_methods.get(method)
        if own is not None:
            return await own(params)
        handler = self.methods.get(method)
        if handler is None:
            known = ", ".join(sorted([*self.methods, *self.loop_methods, "status", "subscribe"]))
            raise RpcError(METHOD_NOT_FOUND, "method_not_found", f"no method {method!r} ({known})")
        timeout = self.limits.reads.request_timeout
        lane = self.readers.for_method(method)
        return await lane.run(lambda conn: run_read(handler, conn, params, timeout))

    async def status(self) -> dict[str, Any]:
        lane = self.readers.for_method("status")
        try:
            db = await lane.run(lambda conn: queries.db_status(conn, str(self.db_path)))
            self._last_db = db
        except sqlite3.Error as exc:
            # The file is gone or unreadable (the guard says why): still answer, with the
            # last counts read and the reason, rather than an internal error.
            db = {**self._last_db, "db_path": str(self.db_path), "db_error": str(exc)}
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            **(await self.status_provider()),
            # The database's committed counts win over the engine's snapshot, which is taken
            # after each round and may be one round behind what a reader already sees.
            **db,
            "connections": len(self.registry.peers),
            "max_connections": self.registry.limit,
            "connections_evicted": self.registry.evicted,
            "connections_cut_off": self.cut_off,
            "subscribers": len(self.hub.subscribers),
            "requests": self.requests,
            "lanes": self.readers.stats(),
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
