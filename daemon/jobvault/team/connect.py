"""Connecting to the team database, as every libpq client does.

The URL (or a `key=value` connection string) goes to libpq unchanged, so a password in it,
`PGPASSFILE` / `~/.pgpass`, `PGPASSWORD`, `PGSSLMODE`, `sslrootcert=` and the other `PG*`
variables mean what they mean for psql. jobvault only adds defaults libpq lacks and the URL
does not set: a connect timeout, TCP keepalives and a user timeout (so a dead network is noticed
in seconds, not after the kernel's 15 minutes), and an application name shown in
`pg_stat_activity`. Every failure becomes one line naming the database (never its password)
and a named exit code: a bad URL or unknown database 78, a refused login 77, a server that
cannot be reached 69.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from jobvault.errors import (
    TeamAuthError,
    TeamDriverMissing,
    TeamError,
    TeamSchemaError,
    TeamUnavailable,
    TeamUrlError,
)

if TYPE_CHECKING:
    import psycopg

APPLICATION = "jobvault"
# Defaults for what neither the URL nor a PG* variable sets (libpq's own names).
DEFAULTS = {
    "connect_timeout": ("PGCONNECT_TIMEOUT", "10"),
    "application_name": ("PGAPPNAME", APPLICATION),
    "keepalives_idle": (None, "30"),
    "keepalives_interval": (None, "10"),
    "keepalives_count": (None, "3"),
    "tcp_user_timeout": (None, "60000"),
}
_AUTH = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "pg_hba.conf",
    "permission denied",
    "must be owner",
    "certificate",
    'role "',
    "ssl error",
)
_URL = (
    "invalid integer value",
    "invalid value for",
    "invalid connection option",
    "invalid uri",
    "invalid sslmode",
    "does not exist",
    "but ssl was required",
    "invalid port",
)


def driver() -> Any:
    """The psycopg module, or a TeamDriverMissing saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise TeamDriverMissing(
            "the team vault needs the PostgreSQL driver: pip install 'jobvault[team]'"
        ) from None
    return psycopg


def parse(url: str) -> dict[str, str]:
    """The URL's connection parameters (libpq's names), or a TeamUrlError."""
    text = url.strip()
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise TeamUrlError(
            f"the team database URL must start with postgresql:// (got {text.split('://')[0]}://…)"
        )
    from psycopg.conninfo import conninfo_to_dict

    driver()
    try:
        params = conninfo_to_dict(text)
    except Exception as exc:  # psycopg.ProgrammingError: libpq could not read it
        raise TeamUrlError(f"invalid team database URL: {_first_line(str(exc))}") from None
    port = str(params.get("port") or "")
    if port and not all(p.isdigit() for p in port.split(",")):
        raise TeamUrlError(f"invalid team database URL: the port {port!r} is not a number")
    return {k: str(v) for k, v in params.items() if v is not None}


def display(url: str) -> str:
    """The URL without its password, for messages, logs and `status`."""
    try:
        params = parse(url)
    except TeamError:
        return "<invalid URL>"
    user = params.get("user", "")
    host = params.get("host", "")
    port = params.get("port", "")
    where = host if host and not host.startswith("/") else ""
    out = "postgresql://" + (f"{user}@" if user else "") + where + (f":{port}" if port else "")
    out += "/" + params.get("dbname", "")
    extra = {k: v for k, v in params.items() if k in ("sslmode",)}
    if host.startswith("/"):
        extra = {"host": host, **extra}
    if extra:
        out += "?" + "&".join(f"{k}={v}" for k, v in extra.items())
    return out


def connect(url: str, *, application: str = APPLICATION) -> psycopg.Connection[Any]:
    """Open an autocommit connection (each change runs in an explicit transaction)."""
    pg = driver()
    params = parse(url)
    extra: dict[str, str] = {}
    for key, (env, value) in DEFAULTS.items():
        if key not in params and not (env and os.environ.get(env)):
            extra[key] = application if key == "application_name" else value
    try:
        conn: psycopg.Connection[Any] = pg.connect(url, autocommit=True, **extra)
    except pg.Error as exc:
        raise classify(exc, url, connecting=True) from None
    return conn


def classify(exc: BaseException, url: str, *, connecting: bool = False) -> TeamError:
    """A driver error as the TeamError (and exit code) it means, in one line."""
    where = display(url)
    text = _reason(str(exc))
    low = text.lower()
    name = type(exc).__name__
    if connecting and name == "ProgrammingError":
        return TeamUrlError(f"invalid team database URL {where}: {text}")
    unreadable = "root certificate file" in low or not any(m in low for m in _AUTH)
    if connecting and unreadable and any(marker in low for marker in _URL):
        return TeamUrlError(f"the team database {where} cannot be used: {text}")
    if any(marker in low for marker in _AUTH) or name in (
        "InsufficientPrivilege",
        "InvalidPassword",
        "InvalidAuthorizationSpecification",
    ):
        return TeamAuthError(f"the team database {where} refused: {text}")
    if name in ("UndefinedTable", "UndefinedColumn", "UndefinedFunction", "InvalidSchemaName"):
        return TeamSchemaError(f"the team database {where} has an unexpected schema: {text}")
    if name in ("OperationalError", "ConnectionTimeout", "AdminShutdown", "CannotConnectNow",
                "ConnectionFailure", "QueryCanceled") or connecting:  # fmt: skip
        return TeamUnavailable(f"cannot reach the team database {where}: {text}")
    return TeamError(f"the team database {where} failed: {text}")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


_PREFIX = re.compile(r"^(?:connection failed: )?(?:connection to server (?:at|on) .*? failed: )?")


def _reason(text: str) -> str:
    """libpq's message without its boilerplate: the part a person needs."""
    line = _first_line(text)
    line = _PREFIX.sub("", line)
    line = re.sub(r"^(?:FATAL|ERROR):\s+", "", line)
    return line.strip() or "unknown error"
