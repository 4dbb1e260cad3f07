"""`jobvault dashboard` (open the live dashboard the daemon serves) and `jobvault report --html`
(write the same pages to a folder, no daemon needed)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobvault.errors import ExitCode

FILTER_FLAGS = ("source", "model", "status", "project", "cwd", "tool")


def add_parsers(
    sub: Any,
    common: Callable[[argparse.ArgumentParser], None],
    socket: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add `dashboard`, `report` and `statusline` to the CLI's subparsers."""
    p = sub.add_parser("dashboard", help="open the web dashboard (served by the daemon)")
    common(p)
    socket(p)
    p.add_argument(
        "--print-url",
        action="store_true",
        help="print the URL (with this install's secret) instead of opening it",
    )

    p = sub.add_parser("report", help="write the dashboard as a static site (no daemon needed)")
    common(p)
    p.add_argument(
        "--html",
        type=Path,
        required=True,
        metavar="DIR",
        help="the folder to write (index.html, jobs.html, jobs/, assets/)",
    )
    p.add_argument("--since", help="usage and jobs from (ISO date/time in --timezone, or 7d)")
    p.add_argument("--until", help="usage and jobs before (ISO date/time, or an age)")
    for name in FILTER_FLAGS:
        p.add_argument(f"--{name}", help=f"only jobs with this {name}")
    p.add_argument(
        "--file",
        metavar="PATH",
        help="modified this file: an exact path, a prefix ending in /, or a glob",
    )
    p.add_argument("--min-cost", type=float, metavar="USD", help="estimated cost at least")
    p.add_argument("--max-cost", type=float, metavar="USD", help="estimated cost at most")
    p.add_argument(
        "--timezone",
        "-z",
        metavar="TZ",
        help="IANA zone for days and times (default: this machine's)",
    )
    p.add_argument(
        "--with-transcripts",
        action="store_true",
        help="also copy each job's original transcript beside its page",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")

    p = sub.add_parser(
        "statusline", help="one line for Claude Code's statusLine (JSON on standard input)"
    )
    p.add_argument("--socket", type=Path, help="the daemon's socket")
    p.add_argument("--config", type=Path, help="config file")


def cmd_dashboard(config: Any, args: argparse.Namespace) -> int:
    from jobvault.serve.client import Client, DaemonUnavailable
    from jobvault.serve.protocol import RpcError

    try:
        with Client(config.socket, timeout=10.0) as client:
            answer = client.call("dashboard.url")
    except DaemonUnavailable as exc:
        raise DaemonUnavailable(
            f"the dashboard is served by the daemon, which is not running ({exc}); start it "
            "with `jobvault run` or `jobvault service install`"
        ) from None
    except RpcError as exc:
        if exc.kind in ("unavailable", "method_not_found"):
            raise DaemonUnavailable(str(exc)) from None
        raise
    url = answer["url"]
    if args.print_url:
        print(url)
        return ExitCode.OK
    import webbrowser

    if webbrowser.open(url):
        print(f"opened the dashboard in your browser: http://127.0.0.1:{answer['port']}/")
    else:
        print(f"open this address in your browser (it holds this install's secret):\n{url}")
    return ExitCode.OK


def cmd_report(config: Any, args: argparse.Namespace) -> int:
    import jobvault
    from jobvault.cli import render
    from jobvault.paths import local_zone_name
    from jobvault.serve.web import report, views
    from jobvault.store import stats
    from jobvault.store.db import open_reader

    directory = args.html.expanduser()
    report.check_target(directory, args.force)
    timezone = args.timezone or local_zone_name()
    filters = {k: getattr(args, k) for k in FILTER_FLAGS if getattr(args, k)}
    if args.file:
        filters["file"] = args.file
    for key in ("min_cost", "max_cost"):
        if getattr(args, key) is not None:
            filters[key] = str(getattr(args, key))
    period = {
        "since": args.since or "",
        "until": args.until or "",
        "tz": timezone,
        "period": "custom" if args.since or args.until else "all",
    }
    from datetime import UTC, datetime

    today = datetime.now(UTC).astimezone(stats.zone(timezone)).date()
    overview = views.OverviewQuery.parse({**period, **filters}, timezone, today)
    tz = stats.zone(timezone)
    window = {
        k: stats.parse_local_time(getattr(args, k), tz)
        for k in ("since", "until")
        if getattr(args, k)
    }
    jobs = views.JobsQuery(filters={**filters, **window})
    conn = open_reader(config.db)
    try:
        total = len(report.all_jobs(conn, jobs))
        with render.Progress("writing", total, enabled=not args.no_progress) as progress:
            written = report.write(
                conn,
                directory,
                overview,
                jobs,
                version=jobvault.__version__,
                transcripts=args.with_transcripts,
                progress=progress.advance,
            )
    finally:
        conn.close()
    summary = {
        "directory": str(written.directory),
        "index": str(written.directory / "index.html"),
        "jobs": written.jobs,
        "pages": written.pages,
        "bytes": written.bytes,
        "transcripts": written.transcripts,
    }
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(
            f"wrote {written.pages} pages ({written.jobs} jobs, {written.bytes:,} bytes) to "
            f"{written.directory}; open {summary['index']}"
        )
    return ExitCode.OK


def cmd_statusline(config: Any, args: argparse.Namespace) -> int:
    """Reached only through `jobvault.cli.app.main` (the fast path skips the parser)."""
    from jobvault.cli.statusline import main

    argv = []
    if args.socket:
        argv += ["--socket", str(args.socket)]
    if args.config:
        argv += ["--config", str(args.config)]
    return main(argv)
