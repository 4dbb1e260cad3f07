"""Exclusive lock files held for a process's life (`flock`: released even on kill -9).

Two locks use it: `WriterLock` (one writer per database: `jobvault run`, `import` and
`rebuild` each hold `<db>.lock`, so no two processes archive the same bytes) and the
daemon's instance lock beside its socket (one daemon per socket). The holder's pid is
written in the file so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from jobvault.errors import LockedError
from jobvault.store.db import ensure_private_dir


class LockFile:
    """`path` locked exclusively; `busy` formats the error when another process holds it."""

    def __init__(self, path: Path, busy: str) -> None:
        self.path = path
        self._busy = busy
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(self._busy.format(pid=holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LockFile:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class WriterLock(LockFile):
    """One writer process per database."""

    def __init__(self, db_path: Path) -> None:
        db = db_path.expanduser()
        super().__init__(
            db.with_name(db.name + ".lock"),
            f"another jobvault process (pid {{pid}}) is writing {db}; "
            "stop it first, or query it instead",
        )


class InstanceLock(LockFile):
    """One daemon per socket: `<socket>.lock` beside it."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(
            socket_path.with_name(socket_path.name + ".lock"),
            f"jobvault is already running (pid {{pid}}, socket {socket_path})",
        )
