"""Start and stop a real `jobvault run` in a private sandbox (temporary HOME and XDG dirs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from benchmarks.rpc import wait_ready

JOBVAULT = [sys.executable, "-m", "jobvault"]


def sandbox_env(tmp: Path) -> dict[str, str]:
    """An environment whose HOME and XDG dirs are under `tmp`, never the user's own."""
    home = tmp / "home"
    for sub in ("", "data", "config", "runtime", "state", "cache"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    (home / "runtime").chmod(0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBVAULT_", "XDG_"))}
    env.pop("CLAUDE_CONFIG_DIR", None)
    env.pop("CODEX_HOME", None)
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_RUNTIME_DIR=str(home / "runtime"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CACHE_HOME=str(home / "cache"),
        TZ="UTC",
    )
    return env


class Daemon:
    """`with Daemon(tmp, db, watch) as d:` runs the daemon until the block ends."""

    def __init__(self, tmp: Path, db: Path, watch: list[Path]) -> None:
        self.env = sandbox_env(tmp)
        self.socket = tmp / "jv.sock"
        self.db = db
        self.watch = watch
        self.log = tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Daemon:
        cmd = [
            *JOBVAULT,
            "run",
            "--db",
            str(self.db),
            "--socket",
            str(self.socket),
            "--log-level",
            "warning",
        ]
        for root in self.watch:
            cmd += ["--watch", str(root)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        try:
            wait_ready(self.socket)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def caught_up(socket: Path, files: int, timeout: float = 600) -> float:
    """Wait until the daemon tracks `files` files and has nothing pending; return the wait."""
    from benchmarks.rpc import Client

    start = time.monotonic()
    with Client(socket) as client:
        while time.monotonic() - start < timeout:
            status = client.call("status")
            if status.get("files_tracked", 0) >= files and not status.get("pending_bytes"):
                return time.monotonic() - start
            time.sleep(0.1)
    raise TimeoutError("the daemon did not catch up with the corpus")


def wait_idle(client_path: Path, timeout: float = 300.0) -> None:
    """Wait until the daemon has read everything it knows of (pending_bytes 0)."""
    from benchmarks.rpc import Client

    deadline = time.monotonic() + timeout
    with Client(client_path) as client:
        while time.monotonic() < deadline:
            status = client.call("status")
            if not status.get("pending_bytes"):
                return
            time.sleep(0.2)
    raise TimeoutError("the daemon did not catch up")
