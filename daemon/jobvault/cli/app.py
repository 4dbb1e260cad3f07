"""The `jobvault` command line: argument parsing and output only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

import jobvault
from jobvault import config as config_mod
from jobvault import pricing
from jobvault.cli import dashboard as cli_dashboard
from jobvault.cli import render
from jobvault.cli import reports as cli_reports
from jobvault.cli import team as cli_team
from jobvault.config import Config
from jobvault.errors import ExitCode, JobvaultError, NotFoundError, UsageError
from jobvault.ingest import memory
from jobvault.log import configure as configure_logging
from jobvault.serve.client import Client, DaemonUnavailable
from jobvault.serve.protocol import METHOD_NOT_FOUND, RpcError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """`--version`, without looking the version up unless asked (it is slow to find)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        parser.exit(message=f"jobvault {jobvault.__version__}\n")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="database path (env JOBVAULT_DB)")
    parser.add_argument("--config", type=Path, help="config file (env JOBVAULT_CONFIG)")
    parser.add_argument(
        "--log-level", choices=config_mod.LOG_LEVELS, help="log verbosity (default info)"
    )


def _socket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket", type=Path, help="the daemon's socket (env JOBVAULT_SOCKET; default: XDG)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jobvault",
        description="Archive AI coding-agent sessions losslessly and query them as job records.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
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
    p.add_argument("--json", action="store_true", help="print JSON records")
    p.add_argument("--limit", type=int, default=50, help="how many (0 for all; default 50)")
    p.add_argument("--since", help="started at or after (ISO date/time, or an age: 7d, 12h)")
    p.add_argument("--until", help="started before (ISO date/time, or an age)")

    _socket(p)

    p = sub.add_parser("show", help="show one job with its tool calls, subagents and files")
    _common(p)
    _socket(p)
    p.add_argument("id", help="job id, session id, or a unique prefix of either")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("export", help="restore a job's original transcript byte for byte")
    _common(p)
    p.add_argument("id", help="job id, session id, or a unique prefix of either")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", type=Path, metavar="FILE",
                     help="write the main file here (default: standard output)")  # fmt: skip
    out.add_argument("--dir", type=Path, metavar="DIR",
                     help="restore every file of the job (subagents too) under DIR")  # fmt: skip

    p = sub.add_parser("status", help="the daemon's state (or the database's, if it is stopped)")
    _common(p)
    _socket(p)
    p.add_argument("--json", action="store_true", help="print JSON")

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
    p.add_argument("--log-level", choices=config_mod.LOG_LEVELS, help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)

    cli_reports.add_parsers(sub, _common, _socket)
    cli_dashboard.add_parsers(sub, _common, _socket)

    p = sub.add_parser("rebuild", help="recompute every job record from the archive alone")
    _common(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

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
    return config_mod.load(getattr(args, "config", None), overrides)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    import asyncio
    import signal

    # A stop asked for while the daemon is still starting is kept, not fatal: until the
    # event loop takes SIGTERM over, the handler only notes it (the daemon stops cleanly
    # as soon as it can).
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: early.append(signum))

    from jobvault.service import daemon as service

    memory.limit_fragmentation()
    # SIGHUP re-reads the file and the environment; flags given here still win. The daemon
    # takes the writer lock itself (and again after putting a deleted database back).
    asyncio.run(service.main(config, lambda: _load_config(args), early_stop=early))
    return ExitCode.OK


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    from jobvault.ingest.engine import Engine, file_size
    from jobvault.store.db import open_writer
    from jobvault.store.lock import WriterLock
    from jobvault.store.writer import Store

    roots = [p.expanduser().absolute() for p in args.paths]
    for root in roots:
        if not root.exists():
            raise NotFoundError(f"no such file or directory: {root}")
    with WriterLock(config.db):
        memory.limit_fragmentation()
        store = Store(open_writer(config.db, config.synchronous), config.compression_level)
        store.bulk()
        engine = Engine(config, store, job_write_interval=math.inf)
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
        _print_json(summary)
    else:
        render.import_summary(summary)
    return ExitCode.OK


def _daemon(config: Config, args: argparse.Namespace) -> Client | None:
    """A client of the running daemon, or None when it is not running (read the DB instead).

    `--db` without `--socket` asks for that database: read it directly, whatever runs.
    """
    if getattr(args, "db", None) and not getattr(args, "socket", None):
        return None
    try:
        return Client(config.socket)
    except DaemonUnavailable:
        if getattr(args, "socket", None):  # asked for explicitly: say so
            raise
        return None


def _offline(config: Config, method: str, params: Any) -> Any:
    """Answer a socket method from the database directly (the daemon is not running)."""
    from jobvault.serve.methods import Limits, read_methods, run_read
    from jobvault.store import queries
    from jobvault.store.db import open_reader

    if method == "subscribe":
        raise DaemonUnavailable("subscribe needs the running daemon (start `jobvault run`)")
    conn = open_reader(config.db)
    try:
        if method == "status":
            return {"daemon": "not running", **queries.db_status(conn, str(config.db))}
        handler = read_methods(Limits()).get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, "method_not_found", f"no method {method!r}")
        return run_read(handler, conn, params, Limits().request_timeout)
    finally:
        conn.close()


def _call(config: Config, args: argparse.Namespace, method: str, params: Any) -> Any:
    team = cli_team.caller(config, args)  # `--team`: the team database answers instead
    if team is not None:
        return team.call(method, params)
    client = _daemon(config, args)
    if client is None:
        return _offline(config, method, params)
    with client:
        return client.call(method, params)


def cmd_jobs(config: Config, args: argparse.Namespace) -> int:
    from jobvault.store import queries

    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or a positive number")
    params: dict[str, Any] = {}
    if args.since:
        params["since"] = queries.parse_time(args.since)
    if args.until:
        params["until"] = queries.parse_time(args.until)
    if args.machine:
        params["machine"] = args.machine
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        want = 1000 if args.limit == 0 else min(1000, args.limit - len(jobs))
        page = _call(config, args, "jobs.list", {**params, "limit": want, "cursor": cursor})
        jobs.extend(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None or (args.limit and len(jobs) >= args.limit):
            break
    if args.json:
        _print_json(jobs)
    else:
        render.jobs_table(jobs)
    return ExitCode.OK


def cmd_show(config: Config, args: argparse.Namespace) -> int:
    job = _call(config, args, "jobs.get", {"id": args.id})
    if args.json:
        _print_json(job)
    else:
        render.job_detail(job)
    return ExitCode.OK


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    status = _call(config, args, "status", {})
    if args.json:
        _print_json(status)
    else:
        render.status(status)
    return ExitCode.OK


def cmd_query(config: Config, args: argparse.Namespace) -> int:
    try:
        params = orjson.loads(args.params)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"PARAMS must be JSON: {exc}") from None
    if not isinstance(params, dict | list):
        raise UsageError("PARAMS must be a JSON object or array")
    if args.method == "subscribe":
        client = _daemon(config, args)
        if client is None:
            raise DaemonUnavailable("subscribe needs the running daemon (start `jobvault run`)")
        with client:
            _print_json(client.call("subscribe", params))
            for message in client.notifications():
                sys.stdout.write(orjson.dumps(message).decode() + "\n")
                sys.stdout.flush()
        return ExitCode.OK
    _print_json(_call(config, args, args.method, params))
    return ExitCode.OK


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    from jobvault.store import queries
    from jobvault.store.db import open_reader

    conn = open_reader(config.db)
    try:
        job_id, files = queries.job_files(conn, args.id)
        if not files:
            raise NotFoundError(f"job {job_id} has no archived files")
        if args.dir is not None:
            for row, rel in _layout(files):
                target = args.dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as fh:
                    for data in queries.archived_bytes(conn, row.id):
                        fh.write(data)
                print(target)
            return ExitCode.OK
        main = next((f for f in files if f.role == "main"), None)
        if main is None:
            raise NotFoundError(f"job {job_id} has no main file archived (try --dir)")
        if args.output is not None:
            with args.output.open("wb") as fh:
                for data in queries.archived_bytes(conn, main.id):
                    fh.write(data)
        else:
            out = sys.stdout.buffer
            for data in queries.archived_bytes(conn, main.id):
                out.write(data)
            out.flush()
    finally:
        conn.close()
    return ExitCode.OK


def _layout(files: Sequence[Any]) -> list[tuple[Any, Path]]:
    """Relative paths that reproduce the original layout under the agent's projects dir."""
    from jobvault.store.queries import restored_name

    main = next((f for f in files if f.role == "main"), None)
    base = Path(main.path).parent.parent if main is not None else None
    out = []
    for row in files:
        path = Path(restored_name(row, row.path))
        if base is not None and path.is_relative_to(base):
            out.append((row, path.relative_to(base)))
        else:
            out.append((row, Path(restored_name(row, row.rel_path))))
    return out


def cmd_reports(config: Config, args: argparse.Namespace) -> int:
    """`stats`, `search` and `replay` (cli_reports.py), with this module's daemon client."""
    handler = {"stats": cli_reports.cmd_stats, "search": cli_reports.cmd_search,
               "replay": cli_reports.cmd_replay}[args.command]  # fmt: skip
    return handler(args, lambda method, params: _call(config, args, method, params), config.db)


def cmd_rebuild(config: Config, args: argparse.Namespace) -> int:
    from jobvault.ingest.engine import Engine
    from jobvault.store.db import open_writer
    from jobvault.store.lock import WriterLock
    from jobvault.store.writer import Store

    if not config.db.expanduser().exists():
        raise NotFoundError(f"no database at {config.db}")
    with WriterLock(config.db):
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
        _print_json({"jobs": count})
    else:
        print(f"rebuilt {count} job records from the archive")
    return ExitCode.OK


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    from jobvault.store.backup import backup

    summary = backup(config.db, args.path, force=args.force)
    if args.json:
        _print_json(summary)
    else:
        print(
            f"backed up {summary['jobs']} jobs and {summary['bytes_archived']:,} archived bytes "
            f"to {summary['backup']} ({summary['bytes']:,} bytes)"
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _load_config(args)
        pricing.configure(config.pricing)  # the user's prices, for import and rebuild
        configure_logging(config.log_level if args.command == "run" else
                          (args.log_level or "warning"))  # fmt: skip
        if args.command == "run":
            return cmd_run(config, args)
        handler = {
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
            "dashboard": cli_dashboard.cmd_dashboard,
            "report": cli_dashboard.cmd_report,
            "statusline": cli_dashboard.cmd_statusline,
            "sync": cli_team.cmd_sync,
            "team": cli_team.cmd_team,
        }[args.command]
        try:
            return handler(config, args)
        finally:
            cli_team.close(args)
    except RpcError as exc:
        code = ExitCode.NOT_FOUND if exc.kind == "not_found" else ExitCode.FAILURE
        if exc.kind in ("invalid_params", "sql_refused", "method_not_found"):
            code = ExitCode.USAGE
        print(f"jobvault: error: {exc} ({exc.kind})", file=sys.stderr)
        return int(code)
    except JobvaultError as exc:
        print(f"jobvault: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except KeyboardInterrupt:
        return 130
