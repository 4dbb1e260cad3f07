"""One writer per database, across processes: an exclusive lock file held for the writer's life.

`jobvault run`, `import` and `rebuild` each hold `<db>.lock`; a second writer fails at once
with LockedError (exit code LOCKED) instead of archiving the same bytes twice. The lock is an
`fcntl.flock`, so it vanishes with the process, even after kill -9.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from jobvault.errors import LockedError
from jobvault.store.db import ensure_private_dir


class WriterLock:
    def __init__(self, db_path: Path) -> None:
        self.path = db_path.expanduser().with_name(db_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"another jobvault process (pid {holder}) is writing {self.path.with_suffix('')};"
                " stop it first, or query it instead"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
