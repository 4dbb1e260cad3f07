"""A small blocking client for the daemon's socket (what the CLI uses).

It speaks through `_socket`, the C module under `socket`: the Python module builds its
enums at import, a few milliseconds of every CLI command's start for nothing used here.
"""

from __future__ import annotations

import _socket
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from jobvault import jsonio
from jobvault.errors import ExitCode, JobvaultError
from jobvault.serve.protocol import RpcError

CONNECT_WAIT = 10.0  # seconds a connection may wait for room in the daemon's accept queue


class DaemonUnavailable(JobvaultError):
    """The daemon is not running (no socket, or nobody listening on it)."""

    exit_code = ExitCode.UNAVAILABLE


class Client:
    """One connection; requests are answered in order."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._connect(str(path), min(timeout, CONNECT_WAIT))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            self._sock.close()
            raise DaemonUnavailable(f"no daemon listening on {path}: {exc.strerror}") from None
        except BaseException:
            self._sock.close()
            raise
        self._buffer = b""
        self._ids = itertools.count(1)

    def _connect(self, path: str, wait: float) -> None:
        """Connect, waiting while the daemon's accept queue is full.

        A Unix socket with a timeout is non-blocking, and its connect fails at once with
        EAGAIN when the listener's backlog is full (a blocking one would wait): try again
        for a moment, as a blocking connect would, rather than report the daemon missing.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                self._sock.connect(path)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DaemonUnavailable(
                        f"the daemon on {path} accepts no connection (its queue is full)"
                    ) from None
                time.sleep(0.005)

    def call(self, method: str, params: dict[str, Any] | list[Any] | None = None) -> Any:
        """Send one request and return its result; raise RpcError for an error answer."""
        ident = next(self._ids)
        request = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params or {}}
        self._sock.sendall(jsonio.dumps(request) + b"\n")
        while True:
            message = self._read()
            if message.get("id") == ident:
                break
        if "error" in message:
            error = message["error"]
            data = error.get("data") or {}
            raise RpcError(error.get("code", -32603), data.get("kind", "unknown"),
                           error.get("message", "error"))  # fmt: skip
        return message.get("result")

    def _readline(self) -> bytes:
        """The next line (with its newline), or what is left when the connection closes."""
        parts, data = [], self._buffer
        while True:
            end = data.find(b"\n")
            if end >= 0:
                parts.append(data[: end + 1])
                self._buffer = data[end + 1 :]
                return b"".join(parts)
            parts.append(data)
            data = self._sock.recv(1 << 20)
            if not data:
                self._buffer = b""
                return b"".join(parts)

    def _read(self) -> dict[str, Any]:
        line = self._readline()
        if not line:
            raise DaemonUnavailable(f"the daemon closed the connection on {self.path}")
        message: dict[str, Any] = jsonio.loads(line)
        return message

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Yield pushed notifications until the connection closes (after `subscribe`)."""
        self._sock.settimeout(None)
        while True:
            try:
                yield self._read()
            except DaemonUnavailable:
                return

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
