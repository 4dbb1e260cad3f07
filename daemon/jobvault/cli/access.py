"""How a command reaches the vault: the running daemon's socket, or the database file.

* No database named: the daemon when it runs, else the default database, read directly.
* A database named explicitly (`--db` or `JOBVAULT_DB`) is always the one read: through the
  daemon only when the daemon serves that very file (same device and inode), else directly;
  one that does not exist is an error (66), never another vault's answer.
* `--socket` given: that daemon must be running (69 otherwise), and a database named
  explicitly that it does not serve is refused (64) rather than answered from another vault.

Both ways run the same method functions (`serve/methods.py`), so the answer has the same
shape whichever way it came.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from jobvault.config import Config
from jobvault.errors import NotFoundError, UsageError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class Vault:
    """One command's way to the vault; `call` answers a socket method either way."""

    def __init__(self, config: Config, *, explicit_db: bool, explicit_socket: bool) -> None:
        self.config = config
        self.explicit_db = explicit_db
        self.explicit_socket = explicit_socket
        self._client: Any = None
        self._decided = False

    def client(self) -> Any:
        """The daemon's client when the command should go through it, else None."""
        if self._decided:
            return self._client
        self._decided = True
        if self.explicit_db and not self.config.db.exists():
            if self.explicit_socket:
                raise NotFoundError(f"no database at {self.config.db}")
            return None  # read directly: the error names the missing file
        if not self.explicit_socket and not os.path.exists(self.config.socket):
            # No daemon (it removes its socket when it stops): the socket client and its
            # modules are not even imported.
            return None
        from jobvault.serve.client import Client, DaemonUnavailable

        try:
            client = Client(self.config.socket)
        except DaemonUnavailable:
            if self.explicit_socket:  # asked for explicitly: say so
                raise
            return None
        if self.explicit_db:
            served = client.call("status").get("db_path", "")
            if not _same_file(served, self.config.db):
                client.close()
                if self.explicit_socket:
                    raise UsageError(
                        f"the daemon on {self.config.socket} serves {served}, not "
                        f"{self.config.db}: drop --socket to read {self.config.db} directly"
                    )
                return None
        self._client = client
        return client

    def call(self, method: str, params: Any) -> Any:
        client = self.client()
        if client is None:
            return self._offline(method, params)
        return client.call(method, params)

    def _offline(self, method: str, params: Any) -> Any:
        """Answer a socket method from the database directly (no daemon serves it)."""
        from jobvault.serve.methods import Limits, read_methods, run_read
        from jobvault.serve.protocol import METHOD_NOT_FOUND, RpcError
        from jobvault.store import queries
        from jobvault.store import sql as user_sql
        from jobvault.store.db import open_reader

        if method == "subscribe":
            from jobvault.serve.client import DaemonUnavailable

            raise DaemonUnavailable("subscribe needs the running daemon (start `jobvault run`)")
        conn = open_reader(self.config.db)
        try:
            if method == "status":
                return {"daemon": "not running", **queries.db_status(conn, str(self.config.db))}
            limits = Limits(
                sql_time_limit=self.config.sql_time_limit,
                sql_max_rows=self.config.sql_max_rows,
                sql_max_bytes=self.config.sql_max_bytes,
            )
            handler = read_methods(limits).get(method)
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, "method_not_found", f"no method {method!r}")
            if method == "sql":  # the same limits as the daemon's sql connections
                user_sql.prepare_connection(conn)
            return run_read(handler, conn, params, limits.request_timeout)
        finally:
            conn.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Vault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TeamAccess:
    """`--team`: the team database answers the command's methods (cli/team.py)."""

    def __init__(self, caller: Any) -> None:
        self._caller = caller

    def client(self) -> None:
        return None  # (no daemon behind it: `subscribe` is not a team method)

    def call(self, method: str, params: Any) -> Any:
        return self._caller.call(method, params)

    def close(self) -> None:
        self._caller.close()

    def __enter__(self) -> TeamAccess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
