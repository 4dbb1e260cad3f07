"""The `stats`, `search` and `replay` commands: arguments in, one socket method out, rendered.

`stats` and `search` call the socket methods (`stats.usage`, `stats.tools`, `stats.blocks`,
`search`) through the CLI's client, which falls back to the database when the daemon is not
running; `replay` reads the archive read-only beside the daemon, as `export` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from jobvault.errors import ExitCode, UsageError

TYPE_CHECKING = False  # typing stays out of the read commands' start (docs/architecture.md)
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Call: TypeAlias = Callable[[str, Any], Any]

STATS_REPORTS = ("daily", "weekly", "monthly", "models", "projects", "sources", "machines", "tools",
                 "blocks")  # fmt: skip
_GROUP_BY = {
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "models": "model",
    "projects": "project",
    "sources": "source",
    "machines": "machine",
}


Adder = Callable[[argparse.ArgumentParser], None]


def add_parsers(sub: Any, common: Adder, socket: Adder, formats: Adder, filters: Adder) -> None:
    """Add the three commands to the CLI's subparsers."""
    p = sub.add_parser("stats", help="usage and cost by period, model, project, tool; blocks")
    common(p)
    socket(p)
    p.add_argument("report", nargs="?", default="daily", choices=STATS_REPORTS)
    formats(p)
    p.add_argument(
        "--timezone",
        "-z",
        metavar="TZ",
        help="IANA zone for days, weeks and months (default: this machine's)",
    )
    p.add_argument("--since", help="usage at or after (ISO date/time in --timezone, or an age)")
    p.add_argument("--until", help="usage before (ISO date/time in --timezone, or an age)")
    for name in ("source", "model", "project"):
        p.add_argument(f"--{name}", help=f"only this {name}")
    p.add_argument(
        "--top",
        type=int,
        default=5,
        metavar="N",
        help="list the N most expensive sessions (period reports; default 5)",
    )
    p.add_argument("--hours", type=int, default=5, help="billing block length (default 5)")
    p.add_argument("--active", action="store_true", help="blocks: only the active block")

    p = sub.add_parser("search", help="full-text search over prompts, summaries and messages")
    common(p)
    socket(p)
    p.add_argument(
        "query",
        nargs="?",
        default="",
        help='words, "a phrase", prefix*, a OR b, NOT c (empty: filters only)',
    )
    p.add_argument("--json", action="store_true", help="print the JSON result")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20, at most 200)")
    filters(p)

    p = sub.add_parser("replay", help="show a session's transcript from the archive")
    common(p)
    p.add_argument("id", help="job id, session id, or a unique prefix of either")
    p.add_argument("--json", action="store_true", help="print the normalized events")
    p.add_argument("--no-pager", action="store_true", help="never page the output")


def cmd_stats(args: argparse.Namespace, call: Call, db: Path) -> int:
    from jobvault.paths import local_zone_name

    timezone = args.timezone or local_zone_name()
    params: dict[str, Any] = {"timezone": timezone}
    for key in ("since", "until"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    names = ("source", "model", "project", "machine")
    filters = {k: getattr(args, k) for k in names if getattr(args, k, None)}
    if args.report == "blocks":
        if args.model or args.project or getattr(args, "machine", None):
            raise UsageError("stats blocks takes --source, not --model, --project or --machine")
        params.update(hours=args.hours, active=args.active, source=args.source or "claude")
        result = call("stats.blocks", params)
    elif args.report == "tools":
        result = call("stats.tools", {**params, **filters})
    else:
        group_by = _GROUP_BY[args.report]
        top = max(0, args.top) if group_by in ("day", "week", "month") else 0
        result = call("stats.usage", {**params, **filters, "group_by": group_by, "top": top})
    if args.json:
        from jobvault.cli.output import print_json

        print_json(result)
    elif args.csv:
        from jobvault.cli.output import print_csv

        print_csv(result["blocks"] if args.report == "blocks" else result["rows"])
    else:
        from jobvault.cli import tables

        if args.report == "blocks":
            tables.blocks_table(result, timezone, active_only=args.active)
        elif args.report == "tools":
            tables.tools_table(result)
        else:
            tables.usage_table(result)
    return ExitCode.OK


def cmd_search(args: argparse.Namespace, call: Call, db: Path) -> int:
    from jobvault.cli.app import job_filter_params

    params: dict[str, Any] = {"query": args.query, "limit": args.limit}
    params.update(job_filter_params(args))
    if not args.query.strip() and len(params) == 2:
        raise UsageError("give a QUERY, or a filter such as --file or --tool")
    result = call("search", params)
    if args.json:
        from jobvault.cli.output import print_json

        print_json(result)
    else:
        from jobvault.cli import render

        render.search_results(result)
    return ExitCode.OK


def cmd_replay(args: argparse.Namespace, call: Call, db: Path) -> int:
    from jobvault.cli import replay_view
    from jobvault.store import queries, replay
    from jobvault.store.db import open_reader

    conn = open_reader(db)
    try:
        result = replay.events(conn, args.id)
        job = queries.get_job(conn, result["job_id"])
    finally:
        conn.close()
    if args.json:
        from jobvault.cli.output import print_json

        print_json(result)
        return ExitCode.OK
    from jobvault.cli import render

    console = render.console
    if not args.no_pager and sys.stdout.isatty() and len(result["events"]) > console.height:
        with console.pager(styles=True):
            replay_view.render(result, console, job=job)
    else:
        replay_view.render(result, console, job=job)
    return ExitCode.OK
