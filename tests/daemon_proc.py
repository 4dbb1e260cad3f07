"""The real daemon as a subprocess (`python -m jobvault run`), for the adversarial tests.

Everything it touches is under the test's temporary directory (the watched root, the database,
the config file, its stderr) or the test's own XDG_RUNTIME_DIR (the socket); HOME and the XDG
variables come from the autouse fixture in conftest.py. State is read over its socket
(`status`, `jobs.get`) and from the database read-only; every wait is a bounded poll.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jobvault.serve.client import Client, DaemonUnavailable

DAEMON_PATH = str(Path(__file__).resolve().parents[1] / "daemon")
T = TypeVar("T")


def env() -> dict[str, str]:
    """The test's environment (its HOME and XDG dirs), without a service manager's variables."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("NOTIFY_", "LISTEN_", "WATCHDOG_"))}  # fmt: skip
    out["PYTHONPATH"] = DAEMON_PATH
    return out


def poll(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Call `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {value!r})")
        time.sleep(0.05)


def toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


class DaemonProc:
    """One daemon process over a watched root, a database and a socket of its own."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.root = tmp_path / "projects"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = tmp_path / "vault" / "jobvault.db"
        self.sock = Path(os.environ["XDG_RUNTIME_DIR"]) / "jv.sock"
        self.config = tmp_path / "jobvault.toml"
        self.stderr_path = tmp_path / "daemon.stderr"
        values = {"rescan_interval": 0.5, "idle_timeout": 600.0, "dashboard": False, **settings}
        self.config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jobvault", "run", "--config", str(self.config),
                "--watch", str(self.root), "--db", str(self.db),
                "--socket", str(self.sock)]  # fmt: skip

    def start(self, wrap: Sequence[str] = (), wait: bool = True) -> None:
        """Start it (under `wrap`, e.g. setpriv) and wait until it is running."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.stderr_path.open("ab") as err:
            err.write(f"--- start {self.starts}\n".encode())
            err.flush()
            self.proc = subprocess.Popen([*wrap, *self.command()], env=env(), stderr=err,
                                         stdout=subprocess.DEVNULL)  # fmt: skip
        if wait:
            poll(lambda: self._answers(), "the daemon running, answering on its socket")

    def _answers(self) -> bool:
        """Its socket answers and its engine is up (`status` says "starting" until then)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({self.proc.returncode}):\n{self.stderr()}")
        try:
            return self.status().get("state") == "running"
        except (DaemonUnavailable, OSError):
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        with Client(self.sock, timeout=timeout) as client:
            return client.call(method, params or {})

    def cli(self, *args: str) -> str:
        """Run `jobvault ARGS` against this daemon (its socket and database); its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "jobvault", *args, "--socket", str(self.sock),
             "--db", str(self.db)],
            env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call("status")
        return status

    def fresh_status(self) -> dict[str, Any]:
        """A status whose engine figures were taken now (not the last snapshot)."""
        return poll(lambda: (s := self.status())["snapshot_fresh"] and s, "a fresh status")

    def wait_skipped(self) -> dict[str, Any]:
        """A fresh status once it counts a skipped path (`files_skipped`)."""
        return poll(lambda: (s := self.fresh_status())["files_skipped"] and s, "a skip counted")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit code (it must exit within `timeout`)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"SIGTERM did not stop the daemon within {timeout:g} s") from None

    def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        """Make sure nothing is left running (a failed test)."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows from the database, read-only (the daemon may be writing)."""
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
        finally:
            conn.close()

    def archived_bytes(self, path: Path) -> int:
        """Bytes archived of the current generation of `path` (0 if it is not tracked)."""
        rows = self.query(
            "SELECT COALESCE(SUM(c.length), 0) FROM chunks c WHERE c.file_id = (SELECT id FROM "
            "files WHERE path = ? ORDER BY id DESC LIMIT 1)",
            (str(path),),
        )
        return int(rows[0][0]) if rows else 0

    def wait_archived(self, *paths: Path, timeout: float = 30.0) -> None:
        """Until every path is archived to its current size."""
        for path in paths:
            size = path.stat().st_size
            poll(lambda p=path, s=size: self.archived_bytes(p) == s,  # type: ignore[misc]
                 f"{path.name} archived to its {size} bytes", timeout)  # fmt: skip

    def job(self, session: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT status, input_tokens, output_tokens, cache_creation_tokens, "
            "cache_read_tokens, tool_call_count FROM jobs WHERE session_id = ?",
            (session,),
        )
        if not rows:
            return None
        keys = ("status", "input_tokens", "output_tokens", "cache_creation_tokens",
                "cache_read_tokens", "tool_call_count")  # fmt: skip
        return dict(zip(keys, rows[0], strict=True))


def take_inode(path: Path, data: bytes, inode: int, attempts: int = 500) -> bool:
    """Create `path` holding `data` on the freed `inode` if the filesystem allows; say if so.

    ext4 (and overlayfs over it) hands a new file the lowest free inode of its directory's
    group, which is the one just freed unless a lower one is free too (SQLite's -shm file,
    say): each miss is kept, under a name no scan reads, until the freed inode comes up.
    Without reuse after `attempts` creations, `path` is left holding `data` on another inode.
    """
    fillers = []
    try:
        for i in range(attempts):
            path.write_bytes(data)
            if path.stat().st_ino == inode:
                return True
            if i + 1 < attempts:
                fillers.append(path.rename(path.with_name(f".filler-{i}")))
        return False
    finally:
        for filler in fillers:
            filler.unlink()


def rewrite_on_same_inode(old: Path, new: Path, data: bytes) -> None:
    """`old` deleted and `new` holding `data` on the inode `old` had: to the daemon, exactly a
    new file on a freed inode (a known device and inode, another path, other bytes), made
    without the allocator's help: a hard link keeps the inode while `old` is deleted."""
    os.link(old, new)
    old.unlink()
    with new.open("r+b") as fh:
        fh.truncate(0)
        fh.write(data)
