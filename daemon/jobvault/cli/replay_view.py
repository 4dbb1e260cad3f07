"""Printing a replayed session for a person: tool results folded to a few lines, errors in red."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from jobvault.store.replay import input_summary


def _clip(text: str, lines: int, width: int = 2000) -> tuple[str, int]:
    """The first `lines` lines of `text` (at most `width` characters) and how many were cut."""
    all_lines = text.rstrip().splitlines()
    shown = "\n".join(all_lines[:lines])[:width]
    return shown, max(0, len(all_lines) - lines)


def render(result: dict[str, Any], console: Console, *, job: dict[str, Any] | None = None) -> None:
    """Print the events for a person: tool results folded to a few lines, errors in red."""
    if job is not None:
        console.print(
            f"[bold]{escape(job['id'])}[/bold]  {escape(job.get('started_at') or '')}  "
            f"{escape(job.get('model') or '-')}  ${job.get('cost_usd', 0):.4f}  {job['status']}"
        )
    for event in result["events"]:
        pad = "│ " * event["depth"]
        when = (event.get("timestamp") or "")[11:19]
        kind = event["kind"]
        if kind == "subagent":
            console.print(f"{pad}[magenta]┌ subagent {escape(event['agent_id'])}[/magenta] "
                          f"[dim]({event['events']} events)[/dim]")  # fmt: skip
            continue
        if kind == "tool_call":
            result_ = event.get("result")
            mark = "[dim]…[/dim]" if result_ is None else (
                "[red]✗[/red]" if result_["is_error"] else "[green]✓[/green]")  # fmt: skip
            console.print(f"{pad}[dim]{when}[/dim] {mark} [yellow]{escape(str(event['name']))}"
                          f"[/yellow] {escape(input_summary(event['input']))}")  # fmt: skip
            if result_ is not None and result_.get("output"):
                shown, cut = _clip(str(result_["output"]), 8 if result_["is_error"] else 3)
                style = "red" if result_["is_error"] else "dim"
                for line in shown.splitlines():
                    console.print(f"{pad}    [{style}]{escape(line)}[/{style}]", soft_wrap=True)
                if cut:
                    console.print(f"{pad}    [dim]… {cut} more lines[/dim]")
            continue
        label, style, lines = {
            "prompt": ("user", "bold cyan", 40), "text": ("assistant", "bold", 60),
            "thinking": ("thinking", "dim italic", 4), "error": ("error", "bold red", 20),
            "command": ("command", "cyan", 3),
            "interrupt": ("interrupted", "yellow", 2), "summary": ("summary", "green", 5),
            "tool_result": ("tool result", "dim", 3),
        }.get(kind, (kind, "", 10))  # fmt: skip
        text = event.get("text") or (event.get("result") or {}).get("output") or ""
        shown, cut = _clip(str(text), lines, 8000)
        console.print(f"{pad}[dim]{when}[/dim] [{style}]{label}[/{style}]")
        for line in shown.splitlines():
            console.print(f"{pad}  {escape(line)}", soft_wrap=True)
        if cut:
            console.print(f"{pad}  [dim]… {cut} more lines[/dim]")
