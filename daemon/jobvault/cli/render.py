"""Human output that needs rich: job details, search results and progress bars.

The tables (`jobs`, `stats`, `status`) are plain text fitted to the terminal in `tables.py`,
so those commands never import rich.
"""

from __future__ import annotations

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

from jobvault.cli import tables

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


def _one_line(text: str | None, width: int) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


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
        ("duration", tables.duration(job["duration_ms"])),
        (
            "tokens",
            f"in {job['input_tokens']:,}  out {job['output_tokens']:,}  "
            f"cache write {job['cache_creation_tokens']:,}  "
            f"cache read {job['cache_read_tokens']:,}",
        ),
        ("cost", _job_cost(job)),
        (
            "messages",
            f"{job['message_count']:,} ({tables.plural(job['user_message_count'], 'prompt')})",
        ),
        (
            "tool calls",
            f"{job['tool_call_count']:,} ({job['failed_tool_calls']:,} failed), "
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
                        str(s["tool_call_count"]), tables.tokens(tables.total(s)),
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


def _job_cost(job: dict[str, Any]) -> str:
    text = f"${job['cost_usd']:.4f} (prices {job['pricing_version']})"
    missing = job.get("unpriced_models") or []
    if missing:
        known = "unknown" if not job["cost_usd"] else f"${job['cost_usd']:.4f} + unknown"
        text = f"{known}: no price for {', '.join(missing)} (prices {job['pricing_version']})"
    return text


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
            f"{tables.cost(job['cost_usd'], bool(job.get('unpriced_models')))}  "
            f"[dim]{job['status']}[/dim]"
        )
        text = hit["snippet"] or job["prompt"] or ""
        flat = escape(" ".join(text.split()))
        console.print("   " + flat.replace("«", "[bold yellow]").replace("»", "[/bold yellow]"))
        for path in hit.get("matched_files", []):
            console.print(f"   [dim]file[/dim] {escape(path)}")
    if result["next_offset"] is not None:
        console.print(f"[dim]more results: --limit larger than {result['next_offset']}[/dim]")
