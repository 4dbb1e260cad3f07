"""The team vault on the command line: `sync`, `team init|forget`, and `--team` on reports.

`--team [URL]` on `stats` and `jobs` switches where their socket method is answered (the team
database instead of the daemon or the local file) and nothing else: the same parameters are
validated by `serve.methods`, the same shapes come back, the same rendering prints them. A URL
comes from the flag, else `JOBVAULT_SYNC_URL`, else `[sync] url`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from jobvault.config import Config
from jobvault.errors import ExitCode, TeamError, UsageError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any

TEAM_REPORTS = ("stats", "jobs")  # the commands `--team` answers (also read by cli/app.py)


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `sync` and `team`, and `--team` / `--machine` to the reports."""
    p = sub.add_parser("sync", help="push this machine's job records to the team database")
    common(p)
    p.add_argument("--to", metavar="URL",
                   help="postgresql://… (default: JOBVAULT_SYNC_URL, else [sync] url)")  # fmt: skip
    p.add_argument("--full", action="store_true",
                   help="send everything again and delete what is gone locally")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    p = sub.add_parser("team", help="create or upgrade the team database; forget a machine")
    common(p)
    p.add_argument("action", choices=("init", "forget"),
                   help="init: create or upgrade the schema (as the database's owner); "
                   "forget: delete a machine and all it pushed")  # fmt: skip
    p.add_argument("machine", nargs="?", help="forget: the machine id (see `stats machines`)")
    p.add_argument("--url", metavar="URL", help="postgresql://… (default: [sync] url)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    for name in TEAM_REPORTS:
        report = sub.choices.get(name)
        if report is None:
            continue  # (a parser built for another command alone)
        report.add_argument(
            "--team", nargs="?", const="", metavar="URL",
            help="answer from the team database (URL, else JOBVAULT_SYNC_URL or [sync] url)",
        )  # fmt: skip
        report.add_argument("--machine", metavar="ID", help="only this machine's jobs")


def url_of(config: Config, given: str | None) -> str:
    """The team database's URL: the flag's, else the configured one."""
    url = given or config.sync_url
    if not url:
        raise UsageError(
            "no team database: give its URL (postgresql://…) or set [sync] url "
            "or JOBVAULT_SYNC_URL (see docs/team.md)"
        )
    return url


def _wrapped(url: str, fn: Callable[[], Any]) -> Any:
    """Run `fn`; a driver error becomes the one-line TeamError it means."""
    from jobvault.team import connect

    psycopg = connect.driver()
    try:
        return fn()
    except psycopg.Error as exc:
        raise connect.classify(exc, url) from None


def cmd_sync(config: Config, args: argparse.Namespace) -> int:
    # rich (the progress bar) and socket here, not at the top: importing this module must stay
    # cheap, it adds `--team` to `jobs` and `stats`, whose start-up is most of their time.
    import socket

    import jobvault
    from jobvault.cli import render
    from jobvault.team import connect
    from jobvault.team.sync import Settings, push
    from jobvault.team.vault import Vault

    url = url_of(config, args.to)
    settings = Settings(
        include=config.sync_include,
        name=config.sync_name or socket.gethostname(),
        batch_rows=config.sync_batch_rows,
        client_version=jobvault.__version__,
    )
    with Vault(config.db) as vault:
        conn = connect.connect(url, application="jobvault-sync")
        try:
            with render.Progress("pushing", 0, enabled=not args.no_progress) as bar:
                result = _wrapped(
                    url, lambda: push(vault, conn, settings, full=args.full, progress=bar.set)
                )
        finally:
            conn.close()
    summary = {**result.to_dict(), "url": connect.display(url)}
    if args.json:
        from jobvault.cli.output import print_json

        print_json(summary)
        return ExitCode.OK
    where = summary["url"]
    if result.full:
        print(f"pushed everything again: {result.full}")
    if result.jobs or result.deleted or result.chunks:
        extra = f", {result.deleted:,} deleted" if result.deleted else ""
        extra += f", {result.chunks:,} archive chunks" if result.chunks else ""
        extra += f"; {result.unchanged:,} rewritten unchanged" if result.unchanged else ""
        print(
            f"pushed {result.jobs:,} job records ({result.rows:,} rows{extra}) to {where} "
            f"in {result.seconds:.1f} s"
        )
    else:
        print(f"nothing to push: {where} is up to date")
    return ExitCode.OK


def cmd_team(config: Config, args: argparse.Namespace) -> int:
    from jobvault.team import connect, schema
    from jobvault.team.sync import forget

    url = url_of(config, args.url)
    conn = connect.connect(url, application="jobvault-team")
    try:
        if args.action == "init":
            ran = _wrapped(url, lambda: schema.migrate(conn))
            summary: dict[str, Any] = {"url": connect.display(url), "applied": ran,
                                       "schema": schema.applied(conn)}  # fmt: skip
            text = (
                f"applied {', '.join(ran)} to {summary['url']}"
                if ran
                else f"{summary['url']} is up to date ({summary['schema'][-1]})"
            )
        else:
            if not args.machine:
                raise UsageError("team forget needs the machine id (see `stats machines --team`)")
            removed = _wrapped(url, lambda: forget(conn, args.machine))
            summary = {"url": connect.display(url), "machine": args.machine, "jobs": removed}
            text = f"forgot machine {args.machine} and its {removed:,} job records"
    finally:
        conn.close()
    if args.json:
        from jobvault.cli.output import print_json

        print_json(summary)
    else:
        print(text)
    return ExitCode.OK


class TeamCaller:
    """Answers the report methods from the team database, on one connection per command."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def call(self, method: str, params: Any) -> Any:
        from jobvault.serve import methods
        from jobvault.team import connect, reports, schema

        table: dict[str, tuple[Callable[[Any], dict[str, Any]], Callable[..., Any]]] = {
            "stats.usage": (methods.usage_args, reports.usage),
            "stats.tools": (methods.tools_args, reports.tools),
            "stats.blocks": (methods.blocks_args, reports.blocks),
            "jobs.list": (methods.jobs_list_args, reports.page_jobs),
        }
        if method not in table:
            raise UsageError(f"--team answers stats and jobs, not {method}")
        parse, answer = table[method]
        kwargs = parse(params)
        if self._conn is None:
            self._conn = connect.connect(self.url, application="jobvault-report")
            _wrapped(self.url, lambda: schema.check(self._conn))
        conn = self._conn
        try:
            return _wrapped(self.url, lambda: answer(conn, **kwargs))
        except TeamError:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def close(args: argparse.Namespace) -> None:
    """Close the command's team connection, if it opened one."""
    existing: TeamCaller | None = getattr(args, "_team_caller", None)
    if existing is not None:
        existing.close()


def caller(config: Config, args: argparse.Namespace) -> TeamCaller | None:
    """The team caller of this command when `--team` was given (one per command)."""
    if getattr(args, "team", None) is None:
        return None
    existing: TeamCaller | None = getattr(args, "_team_caller", None)
    if existing is None:
        existing = TeamCaller(url_of(config, args.team))
        args._team_caller = existing
    return existing
