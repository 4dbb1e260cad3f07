"""Exclusive locks held for a process's life (`flock`: released even on kill -9).

Two locks use it: `WriterLock` (one writer per database: `jobvault run`, `import` and
`rebuild` each hold `<db>.lock`, so no two processes archive the same bytes) and the
daemon's instance lock beside its socket (one daemon per socket). The holder's pid is
written in the file so the refusal can name it.

A lock file can be deleted under its holder, and a second process would then lock a new
file of the same name. The writer therefore also locks the database file itself (Linux,
where `flock` and SQLite's POSIX byte-range locks are independent), which cannot be
replaced without the writer noticing (`guard.py`), and re-creates its lock file when it
finds it gone (`WriterLock.verify`, once per round).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from jobvault.errors import LockedError
from jobvault.store.db import ensure_private_dir, open_note, umask

# flock on the database file is safe beside SQLite only where the two lock kinds are
# independent; elsewhere the lock file (re-checked every round) is the guard.
LOCK_DATABASE_FILE = sys.platform.startswith("linux")


class LockFile:
    """`path` locked exclusively; `busy` formats the error when another process holds it."""

    def __init__(self, path: Path, busy: str) -> None:
        self.path = path
        self._busy = busy
        self._fd: int | None = None

    def _open_locked(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(self._busy.format(pid=holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def acquire(self) -> None:
        self._fd = self._open_locked()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def flock_holder(path: Path) -> str:
    """The pid holding a flock on `path`, from /proc/locks (Linux), else "unknown"."""
    try:
        ino = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{ino}"):
                    return fields[4]
    except (OSError, IndexError):
        pass
    return "unknown"


class WriterLock(LockFile):
    """One writer process per database: `<db>.lock`, and the database file itself."""

    def __init__(self, db_path: Path) -> None:
        db = db_path.expanduser().absolute()
        self.db = db
        super().__init__(
            db.with_name(db.name + ".lock"),
            f"another jobvault process (pid {{pid}}) is writing {db}; "
            "stop it first, or query it instead",
        )
        self._db_fd: int | None = None
        self.tightened: int | None = None  # the directory's former mode, if made private
        self.open_note: str | None = None  # why the directory was left open to others

    def acquire(self) -> None:
        self.tightened = ensure_private_dir(self.db.parent, self.db.name)
        self.open_note = open_note(self.db.parent, self.db.name)
        super().acquire()
        try:
            self._db_fd = self._lock_database()
        except BaseException:
            super().release()
            raise

    def _lock_database(self) -> int | None:
        if not LOCK_DATABASE_FILE:
            return None
        with umask(0o077):  # created here when new: 0600 from the first instant
            fd = os.open(self.db, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(
                f"another jobvault process (pid {flock_holder(self.db)}) is writing {self.db} "
                f"(its lock file {self.path.name} had been removed); stop it first"
            ) from None
        return fd

    def database_stat(self) -> os.stat_result | None:
        """The database file this lock holds open (None where it holds none), even unlinked."""
        return None if self._db_fd is None else os.fstat(self._db_fd)

    def intact(self) -> bool:
        """Whether the lock file at the path is still the one this lock holds (stat only)."""
        return self._fd is None or _same_file(self._fd, self.path)

    def verify(self) -> bool:
        """Re-create the lock file if it was deleted or replaced; True if it had to be.

        Raises LockedError when the new file is already locked by someone else.
        """
        old = self._fd
        if old is None or self.intact():
            return False
        ensure_private_dir(self.db.parent, self.db.name)
        self._fd = self._open_locked()
        os.close(old)
        return True

    def release(self) -> None:
        # Closed only once every SQLite connection to the file is closed: closing any
        # descriptor of a file drops the process's POSIX locks on it, SQLite's included.
        if self._db_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._db_fd)
            self._db_fd = None
        super().release()


class InstanceLock(LockFile):
    """One daemon per socket: `<socket>.lock` beside it."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(
            socket_path.with_name(socket_path.name + ".lock"),
            f"jobvault is already running (pid {{pid}}, socket {socket_path})",
        )
