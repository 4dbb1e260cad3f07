"""The real daemon as a subprocess (`python -m jobvault run`), and a raw socket client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any


def rpc(path: Path, method: str, params: Any = None, timeout: float = 10.0) -> dict[str, Any]:
    """One request on a fresh connection; the whole reply (result or error)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        return reply


class DaemonProcess:
    """`jobvault run` on explicit paths; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        watch: Path,
        db: Path,
        socket_path: Path,
        env: dict[str, str] | None = None,
        stderr: Any = subprocess.DEVNULL,
    ) -> None:
        self.watch, self.db, self.socket = watch, db, socket_path
        self.env = {**os.environ, **(env or {})}
        self._stderr = stderr
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobvault", "run", "--watch", str(self.watch),
             "--db", str(self.db), "--socket", str(self.socket)],
            env=self.env, stderr=self._stderr,
        )  # fmt: skip
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            assert self.proc.poll() is None, f"the daemon exited with {self.proc.returncode}"
            try:
                status = rpc(self.socket, "status", timeout=2.0)
                result: dict[str, Any] = status.get("result", {})
                if result.get("pid") == self.proc.pid:
                    return result
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = rpc(self.socket, "status")["result"]
        return result

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM), in MB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
