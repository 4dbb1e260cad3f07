"""The `jobvault` command line: argument parsing and output only; the work lives elsewhere.

Start-up is part of every command's cost (`jobvault stats --json` answers in tens of
milliseconds), so this module imports only argparse, the configuration and the error tree.
Each command imports what it uses inside its function: the socket client, the store, rich
(human output of `show`, `search`, `replay` and progress bars only), structlog (the writers:
`run`, `import`, `rebuild`, `backup`). A new command keeps the CLI fast by doing the same:
no module-level import of anything heavier than the standard library's small modules.
`tests/test_cli_paths.py::test_read_commands_import_only_what_they_use` checks it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from jobvault import config as config_mod
from jobvault.cli.team import TEAM_REPORTS  # (the commands `--team` answers)
from jobvault.config import Config
from jobvault.errors import ExitCode, JobvaultError, NotFoundError, UsageError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any

ORDER_NAMES = {"started": "started_at", "ended": "ended_at", "cost": "cost_usd",
               "duration": "duration_ms"}  # fmt: skip
STATUSES = ("active", "completed", "interrupted", "error")


def _columns() -> int:
    """The width help is wrapped to (what argparse asks shutil for, without importing it)."""
    try:
        return int(os.environ.get("COLUMNS", "")) - 2
    except ValueError:
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns - 2
    except (OSError, ValueError):
        return 78


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told its width (it would import shutil for every parser)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        super().__init__(prog, indent_increment, max_help_position, width or _columns())


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


class _Reparse(Exception):
    """A parser built for one command found an error: the whole parser parses again."""


class _OneCommandParser(_Parser):
    """A parser that knows one command only (see `parse_arguments`): any error it finds is
    said by the whole parser instead, which knows every command and says it as usual."""

    def error(self, message: str) -> Any:
        raise _Reparse(message)


class _Sink:
    """Stands in for the parser of a command that is not being run: every call is ignored,
    so that only the command given pays for building its arguments (start-up time)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _Commands:
    """The subparsers: every command (for help and errors), or the one being run alone."""

    def __init__(self, sub: Any, only: str | None) -> None:
        self.sub, self.only = sub, only

    @property
    def choices(self) -> dict[str, argparse.ArgumentParser]:
        """The parsers built, by name."""
        choices: dict[str, argparse.ArgumentParser] = self.sub.choices
        return choices

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self.only is None or self.only == name:
            return self.sub.add_parser(name, **kwargs)
        return _Sink()


_WITH_VALUE = frozenset({"--db", "--config", "--log-level", "--socket"})


def command_of(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The command an argument list runs (None when help is asked before it, or unknown)."""
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item in _WITH_VALUE:
            skip = True
        elif item in ("-h", "--help", "--version"):
            return None
        elif not item.startswith("-"):
            return item if item in names else None
    return None


class _Version(argparse.Action):
    """`--version`, without looking the version up unless asked (it is slow to find)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        import jobvault

        parser.exit(message=f"jobvault {jobvault.__version__}\n")


def _global(parser: argparse.ArgumentParser, *, sub: bool, socket: bool = True) -> None:
    """The options every command takes, before or after its name.

    On the top-level parser they default to None; on a command's parser they are SUPPRESSed,
    so that `jobvault --db X jobs` is not undone by the command's own default.
    """
    default = argparse.SUPPRESS if sub else None
    parser.add_argument(
        "--db",
        type=Path,
        default=default,
        help="database path (env JOBVAULT_DB; a relative path is from here)",
    )
    parser.add_argument(
        "--config", type=Path, default=default, help="config file (env JOBVAULT_CONFIG)"
    )
    parser.add_argument("--log-level", choices=config_mod.LOG_LEVELS, default=default,
                        help="log verbosity (default info)")  # fmt: skip
    if socket:
        parser.add_argument(
            "--socket",
            type=Path,
            default=default,
            help="the daemon's socket (env JOBVAULT_SOCKET; default: XDG)",
        )


def _common(parser: argparse.ArgumentParser) -> None:
    _global(parser, sub=True, socket=False)


def _socket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        type=Path,
        default=argparse.SUPPRESS,
        help="the daemon's socket (env JOBVAULT_SOCKET; default: XDG)",
    )


def _formats(parser: argparse.ArgumentParser, csv: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print the JSON result")
    if csv:
        group.add_argument("--csv", action="store_true",
                           help="print CSV: a header row, then one row per item")  # fmt: skip


def _job_filters(p: argparse.ArgumentParser) -> None:
    """The `jobs.list` filters, as flags (shared by `jobs` and `search`)."""
    p.add_argument("--since", help="started at or after (ISO date/time, or an age: 7d, 12h)")
    p.add_argument("--until", help="started before (ISO date/time, or an age)")
    p.add_argument("--project", help="only jobs of this project (e.g. -home-me-app)")
    p.add_argument("--tool", help="only jobs that used this tool (e.g. Bash)")
    p.add_argument("--model", help="only jobs that used this model")
    p.add_argument("--source", help="only jobs from this agent (claude, codex)")
    p.add_argument("--status", choices=STATUSES, help="only jobs in this state")
    p.add_argument("--cwd", metavar="DIR", help="only jobs run in DIR or below it")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="modified this file: an exact path, a prefix ending in /, or a glob",
    )
    p.add_argument("--min-cost", type=float, metavar="USD", help="cost at least USD")
    p.add_argument("--max-cost", type=float, metavar="USD", help="cost at most USD")
    p.add_argument("--min-duration", metavar="TIME", help="lasted at least TIME (90s, 10m, 2h)")
    p.add_argument("--max-duration", metavar="TIME", help="lasted at most TIME")  # fmt: skip


COMMANDS = ("run", "import", "jobs", "show", "export", "status", "query", "backup", "service",
            "stats", "search", "replay", "rebuild", "dashboard", "report",
            "statusline", "sync", "team")  # fmt: skip


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every command, or only the one named `only` (see `parse_arguments`)."""
    parser_class = _Parser if only is None else _OneCommandParser
    parser = parser_class(
        prog="jobvault",
        description="Archive AI coding-agent sessions losslessly and query them as job records.",
        epilog="--db, --config, --log-level and --socket may come before or after the command.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    _global(parser, sub=False)
    sub: Any = _Commands(
        parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", parser_class=parser_class
        ),
        only,
    )

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _common(p)
    _socket(p)
    p.add_argument("--watch", action="append", type=Path, metavar="DIR",
                   help="directory to watch (repeatable; replaces the default roots)")  # fmt: skip
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="finalize a session after this long without appends")  # fmt: skip

    p = sub.add_parser("import", help="ingest files or directories once, then finalize them")
    _common(p)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    p = sub.add_parser("jobs", help="list job records, newest first")
    _common(p)
    _socket(p)
    _formats(p)
    p.add_argument("--limit", type=int, default=50, help="how many (0 for all; default 50)")
    _job_filters(p)
    p.add_argument(
        "--order",
        default="started",
        metavar="KEY",
        help="sort by started (default), ended, cost or duration, largest or newest first; "
        "+KEY for the other way (+cost: cheapest first)",
    )

    p = sub.add_parser("show", help="show one job with its tool calls, subagents and files")
    _common(p)
    _socket(p)
    p.add_argument("id", help="job id, session id, or a unique prefix of either")
    _formats(p, csv=False)

    p = sub.add_parser("export", help="restore a job's original transcript byte for byte")
    _common(p)
    p.add_argument("id", help="job id, session id, or a unique prefix of either")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the main file here, 0600 (default: standard output)",
    )
    out.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="restore every file of the job (subagents too) under DIR",
    )
    p.add_argument("--force", action="store_true",
                   help="overwrite files that exist (never done otherwise)")  # fmt: skip

    p = sub.add_parser("status", help="the daemon's state (or the database's, if it is stopped)")
    _common(p)
    _socket(p)
    _formats(p, csv=False)

    p = sub.add_parser("query", help="call a socket method (JSON-RPC) and print its JSON result")
    _common(p)
    _socket(p)
    p.add_argument("method", help="status, jobs.list, jobs.get, jobs.transcript, search, "
                   "stats.usage, stats.tools, stats.blocks, sql, subscribe")  # fmt: skip
    p.add_argument("params", nargs="?", default="{}", help="parameters as a JSON object")

    p = sub.add_parser("backup", help="copy the database consistently, even while the daemon runs")
    _common(p)
    p.add_argument("path", type=Path, help="where to write the copy")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("service", help="install, uninstall or inspect the user service")
    p.add_argument("action", choices=("install", "uninstall", "status"))
    p.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    p.add_argument("--log-level", choices=config_mod.LOG_LEVELS, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    if sub.only in (None, "stats", "search", "replay"):
        from jobvault.cli import reports

        reports.add_parsers(sub, _common, _socket, _formats, _job_filters)
    if sub.only in (None, "dashboard", "report", "statusline"):
        from jobvault.cli import dashboard as cli_dashboard

        cli_dashboard.add_parsers(sub, _common, _socket)

    p = sub.add_parser("rebuild", help="recompute every job record from the archive alone")
    _common(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    if sub.only in (None, "sync", "team", *TEAM_REPORTS):  # also `--team` on jobs and stats
        from jobvault.cli import team as cli_team

        cli_team.add_parsers(sub, _common)
    return parser


def _load_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    if getattr(args, "db", None):
        overrides["db"] = str(args.db)
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    if getattr(args, "watch", None):
        overrides["watch"] = [str(w) for w in args.watch]
    if getattr(args, "idle_timeout", None) is not None:
        overrides["idle_timeout"] = args.idle_timeout
    if getattr(args, "socket", None):
        overrides["socket"] = str(args.socket)
    config_path = getattr(args, "config", None)
    return config_mod.load(config_path.absolute() if config_path else None, overrides)


def vault(config: Config, args: argparse.Namespace) -> Any:
    """How this command reaches the vault (`access.Vault`, or the team database's caller
    with `--team`: the same methods, answered there)."""
    if getattr(args, "team", None) is not None:
        from jobvault.cli import team as cli_team
        from jobvault.cli.access import TeamAccess

        return TeamAccess(cli_team.caller(config, args))
    from jobvault.cli.access import Vault

    explicit_db = bool(getattr(args, "db", None) or os.environ.get("JOBVAULT_DB"))
    return Vault(config, explicit_db=explicit_db, explicit_socket=bool(args.socket))


def _configure_logging(level: str) -> None:
    from jobvault.log import configure

    configure(level)


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    from jobvault.ingest import memory
    from jobvault.service import daemon as service

    _configure_logging(config.log_level)
    memory.limit_fragmentation()
    # SIGHUP re-reads the file and the environment; flags given here still win. The daemon
    # takes the writer lock itself (and again after putting a deleted database back).
    asyncio.run(service.main(config, lambda: _load_config(args)))
    return ExitCode.OK


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    from jobvault.cli import render, tables
    from jobvault.cli.output import print_json
    from jobvault.ingest import memory
    from jobvault.ingest.engine import Engine, file_size
    from jobvault.store.db import open_writer
    from jobvault.store.lock import WriterLock
    from jobvault.store.writer import Store

    _configure_logging(args.log_level or "warning")
    roots = [p.expanduser().absolute() for p in args.paths]
    for root in roots:
        if not root.exists():
            raise NotFoundError(f"no such file or directory: {root}")
    with WriterLock(config.db) as lock:
        if lock.open_note:  # the directory was left open to others (store/db.py)
            print(f"warning: {lock.open_note}", file=sys.stderr)
        memory.limit_fragmentation()
        store = Store(open_writer(config.db, config.synchronous), config.compression_level)
        store.bulk()
        engine = Engine(config, store, job_write_interval=float("inf"))
        try:
            # Sessions archived by an interrupted earlier run get their records too.
            engine.recover()
            paths = engine.scan(roots)
            sizes = {p: file_size(p) for p in paths}
            with render.Progress(
                "importing", sum(sizes.values()), enabled=not args.no_progress
            ) as progress:
                engine.ingest_once(
                    roots,
                    lambda group: progress.advance(sum(sizes.get(p, 0) for p in group)),
                    paths=paths,
                    sizes=sizes,
                )
            summary = {
                "files": len(paths),
                "bytes_archived": engine.stats.bytes_archived,
                "lines": engine.stats.lines_archived,
                "bad_lines": engine.stats.bad_lines,
                # Sessions with no conversation are archived but are not jobs.
                "jobs": len(engine.sessions_read - store.empty_sessions()),
                "db": str(config.db),
            }
        finally:
            engine.close()
            store.close()
    if args.json:
        print_json(summary)
    else:
        tables.import_summary(summary)
    return ExitCode.OK


def _parse_duration(text: str, flag: str) -> int:
    """`90s`, `10m`, `2h`, `1d` or a number of seconds, as milliseconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            number, scale = value[: -len(unit)], units[unit]
            break
    else:
        number, scale = value, 1
    try:
        seconds = float(number) * scale
    except ValueError:
        raise UsageError(f"{flag}: cannot read the time {text!r} (use 90s, 10m or 2h)") from None
    if seconds < 0:
        raise UsageError(f"{flag} must not be negative")
    return round(seconds * 1000)


def job_filter_params(args: argparse.Namespace) -> dict[str, Any]:
    """The `jobs.list` parameters of the filter flags that were given."""
    params: dict[str, Any] = {}
    for key in ("since", "until", "project", "tool", "model", "source", "status", "cwd"):
        if getattr(args, key, None):
            params[key] = getattr(args, key)
    if getattr(args, "file", None):
        # One flag for the three ways of naming files; the socket method spells them out.
        if any(ch in args.file for ch in "*?["):
            params["file_glob"] = args.file
        elif args.file.endswith("/"):
            params["file_prefix"] = args.file
        else:
            params["file"] = args.file
    for key in ("min_cost", "max_cost"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    for key in ("min_duration", "max_duration"):
        if getattr(args, key, None):
            flag = "--" + key.replace("_", "-")
            params[f"{key}_ms"] = _parse_duration(getattr(args, key), flag)
    return params


def _order(text: str) -> str:
    """A jobs.list order: `cost` is `-cost_usd` (largest first), `+cost` is `cost_usd`."""
    if text.lstrip("-") in ORDER_NAMES.values():
        return text  # already a jobs.list order (the method checks it)
    ascending = text.startswith("+")
    name = ORDER_NAMES.get(text.lstrip("+"))
    if name is None:
        raise UsageError(
            f"unknown --order {text!r}: one of {', '.join(ORDER_NAMES)} (largest or newest "
            "first), +KEY for the other way, or a jobs.list order such as -cost_usd"
        )
    return name if ascending else "-" + name


def cmd_jobs(config: Config, args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or a positive number")
    params = job_filter_params(args)
    for key in ("since", "until"):
        if key in params:
            from jobvault.store.queries import parse_time

            params[key] = parse_time(params[key])
    params["order"] = _order(args.order)
    if getattr(args, "machine", None):
        params["machine"] = args.machine
    jobs: list[dict[str, Any]] = []
    cursor = None
    with vault(config, args) as access:
        while True:
            want = 1000 if args.limit == 0 else min(1000, args.limit - len(jobs))
            page = access.call("jobs.list", {**params, "limit": want, "cursor": cursor})
            jobs.extend(page["jobs"])
            cursor = page["next_cursor"]
            if cursor is None or (args.limit and len(jobs) >= args.limit):
                break
    if args.json:
        from jobvault.cli.output import print_json

        print_json(jobs)
    elif args.csv:
        from jobvault.cli.output import print_csv

        print_csv(jobs)
    else:
        from jobvault.cli import tables

        tables.jobs_table(jobs)
    return ExitCode.OK


def cmd_show(config: Config, args: argparse.Namespace) -> int:
    with vault(config, args) as access:
        job = access.call("jobs.get", {"id": args.id})
    if args.json:
        from jobvault.cli.output import print_json

        print_json(job)
    else:
        from jobvault.cli import render

        render.job_detail(job)
    return ExitCode.OK


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    with vault(config, args) as access:
        status = access.call("status", {})
    if args.json:
        from jobvault.cli.output import print_json

        print_json(status)
    else:
        from jobvault.cli import tables

        tables.status(status)
    return ExitCode.OK


def cmd_query(config: Config, args: argparse.Namespace) -> int:
    from jobvault import jsonio
    from jobvault.cli.output import print_json

    try:
        params = jsonio.loads(args.params)
    except ValueError as exc:
        raise UsageError(f"PARAMS must be JSON: {exc}") from None
    if not isinstance(params, dict | list):
        raise UsageError("PARAMS must be a JSON object or array")
    with vault(config, args) as access:
        if args.method == "subscribe":
            from jobvault.serve.client import DaemonUnavailable

            client = access.client()
            if client is None:
                raise DaemonUnavailable("subscribe needs the running daemon (start `jobvault run`)")
            print_json(client.call("subscribe", params))
            for message in client.notifications():
                sys.stdout.write(jsonio.dumps(message).decode() + "\n")
                sys.stdout.flush()
            return ExitCode.OK
        print_json(access.call(args.method, params))
    return ExitCode.OK


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    from jobvault.cli.export import export

    for path in export(config.db, args.id, output=args.output, directory=args.dir,
                       force=args.force):  # fmt: skip
        if args.dir is not None:
            print(path)
    return ExitCode.OK


def cmd_reports(config: Config, args: argparse.Namespace) -> int:
    """`stats`, `search` and `replay` (reports.py), with this module's way to the vault."""
    from jobvault.cli import reports

    handler = {"stats": reports.cmd_stats, "search": reports.cmd_search,
               "replay": reports.cmd_replay}[args.command]  # fmt: skip
    with vault(config, args) as access:
        return handler(args, access.call, config.db)


def cmd_rebuild(config: Config, args: argparse.Namespace) -> int:
    from jobvault.cli import render
    from jobvault.cli.output import print_json
    from jobvault.ingest import memory
    from jobvault.ingest.engine import Engine
    from jobvault.store.db import open_writer
    from jobvault.store.lock import WriterLock
    from jobvault.store.writer import Store

    _configure_logging(args.log_level or "warning")
    if not config.db.expanduser().exists():
        raise NotFoundError(f"no database at {config.db}")
    with WriterLock(config.db) as lock:
        if lock.open_note:  # the directory was left open to others (store/db.py)
            print(f"warning: {lock.open_note}", file=sys.stderr)
        memory.limit_fragmentation()
        store = Store(open_writer(config.db, config.synchronous), config.compression_level)
        store.bulk()
        engine = Engine(config, store)
        try:
            with render.Progress("rebuilding", 0, enabled=not args.no_progress) as progress:
                count = engine.rebuild(progress.set)
            count -= len(store.empty_sessions())  # archived sessions that are not jobs
        finally:
            engine.close()
            store.close()
    if args.json:
        print_json({"jobs": count})
    else:
        print(f"rebuilt {count:,} job record{'s' if count != 1 else ''} from the archive")
    return ExitCode.OK


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    from jobvault.cli.output import print_json
    from jobvault.store.backup import backup

    summary = backup(config.db, args.path, force=args.force)
    if args.json:
        print_json(summary)
    else:
        from jobvault.cli.tables import plural

        print(
            f"backed up {plural(summary['jobs'], 'job')} and "
            f"{plural(summary['bytes_archived'], 'archived byte')} to {summary['backup']} "
            f"({plural(summary['bytes'], 'byte')})"
        )
    return ExitCode.OK


def cmd_service(config: Config, args: argparse.Namespace) -> int:
    from jobvault.service import install

    out: list[str] = []
    if args.action == "install":
        install.install(install.install_plan(), dry_run=args.dry_run, out=out)
    elif args.action == "uninstall":
        install.uninstall(install.uninstall_plan(), dry_run=args.dry_run, out=out)
    else:
        ok, out = install.status()
        print("\n".join(out))
        return ExitCode.OK if ok else ExitCode.UNAVAILABLE
    print("\n".join(out))
    if args.dry_run:
        print("(dry run: nothing was changed)")
    return ExitCode.OK


HANDLERS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "run": cmd_run,
    "import": cmd_import,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "status": cmd_status,
    "query": cmd_query,
    "export": cmd_export,
    "stats": cmd_reports,
    "search": cmd_reports,
    "replay": cmd_reports,
    "rebuild": cmd_rebuild,
    "backup": cmd_backup,
    "service": cmd_service,
    "dashboard": lambda config, args: _dashboard("cmd_dashboard", config, args),
    "report": lambda config, args: _dashboard("cmd_report", config, args),
    "statusline": lambda config, args: _dashboard("cmd_statusline", config, args),
    "sync": lambda config, args: _team("cmd_sync", config, args),
    "team": lambda config, args: _team("cmd_team", config, args),
}


def _team(name: str, config: Config, args: argparse.Namespace) -> int:
    """`sync` and `team` (cli/team.py), imported when run."""
    from jobvault.cli import team as cli_team

    handler: Any = getattr(cli_team, name)
    return int(handler(config, args))


def _dashboard(name: str, config: Config, args: argparse.Namespace) -> int:
    """`dashboard`, `report` and `statusline` (cli/dashboard.py), imported when run."""
    from jobvault.cli import dashboard as cli_dashboard

    handler: Any = getattr(cli_dashboard, name)
    return int(handler(config, args))


# Flags whose values often begin with a dash: Claude Code's project names (-home-me-app)
# and descending orders (-cost_usd). argparse would read such a value as an option.
DASH_VALUES = frozenset({"--project", "--order"})


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """`--project -home-me-app` → `--project=-home-me-app` (a value, not an option)."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        following = items[i + 1] if i + 1 < len(items) else ""
        if item in DASH_VALUES and following.startswith("-") and not following.startswith("--"):
            out.append(f"{item}={following}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def parse_arguments(arguments: Sequence[str]) -> argparse.Namespace:
    """Parse a command line, building the parser of its command alone when that can be told
    from the words (a few milliseconds of every start). An error found that way, or a line
    whose command cannot be told (help, --version, a typo), goes to the whole parser."""
    only = command_of(arguments, COMMANDS)
    if only is not None:
        try:
            return build_parser(only).parse_args(arguments)
        except _Reparse:
            pass
    return build_parser().parse_args(arguments)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    arguments = _join_dash_values(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(arguments)
    try:
        config = _load_config(args)
        if config.pricing or "jobvault.pricing" in sys.modules:
            from jobvault import pricing

            pricing.configure(config.pricing)  # the user's prices (import, rebuild, tables)
        return HANDLERS[args.command](config, args)
    except JobvaultError as exc:
        from jobvault.serve.protocol import RpcError

        if isinstance(exc, RpcError):
            code = ExitCode.NOT_FOUND if exc.kind == "not_found" else ExitCode.FAILURE
            if exc.kind in ("invalid_params", "sql_refused", "method_not_found",
                            "result_too_large"):  # fmt: skip
                code = ExitCode.USAGE
            print(f"jobvault: error: {exc} ({exc.kind})", file=sys.stderr)
            return int(code)
        print(f"jobvault: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except KeyboardInterrupt:
        return 130
