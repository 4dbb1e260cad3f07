"""Online backup with SQLite's backup API: a consistent copy while the daemon keeps writing.

The copy is taken in one step from a read-only connection, i.e. from one read snapshot of
the WAL database: it holds exactly the transactions committed before it started, so the
archive's invariant (a file's offset equals the bytes archived for it) holds in the copy.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from jobvault.errors import StoreError, UsageError
from jobvault.store.db import open_reader, umask


def backup(db: Path, target: Path, *, force: bool = False) -> dict[str, Any]:
    """Copy the database at `db` to `target` (created 0600); return a summary."""
    target = target.expanduser()
    if target.exists() and not force:
        raise UsageError(f"{target} exists (use --force to overwrite it)")
    if target.resolve() == db.expanduser().resolve():
        raise UsageError("the backup cannot overwrite the database itself")
    tmp = target.with_name(target.name + ".partial")
    source = open_reader(db)
    try:
        with umask(0o077):
            tmp.unlink(missing_ok=True)
            dest = sqlite3.connect(tmp)
        try:
            source.backup(dest)  # pages=-1: one step, one snapshot
            check = dest.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the backup failed its integrity check: {check}")
            dest.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file
            jobs = dest.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            archived = dest.execute("SELECT COALESCE(SUM(length), 0) FROM chunks").fetchone()[0]
        finally:
            dest.close()
        os.replace(tmp, target)
    except sqlite3.Error as exc:
        raise StoreError(f"backup to {target} failed: {exc}") from exc
    finally:
        source.close()
        tmp.unlink(missing_ok=True)
    return {"backup": str(target), "bytes": target.stat().st_size, "jobs": jobs,
            "bytes_archived": archived}  # fmt: skip
