"""Opening the database: private permissions, WAL, pragmas, migrations.

The database lives in a 0700 directory and is created 0600 (the umask is tightened around
creation so it is never readable by others, not even for an instant). Every connection gets a
busy timeout; the writer connection uses WAL with a bounded journal; readers open the file
read-only (`mode=ro`) and set `query_only`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from jobvault.errors import NotFoundError, StoreError
from jobvault.store.migrations import migrate

BUSY_TIMEOUT_MS = 10_000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` (0700) if missing; tighten it if we created it."""
    if directory.is_dir():
        return
    with umask(0o077):
        directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)


def _set_pragmas(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"could not switch the database to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -4000")  # 4 MB page cache (peak memory: docs/benchmarks.md)


def open_writer(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating if needed) the database for the single writer and apply migrations."""
    path = path.expanduser()
    try:
        ensure_private_dir(path.parent)
        if not path.exists():
            with umask(0o077):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the database at {path}: {exc}") from exc
    try:
        with umask(0o077):  # the -wal and -shm files are created 0600 too
            _set_pragmas(conn, synchronous)
            migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"cannot prepare the database at {path}: {exc}") from exc
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    """Open the database read-only; raise NotFoundError if it does not exist."""
    path = path.expanduser()
    if not path.exists():
        raise NotFoundError(f"no database at {path} (run `jobvault import` or `jobvault run`)")
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database at {path}: {exc}") from exc
    return conn
