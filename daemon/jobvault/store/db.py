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
import stat
from collections.abc import Iterator
from pathlib import Path

from jobvault.errors import NotFoundError, StoreError

BUSY_TIMEOUT_MS = 10_000
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def ensure_private_dir(directory: Path, db_name: str | None = None) -> int | None:
    """Create the database's directory 0700, or make an existing one private.

    Returns the former mode of a directory it tightened (None when nothing changed).

    An existing directory of ours that others can enter is tightened to 0700 when it holds
    nothing but the vault's own files (the database `db_name`, its `-wal`, `-shm`, lock,
    scratch and saved copies, the dashboard's secret): the database and those files are
    0600, but their names, sizes and comings and goings are not for others to see. A shared
    directory (sticky, such as /tmp), another user's, or the home directory is refused with
    the reason. One of ours with other files in it is left as it is (its mode is its
    user's choice for those files; as root, chmodding `/var/lib` would lock every other
    user out of it): `open_note` says so, and the writers warn.
    """
    if not directory.is_dir():
        with umask(0o077):
            directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        return None
    st = directory.stat()
    if not st.st_mode & 0o077:
        return None
    mode = st.st_mode & 0o777
    if st.st_mode & stat.S_ISVTX:
        raise StoreError(
            f"the database directory {directory} is a shared directory (like /tmp): put "
            f"the database in a directory of its own, such as {directory / 'jobvault'}"
        )
    if st.st_uid != os.getuid():
        raise StoreError(
            f"the database directory {directory} belongs to another user (uid {st.st_uid}) "
            f"and others can enter it: put the database in a directory of your own "
            f"(for example {directory / f'jobvault-{os.getuid()}'})"
        )
    home = os.environ.get("HOME")
    if home and os.path.realpath(home) == os.path.realpath(directory):
        raise StoreError(
            f"the database would sit directly in your home directory {directory}, which "
            f"others can enter (mode {mode:o}); jobvault keeps its database "
            "in a private directory: choose one of its own, such as ~/.local/share/jobvault"
        )
    if _others(directory, db_name):
        return None
    directory.chmod(0o700)
    return mode


def open_note(directory: Path, db_name: str) -> str | None:
    """A warning when the database's directory stays open to others (see ensure_private_dir)."""
    try:
        mode = directory.stat().st_mode & 0o777
        others = _others(directory, db_name) if mode & 0o077 else []
    except OSError:
        return None
    if not others:
        return None
    return (
        f"the database directory {directory} is open to others (mode {mode:o}) and holds more "
        f"than the vault ({others[0]!r}, {len(others)} in all), so jobvault left its mode "
        f"alone: others can see the names and sizes of the vault's files (their contents are "
        f"0600). Make it private (chmod 700 {directory}) or give the database a directory "
        "of its own"
    )


def _others(directory: Path, db_name: str | None) -> list[str]:
    return sorted(name for name in os.listdir(directory) if not _vault_file(name, db_name))


_VAULT_NAMES = ("dashboard.token", ".dashboard.token.")  # the dashboard's secret and its temp


def _vault_file(name: str, db_name: str | None) -> bool:
    """Whether `name` in the database's directory is one of the vault's own files."""
    if name.startswith(_VAULT_NAMES):
        return True
    return db_name is not None and (name.startswith(db_name) or name.startswith("." + db_name))


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
        ensure_private_dir(path.parent, path.name)
        if not path.exists():
            with umask(0o077):
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(fd)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open the database at {path}: {exc}") from exc
    from jobvault.store.migrations import migrate  # writers only: readers never migrate

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
    path = path.expanduser().absolute()
    if not path.exists():
        raise NotFoundError(f"no database at {path} (run `jobvault import` or `jobvault run`)")
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database at {path}: {exc}") from exc
    return conn
