"""A real PostgreSQL server for the team-vault tests (a pytest plugin, see conftest.py).

One cluster per test session, made with Debian's `initdb` / `pg_ctl` in a temporary
directory, listening on 127.0.0.1 with password logins (scram-sha-256) and TLS (a self-signed
certificate, when `openssl` is there); a fresh database per test. As root (CI), the server
runs as the `postgres` user the package creates, since PostgreSQL refuses to run as root. The
tests skip, saying why, only when no server can be had: `make test` and `.ci/run` install
Debian's `postgresql` package when they run as root.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

ADMIN = "jv_admin"
PASSWORD = "s3cret-for-tests"
_COUNTER = itertools.count()
PG_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGPASSFILE",
           "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGOPTIONS",
           "PGCONNECT_TIMEOUT", "PGAPPNAME", "PGREQUIRESSL", "PGTARGETSESSIONATTRS")  # fmt: skip


def find_bindir() -> Path | None:
    """The directory of initdb and pg_ctl: $JOBVAULT_TEST_PG_BIN, Debian's newest, or PATH."""
    explicit = os.environ.get("JOBVAULT_TEST_PG_BIN")
    candidates = [Path(explicit)] if explicit else []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [p / "bin" for p in reversed(versions)]
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A running cluster: URLs for its databases, and stop/start for outage tests."""

    bindir: Path
    base: Path
    port: int
    run_as: str | None
    tls: bool = False
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / "server.log"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self, durable: bool = False, **settings: str) -> None:
        """Create the cluster. Tests run without fsync; `durable` (benchmarks) keeps it."""
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self._run("initdb", "-D", str(self.data), "-U", ADMIN, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--no-locale", "--no-sync")  # fmt: skip
        pwfile.unlink()
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.base}'",
            "max_connections = 50",
            "log_min_messages = warning",
        ]
        if not durable:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off",
                      "shared_buffers = 64MB"]  # fmt: skip
        lines += [f"{key} = '{value}'" for key, value in settings.items()]
        if shutil.which("openssl"):
            key, cert = self.data / "server.key", self.data / "server.crt"
            made = subprocess.run(
                ["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj",
                 "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                 "-keyout", str(key), "-out", str(cert)],
                capture_output=True, timeout=60,
            )  # fmt: skip
            if made.returncode == 0:
                key.chmod(0o600)
                self._own(key)
                self._own(cert)
                shutil.copy(cert, self.base / "root.crt")
                lines += ["ssl = on", f"ssl_cert_file = '{cert}'", f"ssl_key_file = '{key}'"]
                self.tls = True
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write("\n".join(lines) + "\n")

    def _own(self, path: Path) -> None:
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                  check=False)  # fmt: skip

    def url(
        self, database: str = "postgres", user: str = ADMIN, password: str | None = PASSWORD,
        **params: str,
    ) -> str:  # fmt: skip
        auth = quote(user) + (f":{quote(password)}" if password is not None else "")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def admin(self, database: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True)

    def create_database(self) -> str:
        name = f"team_{os.getpid()}_{next(_COUNTER)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception), self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Unavailable(Exception):
    """No PostgreSQL server can be had here (the message says why)."""


def start_server(durable: bool = False, **settings: str) -> PgServer:
    """Make and start a cluster in a new directory under /tmp, or raise Unavailable."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install -e '.[team]')") from None
    bindir = find_bindir()
    if bindir is None:
        raise Unavailable(
            "initdb/pg_ctl not found: install Debian's postgresql package "
            "(make test does when run as root), or set JOBVAULT_TEST_PG_BIN"
        )
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user") from None
        if not shutil.which("runuser"):
            raise Unavailable("running as root and runuser is missing")
        run_as = "postgres"
    base = Path(tempfile.mkdtemp(prefix="jvpg-", dir="/tmp"))
    server = PgServer(bindir, base, free_port(), run_as)
    server._own(base)
    try:
        server.init(durable, **settings)
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        log = server.log.read_text() if server.log.exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        detail = getattr(exc, "stderr", "") or str(exc)
        raise Unavailable(
            f"the server did not start: {detail.strip()[:300]} {log[-300:]}"
        ) from None
    return server


def remove_server(server: PgServer) -> None:
    server.stop("immediate")
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (skips, saying why, when none can be had)."""
    try:
        server = start_server()
    except Unavailable as exc:
        if os.environ.get("REQUIRE_TEAM_TESTS"):  # CI: the server must be there
            pytest.fail(f"REQUIRE_TEAM_TESTS is set and there is no PostgreSQL server: {exc}")
        pytest.skip(f"no PostgreSQL server for the team tests: {exc}")
    try:
        yield server
    finally:
        remove_server(server)


@pytest.fixture
def team_db(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty database on the session's server; yields its admin URL."""
    for var in PG_VARS:
        monkeypatch.delenv(var, raising=False)
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
