"""The error tree and the named exit codes.

Every error's docstring reads as the message a user sees; `exit_code` tells the CLI (and
systemd's `RestartPreventExitStatus=`) what kind of failure it was. The numbers follow
sysexits.h where one fits.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Named process exit codes, documented in docs/operations.md."""

    OK = 0
    FAILURE = 1  # an unexpected error (a bug): systemd may restart
    USAGE = 64  # EX_USAGE: bad command-line arguments
    NOT_FOUND = 66  # EX_NOINPUT: the job, file or path asked for does not exist
    STORE = 74  # EX_IOERR: the database could not be opened or written
    LOCKED = 75  # EX_TEMPFAIL: another jobvault process is writing this database
    UNAVAILABLE = 69  # EX_UNAVAILABLE: the daemon (or the team database) cannot be reached
    NOPERM = 77  # EX_NOPERM: the team database refused the login or the operation
    CONFIG = 78  # EX_CONFIG: the configuration is invalid; restarting will not help


class JobvaultError(Exception):
    """Something went wrong in jobvault."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(JobvaultError):
    """The configuration is invalid."""

    exit_code = ExitCode.CONFIG

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config key {key!r}: {message}")


class StoreError(JobvaultError):
    """The database could not be opened, migrated or written."""

    exit_code = ExitCode.STORE


class LockedError(JobvaultError):
    """Another jobvault process (the daemon, an import or a rebuild) is writing this database."""

    exit_code = ExitCode.LOCKED


class NotFoundError(JobvaultError):
    """The requested job, file or path does not exist."""

    exit_code = ExitCode.NOT_FOUND


class UsageError(JobvaultError):
    """The command line is invalid."""

    exit_code = ExitCode.USAGE


class TeamError(JobvaultError):
    """The team database could not be used."""

    exit_code = ExitCode.FAILURE


class TeamUrlError(TeamError):
    """The team database's URL is invalid, or names a database that does not exist."""

    exit_code = ExitCode.CONFIG


class TeamAuthError(TeamError):
    """The team database refused the login (password, role, pg_hba.conf, certificate)."""

    exit_code = ExitCode.NOPERM


class TeamUnavailable(TeamError):
    """The team database cannot be reached (server down, network, name resolution)."""

    exit_code = ExitCode.UNAVAILABLE


class TeamSchemaError(TeamError):
    """The team database lacks jobvault's schema, or has a newer one than this jobvault."""

    exit_code = ExitCode.CONFIG


class TeamDriverMissing(TeamError):
    """The team vault needs psycopg, installed with `pip install 'jobvault[team]'`."""

    exit_code = ExitCode.CONFIG
