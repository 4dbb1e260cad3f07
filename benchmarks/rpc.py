"""A minimal blocking JSON-RPC client for the daemon's socket (what a status bar would do)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import orjson


class RpcFailure(Exception):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "error"))
        self.error = error
        self.kind = str(error.get("data", {}).get("kind", ""))

    def __reduce__(self) -> tuple[type[RpcFailure], tuple[dict[str, Any]]]:
        # Raised in a client process of a multiprocessing pool: picklable as it was built.
        return (RpcFailure, (self.error,))


class Client:
    """One connection; requests answered in order."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.stream = self.sock.makefile("rb")
        self.next_id = 0

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; raise RpcFailure on an error reply."""
        self.next_id += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            request["params"] = params
        self.sock.sendall(orjson.dumps(request) + b"\n")
        while True:
            reply = orjson.loads(self.stream.readline())
            if reply.get("id") == self.next_id:
                break  # anything else is a notification of a subscription
        if "error" in reply:
            raise RpcFailure(reply["error"])
        return reply["result"]

    def read_message(self) -> dict[str, Any]:
        """The next line on the connection (a notification after `subscribe`)."""
        return orjson.loads(self.stream.readline())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_ready(path: Path, timeout: float = 120.0) -> None:
    """Wait until the daemon at `path` answers `status`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(path, timeout=5.0) as client:
                client.call("status")
                return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def first_working(
    client: Client, candidates: list[tuple[str, dict[str, Any]]]
) -> tuple[str, dict[str, Any]] | None:
    """The first (method, params) this daemon accepts: methods are still being added."""
    for method, params in candidates:
        try:
            client.call(method, params)
        except RpcFailure as exc:
            if exc.kind in ("method_not_found", "invalid_params"):
                continue
            raise
        return method, params
    return None
