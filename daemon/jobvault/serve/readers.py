"""Reader lanes: small thread pools, each thread with its own read-only connection.

The socket's methods do not all cost the same. `status` reads one row; `jobs.list`,
`jobs.get` and the reports read an index or a rollup; `search` and `jobs.transcript` read
the full-text index or decompress the archive; `sql` runs whatever a user wrote, for up to
`sql_time_limit`; the dashboard's pages (`serve/web`) gather several reports each. Each
kind gets its own lane, so the cheap methods never wait behind a long one: four runaway
`sql` queries occupy the `sql` lane and queue there, and `status` still answers in a
millisecond. A lane refuses new work (`busy`) once `queue_limit` requests are waiting,
rather than queueing without bound.

Connections open lazily, one per thread, `mode=ro` with `query_only`; `reopen()` makes every
thread replace its connection at its next use (after the database file was replaced).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jobvault.serve.protocol import OVERLOADED, RpcError
from jobvault.store import sql as user_sql
from jobvault.store.db import BUSY_TIMEOUT_MS

LaneName = Literal["status", "read", "heavy", "sql", "web"]
# The largest value a method's own queries read (an archive chunk is at most a few MiB).
READ_MAX_VALUE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LaneSpec:
    threads: int
    queue_limit: int
    user_sql: bool = False  # connections run under `store.sql`'s limits


LANES: dict[LaneName, LaneSpec] = {
    "status": LaneSpec(threads=1, queue_limit=256),
    "read": LaneSpec(threads=4, queue_limit=256),
    "heavy": LaneSpec(threads=4, queue_limit=32),
    "sql": LaneSpec(threads=2, queue_limit=16, user_sql=True),
    "web": LaneSpec(threads=4, queue_limit=256),  # the dashboard's pages (serve/web)
}
# Which lane answers each method; anything else runs on "read".
METHOD_LANES: dict[str, LaneName] = {
    "status": "status",
    "search": "heavy",
    "jobs.transcript": "heavy",
    "sql": "sql",
}


def open_read_connection(db_path: Path, *, for_user_sql: bool = False) -> sqlite3.Connection:
    """A read-only connection for a reader thread (its limits depend on who writes its SQL)."""
    conn = sqlite3.connect(
        f"{db_path.absolute().as_uri()}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    if for_user_sql:
        user_sql.prepare_connection(conn)
    else:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, READ_MAX_VALUE_BYTES)
    return conn


class Lane:
    """One pool of reader threads; `run` queues a function of a connection on it."""

    def __init__(self, name: LaneName, db_path: Path, spec: LaneSpec) -> None:
        self.name = name
        self.db_path = db_path
        self.spec = spec
        self._pool = ThreadPoolExecutor(spec.threads, thread_name_prefix=f"jobvault-{name}")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._generation = 0
        self.waiting = 0  # queued or running
        self.refused = 0

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation != self._generation:
            self._forget(conn)
            conn = None
        if conn is None:
            conn = open_read_connection(self.db_path, for_user_sql=self.spec.user_sql)
            self._local.conn = conn
            self._local.generation = self._generation
            with self._lock:
                self._conns.append(conn)
        return conn

    def _forget(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
        conn.close()

    async def run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self.waiting >= self.spec.queue_limit:
            self.refused += 1
            raise RpcError(
                OVERLOADED, "busy",
                f"{self.waiting} {self.name} requests are already waiting; retry shortly",
            )  # fmt: skip
        self.waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, lambda: fn(self._conn()))
        finally:
            self.waiting -= 1

    def reopen(self) -> None:
        """Make every thread open a new connection at its next use (thread-safe)."""
        self._generation += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


class Readers:
    """The lanes of one server."""

    def __init__(self, db_path: Path, lanes: dict[LaneName, LaneSpec] | None = None) -> None:
        self.lanes = {name: Lane(name, db_path, spec) for name, spec in (lanes or LANES).items()}

    def for_method(self, method: str) -> Lane:
        return self.lanes[METHOD_LANES.get(method, "read")]

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            n: {"waiting": lane.waiting, "refused": lane.refused} for n, lane in self.lanes.items()
        }

    def reopen(self) -> None:
        for lane in self.lanes.values():
            lane.reopen()

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
