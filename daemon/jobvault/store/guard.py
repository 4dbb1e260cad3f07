"""Noticing that the database path no longer names the file the writer has open.

SQLite writes through the descriptors it opened: if the database file is deleted, moved or
replaced while the daemon runs, every later write goes to a file nobody will read again
(after a restart the daemon would open a new, empty database, and transcripts deleted in the
meantime would be lost). `DatabaseGuard` records the identity (device, inode) of the
database, its `-wal` and its `-shm` once the writer has opened them, and compares each
round. When they differ it says what happened (`Incident`), and the daemon stops writing:

* the database was **deleted** or **moved** away: the writer's open copy is saved with
  SQLite's backup API (every committed byte, the WAL's included) and put back at the path;
  the daemon then starts again on it, having lost and doubled nothing;
* its **-wal or -shm** file was deleted or replaced: the same, the copy replacing the file
  at the path, so that other processes see one database with one WAL again;
* the path now names **another file** (replaced): that file is left alone, the open copy is
  saved beside it (`<name>.saved-<time>`), and the daemon exits with code 74 (STORE), so
  that the service manager, or the user, decides to serve the new file.

It also re-creates the writer's lock file when that was deleted (`WriterLock.verify`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Literal, TypedDict

from jobvault.store.db import ensure_private_dir, umask
from jobvault.store.lock import WriterLock

IncidentKind = Literal["deleted", "moved", "replaced", "wal_deleted"]
SUFFIXES = ("", "-wal", "-shm")


class Incident(TypedDict):
    """What happened to the database file (shown by `status` as `db_incident`)."""

    kind: IncidentKind
    detected_at: str
    message: str
    action: str
    saved_copy: str | None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class DatabaseGuard:
    """The identity of the open database, checked against its path."""

    def __init__(self, path: Path, lock: WriterLock | None = None) -> None:
        self.path = path.expanduser().absolute()
        self.lock = lock
        self._known: dict[str, tuple[int, int] | None] = {}
        self.lock_restored = 0

    def record(self) -> None:
        """Remember what the path names now (call right after the writer opened it)."""
        held = self.lock.database_stat() if self.lock is not None else None
        self._known = {s: _identity(str(self.path) + s) for s in SUFFIXES}
        if held is not None:
            self._known[""] = (held.st_dev, held.st_ino)

    def changed(self) -> bool:
        """Whether the path names another file than the one recorded, or the lock file is
        gone (cheap: stat only; `check` says what happened)."""
        if self.lock is not None and not self.lock.intact():
            return True
        return self._moved()

    def _moved(self) -> bool:
        return any(
            known is not None and _identity(str(self.path) + suffix) != known
            for suffix, known in self._known.items()
        )

    def check(self) -> Incident | None:
        """Re-create a deleted lock file; report what happened to the database, if anything."""
        if self.lock is not None and self.lock.verify():
            self.lock_restored += 1
        if not self._moved():
            return None
        now = _identity(str(self.path))
        known = self._known.get("")
        if now is not None and now != known:
            return self._incident(
                "replaced",
                f"{self.path} was replaced by another file while the daemon had it open",
                "left the new file alone, saved the daemon's copy beside it and stopped "
                "(exit 74): restart jobvault to serve the new file",
            )
        if now is None:
            kind: IncidentKind = "moved" if self._links() > 0 else "deleted"
            what = "moved away" if kind == "moved" else "deleted"
            return self._incident(
                kind,
                f"{self.path} was {what} while the daemon had it open",
                "put the daemon's open copy (every committed byte) back at the path and "
                "started again on it",
            )
        return self._incident(
            "wal_deleted",
            f"the -wal or -shm file of {self.path} was deleted or replaced while in use",
            "saved the daemon's open copy over the path (nothing lost) and started again",
        )

    def _links(self) -> int:
        held = self.lock.database_stat() if self.lock is not None else None
        return held.st_nlink if held is not None else 0

    def _incident(self, kind: IncidentKind, message: str, action: str) -> Incident:
        return {"kind": kind, "detected_at": _now(), "message": message, "action": action,
                "saved_copy": None}  # fmt: skip

    def preserve(self, conn: sqlite3.Connection) -> Path:
        """Copy the open database (the writer's view: everything committed) to a new file.

        Call it on the writer's thread, between rounds. The copy is 0600, in the database's
        directory (re-created 0700 if it was deleted too), and fsynced before it is used.
        """
        ensure_private_dir(self.path.parent, self.path.name)
        copy = self.path.with_name(f"{self.path.name}.restoring-{os.getpid()}")
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(copy) + suffix)
        with umask(0o077):
            target = sqlite3.connect(copy, isolation_level=None)
        try:
            conn.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            target.close()
        fd = os.open(copy, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return copy

    def put_back(self, copy: Path, incident: Incident) -> Path:
        """Once every connection to the old file is closed: put the copy where it belongs.

        Returns where it went: the database path (deleted, moved, WAL lost), or a new name
        beside the file that replaced it (or beside a file that appeared meanwhile).
        """
        # SQLite leaves the -wal and -shm of a moved database at the path when it closes it
        # (deleting them by name could hit another file's): a reader would apply them to
        # whatever file is at the path now. Their content is in the copy: remove them (only
        # ours, when another file took the path).
        for suffix in ("-wal", "-shm"):
            name = str(self.path) + suffix
            if incident["kind"] != "replaced" or _identity(name) == self._known.get(suffix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        if incident["kind"] != "replaced":
            try:
                if incident["kind"] == "wal_deleted":
                    os.replace(copy, self.path)
                else:
                    os.link(copy, self.path)  # never over a file that appeared meanwhile
                    os.unlink(copy)
                self._sync_dir()
                return self.path
            except FileExistsError:
                incident["action"] = (
                    "a new file appeared at the path meanwhile: saved the daemon's copy "
                    "beside it and stopped (exit 74)"
                )
                incident["kind"] = "replaced"
        saved = self.path.with_name(
            f"{self.path.name}.saved-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        )
        os.replace(copy, saved)
        self._sync_dir()
        incident["saved_copy"] = str(saved)
        return saved

    def _sync_dir(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
