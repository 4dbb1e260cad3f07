"""Human output for the CLI: tables, job details and progress bars (rich), never JSON."""

from __future__ import annotations

import shutil
import sys
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, description: str, total: int, *, enabled: bool = True) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._bytes = total > 0
        self._progress: RichProgress | None = None
        self._task: Any = None
        self._description = description
        self._total = total

    def __enter__(self) -> Progress:
        if self._enabled:
            amount = DownloadColumn() if self._bytes else MofNCompleteColumn()
            self._progress = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                amount,
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=self._total or None)
        return self

    def advance(self, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, amount)

    def set(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def label(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


def _tokens(n: int | None) -> str:
    if not n:
        return "0"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _one_line(text: str | None, width: int) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _total_tokens(job: dict[str, Any]) -> int:
    return int(
        job["input_tokens"]
        + job["output_tokens"]
        + job["cache_creation_tokens"]
        + job["cache_read_tokens"]
    )


def jobs_table(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        console.print("no jobs yet: run `jobvault import PATH` or `jobvault run`")
        return
    headers = ("session", "started (UTC)", "time", "model", "status", "tokens", "cost",
               "tools", "prompt")  # fmt: skip
    right = {2, 5, 6, 7}
    rows = []
    for job in jobs:
        tools = str(job["tool_call_count"])
        if job["failed_tool_calls"]:
            tools += f" ({job['failed_tool_calls']}✗)"
        rows.append(
            [
                job["session_id"][:8],
                (job["started_at"] or "")[:16].replace("T", " "),
                _duration(job["duration_ms"]),
                (job["model"] or "-").removeprefix("claude-"),
                job["status"],
                _tokens(_total_tokens(job)),
                f"${job['cost_usd']:.2f}",
                tools,
                " ".join((job["prompt"] or "").split()),
            ]
        )
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers) - 1)]
    room = max(20, shutil.get_terminal_size((120, 24)).columns - sum(widths) - 2 * len(widths))
    for row in [list(headers), *rows]:
        cells = [
            row[i].rjust(widths[i]) if i in right else row[i].ljust(widths[i])
            for i in range(len(widths))
        ]
        cells.append(_one_line(row[-1], room))
        console.print("  ".join(cells).rstrip(), markup=False, soft_wrap=True)


def job_detail(job: dict[str, Any]) -> None:
    rows = [
        ("id", job["id"]),
        ("status", job["status"]),
        ("project", job["project"]),
        ("cwd", job["cwd"]),
        ("branch", job["git_branch"]),
        ("version", job["version"]),
        ("models", ", ".join(job["models"]) or "-"),
        ("started", job["started_at"]),
        ("ended", job["ended_at"]),
        ("duration", _duration(job["duration_ms"])),
        (
            "tokens",
            f"in {job['input_tokens']:,}  out {job['output_tokens']:,}  "
            f"cache write {job['cache_creation_tokens']:,}  "
            f"cache read {job['cache_read_tokens']:,}",
        ),
        ("cost", f"${job['cost_usd']:.4f} (prices {job['pricing_version']})"),
        ("messages", f"{job['message_count']} ({job['user_message_count']} prompts)"),
        (
            "tool calls",
            f"{job['tool_call_count']} ({job['failed_tool_calls']} failed), "
            f"mostly {job['primary_tool'] or '-'}",
        ),
        (
            "context",
            f"{job['context_used_pct']}% of {job['context_window']:,}"
            if job["context_window"]
            else "-",
        ),
        ("file", job["source_path"]),
        ("prompt", _one_line(job["prompt"], 200)),
        ("summary", _one_line(job["summary"], 200)),
    ]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, "-" if value in (None, "") else str(value))
    console.print(table)
    if job["subagents"]:
        sub = Table(title="subagents", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("agent", "type", "messages", "tools", "tokens", "cost"):
            sub.add_column(name)
        for s in job["subagents"]:
            sub.add_row(s["agent_id"][:17], s["agent_type"] or "-", str(s["message_count"]),
                        str(s["tool_call_count"]), _tokens(_total_tokens(s)),
                        f"${s['cost_usd']:.4f}")  # fmt: skip
        console.print(sub)
    if job["tool_calls"]:
        calls = Table(title="tool calls", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("#", "time", "tool", "ok", "input"):
            calls.add_column(name, no_wrap=name != "input")
        for t in job["tool_calls"]:
            ok = "✗" if t["is_error"] else "✓"
            when = (t["timestamp"] or "")[11:19]
            calls.add_row(str(t["seq"]), when, t["name"], ok, _one_line(t["input_preview"], 80))
        console.print(calls)
    if job["files"]:
        console.print("[bold]files modified[/bold]")
        for f in job["files"]:
            console.print(f"  {f['path']}  ({f['tool']} ×{f['count']})")


def import_summary(summary: dict[str, Any]) -> None:
    console.print(
        f"imported {summary['files']} files: {summary['bytes_archived']:,} bytes, "
        f"{summary['lines']:,} lines ({summary['bad_lines']} bad), {summary['jobs']} jobs "
        f"→ {summary['db']}"
    )


def status(info: dict[str, Any]) -> None:
    running = info.get("daemon") != "not running"
    if running:
        uptime = _duration(int(info["uptime_seconds"] * 1000))
        lines = [("daemon", f"running (pid {info['pid']}, up {uptime})")]
    else:
        lines = [("daemon", "not running")]
    lines += [
        ("database", f"{info['db_path']} ({info['db_size_bytes'] / 1e6:.1f} MB)"),
        (
            "archived",
            f"{info['bytes_archived']:,} bytes, {info['lines_archived']:,} lines "
            f"in {info['files_known']:,} files",
        ),
        ("bad lines", f"{info['bad_lines']:,}"),
        ("lost bytes", f"{info['lost_bytes']:,}"),
        ("jobs", f"{info['jobs']:,} ({info['sessions_active']:,} active)"),
    ]
    if running:
        lines += [
            ("watching", ", ".join(info["watch_existing"]) or "nothing yet"),
            ("socket", info["socket"]),
            (
                "ingest lag",
                f"{info.get('ingest_lag_seconds', 0):.1f} s "
                f"({info.get('pending_bytes', 0):,} bytes waiting)",
            ),
            ("last error", info.get("last_error") or "none"),
        ]
        sync = info.get("sync") or {}
        if sync.get("state", "off") != "off":
            pending = sync.get("rows_pending")
            lines.append((
                "team sync",
                f"{sync['state']} → {sync['url']}; "
                f"{'?' if pending is None else f'{pending:,}'} job changes pending; "
                f"last push {sync.get('last_push_at') or 'never'}"
                + (f"; retry in {sync['retry_in_seconds']:.0f} s" if sync.get("retry_in_seconds")
                   else ""),
            ))  # fmt: skip
            if sync.get("last_error"):
                lines.append(("sync error", f"{sync['last_error']} ({sync['last_error_at']})"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        console.print(f"{key.ljust(width)}  {value}", markup=False, highlight=False)


# -- reports ------------------------------------------------------------------------------------

_EIGHTHS = " ▏▎▍▌▋▊▉█"
_TOKEN_KINDS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")


def bar(value: float, largest: float, width: int = 24) -> str:
    """A horizontal bar of `value` against `largest`, in eighths of a character."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(8 * width * value / largest))
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _cost(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.4f}"


def usage_table(result: dict[str, Any]) -> None:
    group = result["group_by"]
    rows = result["rows"]
    if not rows:
        console.print("no usage in this range")
        return
    period = group in ("day", "week", "month")
    title = f"usage by {group}" + (f" ({result['timezone']})" if period else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column(group, no_wrap=True, overflow="ellipsis", max_width=40, min_width=7)
    if not period:
        table.add_column("jobs", justify="right", no_wrap=True)
    # On a narrow terminal keep the totals and the chart; the token kinds need ~110 columns.
    detailed = console.width >= 110
    names = ("input", "output", "cache write", "cache read") if detailed else ()
    for name in (*names, "tokens", "cost"):
        table.add_column(name, justify="right", no_wrap=True)
    show_models = period and console.width >= 150  # the bar chart matters more than names
    if show_models:
        table.add_column("models", no_wrap=True, overflow="ellipsis", max_width=40)
    if period:
        table.add_column("", no_wrap=True)  # the bar chart of cost
    largest = max(r["cost_usd"] for r in rows)
    for r in rows:
        cells = [str(r.get("period") or r.get(group) or "-")]
        if group == "machine" and r.get("name"):  # the team's machines: name and short id
            cells = [f"{r['name']} ({str(r['machine'])[:8]})"]
        if not period:
            cells.append(str(r["jobs"]))
        if detailed:
            cells += [_tokens(r[k]) for k in _TOKEN_KINDS]
        cells += [_tokens(r["total_tokens"]), _cost(r["cost_usd"])]
        if show_models:
            cells.append(", ".join(m["model"].removeprefix("claude-") for m in r["models"]))
        if period:
            cells.append(f"[green]{bar(r['cost_usd'], largest, 16)}[/green]")
        table.add_row(*cells)
    t = result["totals"]
    footer = ["total"] + ([""] if not period else [])
    if detailed:
        footer += [_tokens(t[k]) for k in _TOKEN_KINDS]
    footer += [_tokens(t["total_tokens"]), _cost(t["cost_usd"])]
    table.add_section()
    table.add_row(*footer, *([""] * (int(show_models) + int(period))), style="bold")
    console.print(table)
    if period and len(rows) > 1:
        first, last = rows[0]["cost_usd"], rows[-1]["cost_usd"]
        console.print(
            f"average {_cost(t.get('average_cost_per_period', 0))} per {group}; "
            f"last {group} {_cost(last)} vs first {_cost(first)}"
        )
    if result.get("top_sessions"):
        top = Table(title="most expensive sessions", box=box.SIMPLE_HEAD, title_justify="left")
        top.add_column("session", no_wrap=True, min_width=8)
        top.add_column("started", no_wrap=True, min_width=16)
        top.add_column("model", no_wrap=True, overflow="ellipsis", max_width=20)
        top.add_column("cost", justify="right", no_wrap=True, min_width=7)
        top.add_column("prompt", no_wrap=True, overflow="ellipsis", ratio=1)
        for s in result["top_sessions"]:
            top.add_row(s["session_id"][:8], (s["started_at"] or "")[:16].replace("T", " "),
                        (s["model"] or "-").removeprefix("claude-"), _cost(s["cost_usd"]),
                        _one_line(s["prompt"], 60))  # fmt: skip
        console.print(top)


def tools_table(result: dict[str, Any]) -> None:
    if not result["rows"]:
        console.print("no tool calls in this range")
        return
    table = Table(title="tools", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("tool", "calls", "failures", "failure rate", "jobs", ""):
        table.add_column(name, justify="left" if name in ("tool", "") else "right")
    largest = max(r["calls"] for r in result["rows"])
    for r in result["rows"]:
        rate = f"{100 * r['failure_rate']:.1f}%"
        style = "red" if r["failure_rate"] >= 0.2 and r["calls"] >= 5 else ""
        table.add_row(r["tool"], f"{r['calls']:,}", f"{r['failures']:,}",
                      f"[{style}]{rate}[/{style}]" if style else rate, f"{r['jobs']:,}",
                      bar(r["calls"], largest, 16))  # fmt: skip
    t = result["totals"]
    table.add_section()
    table.add_row("total", f"{t['calls']:,}", f"{t['failures']:,}",
                  f"{100 * t['failure_rate']:.1f}%", "", "", style="bold")  # fmt: skip
    console.print(table)


def _local(text: str | None, timezone: str) -> str:
    if not text:
        return "-"
    from datetime import datetime
    from zoneinfo import ZoneInfo

    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(ZoneInfo(timezone))
    return moment.strftime("%Y-%m-%d %H:%M")


def blocks_table(result: dict[str, Any], timezone: str, *, active_only: bool = False) -> None:
    blocks = result["blocks"]
    if not blocks:
        console.print("no active block" if active_only else "no usage in this range")
        return
    table = Table(title=f"{result['hours']}-hour billing blocks ({timezone})",
                  box=box.SIMPLE_HEAD, title_justify="left")  # fmt: skip
    for name in ("start", "status", "entries", "tokens", "cost", "models"):
        table.add_column(name, justify="right" if name in ("entries", "tokens", "cost") else "left")
    for b in blocks:
        if b["is_gap"]:
            table.add_row(f"[dim]{_local(b['start'], timezone)}[/dim]", "[dim]gap[/dim]",
                          "", "", "", "")  # fmt: skip
            continue
        status = "[bold green]ACTIVE[/bold green]" if b["is_active"] else "done"
        table.add_row(_local(b["start"], timezone), status, str(b["entries"]),
                      _tokens(b["total_tokens"]), _cost(b["cost_usd"]),
                      ", ".join(m.removeprefix("claude-") for m in b["models"]))  # fmt: skip
    console.print(table)
    for b in blocks:
        if b["is_active"] and b["burn_rate"]:
            rate, projection = b["burn_rate"], b["projection"]
            console.print(
                f"active block until {_local(b['end'], timezone)}: "
                f"{rate['tokens_per_minute']:,.0f} tokens/min, "
                f"{_cost(rate['cost_per_hour'])}/hour; projected "
                f"{_tokens(projection['total_tokens'])} tokens, "
                f"{_cost(projection['total_cost'])} "
                f"({projection['remaining_minutes']} min left)"
            )


def search_results(result: dict[str, Any]) -> None:
    from rich.markup import escape

    if not result["results"]:
        console.print("no matches")
        return
    for hit in result["results"]:
        job = hit["job"]
        when = (job["started_at"] or "")[:16].replace("T", " ")
        console.print(
            f"[bold]{job['session_id'][:8]}[/bold]  {when}  {escape(job['project'] or '-')}  "
            f"{_cost(job['cost_usd'])}  [dim]{job['status']}[/dim]"
        )
        text = hit["snippet"] or job["prompt"] or ""
        flat = escape(" ".join(text.split()))
        console.print("   " + flat.replace("«", "[bold yellow]").replace("»", "[/bold yellow]"))
        for path in hit.get("matched_files", []):
            console.print(f"   [dim]file[/dim] {escape(path)}")
    if result["next_offset"] is not None:
        console.print(f"[dim]more results: --limit larger than {result['next_offset']}[/dim]")
