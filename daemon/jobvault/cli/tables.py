"""Human tables that fit the terminal (80 columns when it cannot be asked), without rich.

Each table lists its columns, then the ways it may shrink, in order: cut the prompt,
abbreviate a header or a cell (a model without its date, a time without its year), narrow
the bar chart, and only then drop a column, least useful first. Token columns are never
dropped. A cost that is not known (a model missing from the price table) shows `?`, or
`+?` after the known part.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

# -- fitting ------------------------------------------------------------------------------


@dataclass
class Column:
    """A column: its header and cells, in their widest form first and narrower after."""

    name: str
    forms: list[tuple[str, list[str]]]  # (header, cells), widest first
    align: Literal["<", ">"] = "<"
    flex: bool = False  # cut to the room left (with …), never below `floor`
    floor: int = 0
    form: int = 0
    dropped: bool = False
    cut: int | None = None  # the width a flexible column was cut to

    @property
    def header(self) -> str:
        return self.forms[self.form][0]

    @property
    def cells(self) -> list[str]:
        return self.forms[self.form][1]

    def natural(self) -> int:
        return max([len(self.header), *(len(c) for c in self.cells)])

    def width(self) -> int:
        natural = self.natural()
        return natural if self.cut is None else min(natural, self.cut)


Step = tuple[Literal["form", "drop", "cut"], str, int]


def width() -> int:
    """The terminal's width; $COLUMNS or 80 when output is not a terminal."""
    return shutil.get_terminal_size((80, 24)).columns


def fit(columns: list[Column], steps: Sequence[Step], room: int, gap: int = 2) -> list[Column]:
    """Apply `steps` in order until the columns fit in `room`; return the columns kept.

    ("form", name, n): use the column's n-th narrower form; ("cut", name, n): cut a flexible
    column to n characters; ("drop", name, 0): leave the column out. A flexible column
    always takes what room is left, down to its floor.
    """
    by_name = {c.name: c for c in columns}

    def total() -> int:
        kept = [c for c in columns if not c.dropped]
        return sum(c.width() for c in kept) + gap * (len(kept) - 1)

    def squeeze() -> None:
        for c in reversed(columns):  # the last flexible column (the prompt) gives first
            if c.flex and not c.dropped:
                c.cut = None
                excess = total() - room
                if excess > 0:
                    c.cut = max(c.floor, c.natural() - excess)

    squeeze()
    for kind, name, value in steps:
        if total() <= room:
            break
        column = by_name.get(name)
        if column is None or column.dropped:
            continue
        if kind == "form":
            column.form = min(value, len(column.forms) - 1)
        elif kind == "cut":
            column.floor = min(column.floor, value)
        else:
            column.dropped = True
        squeeze()
    return [c for c in columns if not c.dropped]


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: max(0, size - 1)] + "…"


def _styled() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _bold(text: str) -> str:
    return f"\x1b[1m{text}\x1b[0m" if _styled() else text


def render(
    columns: list[Column],
    steps: Sequence[Step],
    *,
    title: str | None = None,
    footer: dict[str, str] | None = None,
    room: int | None = None,
) -> list[str]:
    """The table's lines: title, header, rule, rows, and a rule and footer row if given."""
    if footer is not None:  # the footer's cells count for the widths, in every form
        for c in columns:
            c.forms = [(h, [*cells, footer.get(c.name, "")]) for h, cells in c.forms]
    kept = fit(columns, steps, room or width())
    widths = [c.width() for c in kept]

    def line(cells: list[str]) -> str:
        out = []
        for c, w, text in zip(kept, widths, cells, strict=True):
            text = _clip(text, w)
            out.append(text.rjust(w) if c.align == ">" else text.ljust(w))
        return "  ".join(out).rstrip()

    rows = len(kept[0].cells) - (1 if footer else 0) if kept else 0
    lines = [_bold(title)] if title else []
    lines.append(_bold(line([c.header for c in kept])))
    lines.append("─" * min(sum(widths) + 2 * (len(widths) - 1), room or width()))
    lines += [line([c.cells[i] for c in kept]) for i in range(rows)]
    if footer:
        lines.append("─" * min(sum(widths) + 2 * (len(widths) - 1), room or width()))
        lines.append(_bold(line([c.cells[rows] for c in kept])))
    return lines


def emit(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


# -- cells --------------------------------------------------------------------------------


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 prompt`, `2 prompts` (`many` for irregular plurals), thousands separated."""
    return f"{count:,} {noun if count == 1 else (many or noun + 's')}"


def tokens(n: int | None) -> str:
    if not n:
        return "0"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def cost(value: float, unpriced: bool = False) -> str:
    """Dollars; `?` when nothing of it is known, `…+?` when part of it is not."""
    if unpriced and not value:
        return "?"
    text = f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.4f}"
    return text + "+?" if unpriced else text


_DATE = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")


def model(name: str | None, short: bool = False) -> str:
    """A model's name without the vendor prefix (and, short, without its date)."""
    if not name:
        return "-"
    name = name.removeprefix("claude-")
    return _DATE.sub("", name) if short else name


def unpriced(name: str | None) -> bool:
    """Whether the price table does not know this model."""
    from jobvault import pricing

    return bool(name) and name != "<synthetic>" and pricing.lookup(name) is None


def one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def when(text: str | None, short: bool = False) -> str:
    moment = (text or "")[:16].replace("T", " ")
    return moment[5:] if short else moment


_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(value: float, largest: float, size: int = 24) -> str:
    """A horizontal bar of `value` against `largest`, in eighths of a character."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = max(1, round(8 * size * value / largest))
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


# -- the tables ---------------------------------------------------------------------------


def jobs_table(jobs: list[dict[str, Any]], room: int | None = None) -> None:
    if not jobs:
        emit(["no jobs yet: run `jobvault import PATH` or `jobvault run`"])
        return

    def tools(job: dict[str, Any]) -> str:
        text = str(job["tool_call_count"])
        return text + (f" ({job['failed_tool_calls']}✗)" if job["failed_tool_calls"] else "")

    columns = [
        Column("session", [("session", [j["session_id"][:8] for j in jobs])]),
        Column("started", [("started (UTC)", [when(j["started_at"]) for j in jobs]),
                           ("started", [when(j["started_at"], True) for j in jobs])]),
        Column("time", [("time", [duration(j["duration_ms"]) for j in jobs])], ">"),
        Column("model", [("model", [model(j["model"]) for j in jobs]),
                         ("model", [model(j["model"], True) for j in jobs])], flex=True,
               floor=30),
        Column("status", [("status", [j["status"] for j in jobs]),
                          ("status", [_STATUS.get(j["status"], j["status"]) for j in jobs])]),
        Column("tokens", [("tokens", [tokens(total(j)) for j in jobs])], ">"),
        Column("cost", [("cost", [cost(j["cost_usd"], bool(j.get("unpriced_models")))
                                  for j in jobs])], ">"),
        Column("tools", [("tools", [tools(j) for j in jobs])], ">"),
        Column("prompt", [("prompt", [one_line(j["prompt"]) for j in jobs])], flex=True,
               floor=24),
    ]  # fmt: skip
    steps: list[Step] = [
        ("form", "model", 1), ("form", "started", 1), ("cut", "prompt", 20),
        ("drop", "tools", 0), ("form", "status", 1), ("cut", "model", 10),
        ("cut", "prompt", 12), ("drop", "time", 0), ("drop", "status", 0),
        ("drop", "prompt", 0), ("drop", "started", 0), ("drop", "model", 0),
    ]  # fmt: skip
    emit(render(columns, steps, room=room))


_STATUS = {"completed": "done", "interrupted": "interr.", "active": "active", "error": "error"}


def total(row: dict[str, Any]) -> int:
    return int(row["input_tokens"] + row["output_tokens"] + row["cache_creation_tokens"]
               + row["cache_read_tokens"])  # fmt: skip


_KINDS = (
    ("input_tokens", "input", "in"),
    ("output_tokens", "output", "out"),
    ("cache_creation_tokens", "cache write", "c.write"),
    ("cache_read_tokens", "cache read", "c.read"),
)


def _row_unpriced(row: dict[str, Any], group: str) -> bool:
    if group == "model":
        return unpriced(row.get("model"))
    return any(unpriced(m["model"]) and total(m) for m in row.get("models", ()))


def usage_table(result: dict[str, Any], room: int | None = None) -> None:
    group = result["group_by"]
    rows = result["rows"]
    if not rows:
        emit(["no usage in this range"])
        return
    period = group in ("day", "week", "month")
    title = f"usage by {group}" + (f" ({result['timezone']})" if period else "")
    largest = max(r["cost_usd"] for r in rows)
    flags = [_row_unpriced(r, group) for r in rows]
    names = [
        # The team's machines: a name and a short id.
        f"{r['name']} ({str(r['machine'])[:8]})" if group == "machine" and r.get("name")
        else str(r.get("period") or r.get(group) or "-")
        for r in rows
    ]  # fmt: skip
    forms = [(group, names)]
    if group == "model":
        forms.append((group, [model(n, True) for n in names]))
    # A model's short name (no vendor, no date) reads better than a long one cut short.
    columns = [Column(group, forms, flex=True, floor=24 if group == "model" else 10)]
    footer = {group: "total"}
    if not period:
        columns.append(Column("jobs", [("jobs", [f"{r['jobs']:,}" for r in rows])], ">"))
    for key, header, short in _KINDS:
        cells = [tokens(r[key]) for r in rows]
        columns.append(Column(key, [(header, cells), (short, cells)], ">"))
        footer[key] = tokens(result["totals"][key])
    columns.append(Column("tokens", [("tokens", [tokens(r["total_tokens"]) for r in rows])],
                          ">"))  # fmt: skip
    footer["tokens"] = tokens(result["totals"]["total_tokens"])
    columns.append(
        Column(
            "cost",
            [("cost", [cost(r["cost_usd"], f) for r, f in zip(rows, flags, strict=True)])],
            ">",
        )
    )
    footer["cost"] = cost(result["totals"]["cost_usd"], any(flags))
    if period:
        names = [", ".join(model(m["model"], True) for m in r["models"]) for r in rows]
        columns.append(Column("models", [("models", names)]))
        columns.append(
            Column(
                "bar",
                [
                    ("", [bar(r["cost_usd"], largest, 16) for r in rows]),
                    ("", [bar(r["cost_usd"], largest, 8) for r in rows]),
                ],
            )
        )
    steps: list[Step] = [
        ("drop", "models", 0), ("form", "bar", 1), ("form", group, 1),
        ("form", "cache_creation_tokens", 1),
        ("form", "cache_read_tokens", 1), ("form", "input_tokens", 1),
        ("form", "output_tokens", 1), ("drop", "bar", 0), ("cut", group, 7),
        ("drop", "jobs", 0),
    ]  # fmt: skip
    lines = render(columns, steps, title=title, footer=footer, room=room)
    if period and len(rows) > 1:
        average = result["totals"].get("average_cost_per_period", 0)
        lines.append(
            f"average {cost(average)} per {group}; last {group} {cost(rows[-1]['cost_usd'])} "
            f"vs first {cost(rows[0]['cost_usd'])}"
        )
    if any(flags):
        lines.append("?: a model missing from the price table (tokens counted, cost unknown)")
    top = result.get("top_sessions") or []
    if top:
        lines.append("")
        top_columns = [
            Column("session", [("session", [s["session_id"][:8] for s in top])]),
            Column("started", [("started", [when(s["started_at"]) for s in top]),
                               ("started", [when(s["started_at"], True) for s in top])]),
            Column("model", [("model", [model(s["model"]) for s in top]),
                             ("model", [model(s["model"], True) for s in top])]),
            Column("cost", [("cost", [cost(s["cost_usd"], unpriced(s["model"]))
                                      for s in top])], ">"),
            Column("prompt", [("prompt", [one_line(s["prompt"]) for s in top])], flex=True,
                   floor=20),
        ]  # fmt: skip
        top_steps: list[Step] = [("form", "model", 1), ("form", "started", 1),
                                 ("cut", "prompt", 10), ("drop", "started", 0)]  # fmt: skip
        lines += render(top_columns, top_steps, title="most expensive sessions", room=room)
    emit(lines)


def tools_table(result: dict[str, Any], room: int | None = None) -> None:
    rows = result["rows"]
    if not rows:
        emit(["no tool calls in this range"])
        return
    largest = max(r["calls"] for r in rows)
    t = result["totals"]
    columns = [
        Column("tool", [("tool", [r["tool"] for r in rows])], flex=True, floor=12),
        Column("calls", [("calls", [f"{r['calls']:,}" for r in rows])], ">"),
        Column("failures", [("failures", [f"{r['failures']:,}" for r in rows]),
                            ("failed", [f"{r['failures']:,}" for r in rows])], ">"),
        Column("rate", [("failure rate", [f"{100 * r['failure_rate']:.1f}%" for r in rows]),
                        ("rate", [f"{100 * r['failure_rate']:.1f}%" for r in rows])], ">"),
        Column("jobs", [("jobs", [f"{r['jobs']:,}" for r in rows])], ">"),
        Column("bar", [("", [bar(r["calls"], largest, 16) for r in rows]),
                       ("", [bar(r["calls"], largest, 8) for r in rows])]),
    ]  # fmt: skip
    footer = {"tool": "total", "calls": f"{t['calls']:,}", "failures": f"{t['failures']:,}",
              "rate": f"{100 * t['failure_rate']:.1f}%"}  # fmt: skip
    steps: list[Step] = [("form", "bar", 1), ("form", "rate", 1), ("form", "failures", 1),
                         ("drop", "bar", 0), ("drop", "jobs", 0)]  # fmt: skip
    emit(render(columns, steps, title="tools", footer=footer, room=room))


def _local(text: str | None, timezone: str) -> str:
    if not text:
        return "-"
    from datetime import datetime
    from zoneinfo import ZoneInfo

    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(ZoneInfo(timezone))
    return moment.strftime("%Y-%m-%d %H:%M")


def blocks_table(
    result: dict[str, Any], timezone: str, *, active_only: bool = False, room: int | None = None
) -> None:
    blocks = result["blocks"]
    if not blocks:
        emit(["no active block" if active_only else "no usage in this range"])
        return

    def status(b: dict[str, Any]) -> str:
        return "gap" if b["is_gap"] else "ACTIVE" if b["is_active"] else "done"

    def blank(b: dict[str, Any], text: str) -> str:
        return "" if b["is_gap"] else text

    columns = [
        Column("start", [("start", [_local(b["start"], timezone) for b in blocks])]),
        Column("status", [("status", [status(b) for b in blocks])]),
        Column("entries", [("entries", [blank(b, str(b["entries"])) for b in blocks])], ">"),
        Column("tokens", [("tokens", [blank(b, tokens(b["total_tokens"])) for b in blocks])],
               ">"),
        Column("cost", [("cost", [blank(b, cost(b["cost_usd"], any(unpriced(m) for m in
                                                 b["models"]))) for b in blocks])], ">"),
        Column("models", [("models", [", ".join(model(m) for m in b["models"]) for b in blocks]),
                          ("models", [", ".join(model(m, True) for m in b["models"])
                                      for b in blocks])], flex=True, floor=10),
    ]  # fmt: skip
    lines = render(
        columns,
        [("form", "models", 1), ("drop", "models", 0)],
        title=f"{result['hours']}-hour billing blocks ({timezone})",
        room=room,
    )
    for b in blocks:
        if b["is_active"] and b["burn_rate"]:
            rate, projection = b["burn_rate"], b["projection"]
            lines.append(
                f"active block until {_local(b['end'], timezone)}: "
                f"{rate['tokens_per_minute']:,.0f} tokens/min, "
                f"{cost(rate['cost_per_hour'])}/hour; projected "
                f"{tokens(projection['total_tokens'])} tokens, "
                f"{cost(projection['total_cost'])} "
                f"({projection['remaining_minutes']} min left)"
            )
    emit(lines)


def status(info: dict[str, Any]) -> None:
    """The daemon's (or the database's) state, one `key  value` line each."""
    running = info.get("daemon") != "not running"
    if running:
        uptime = duration(int(info["uptime_seconds"] * 1000))
        state = "starting" if info.get("state") == "starting" else "running"
        lines = [("daemon", f"{state} (pid {info['pid']}, up {uptime})"
                            + (": loading its files" if state == "starting" else ""))]  # fmt: skip
    else:
        lines = [("daemon", "not running")]
    lines += [
        ("database", f"{info['db_path']} ({info['db_size_bytes'] / 1e6:.1f} MB)"),
        ("archived", f"{plural(info['bytes_archived'], 'byte')}, "
                     f"{plural(info['lines_archived'], 'line')} in "
                     f"{plural(info['files_known'], 'file')}"),
        ("bad lines", f"{info['bad_lines']:,}"),
        ("lost bytes", f"{info['lost_bytes']:,}"),
        ("jobs", f"{info['jobs']:,} ({info['sessions_active']:,} active)"),
    ]  # fmt: skip
    skipped: dict[str, int] = info.get("files_skipped") or {}
    if skipped:  # FIFOs, devices, links not followed, what cannot be read
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in sorted(skipped.items()))
        lines.append(("skipped", f"{plural(sum(skipped.values()), 'path')} ({reasons})"))
    sessions, files = info.get("sessions_quarantined", 0), info.get("files_quarantined", 0)
    if sessions or files:
        lines.append(
            (
                "quarantined",
                f"{plural(sessions, 'session')}, {plural(files, 'file')} "
                "(their archive is kept; `jobvault rebuild` retries them)",
            )
        )
    if running:
        lines += [
            ("watching", ", ".join(info["watch_existing"]) or "nothing yet"),
            ("socket", info["socket"]),
            ("ingest lag", f"{info.get('ingest_lag_seconds', 0):.1f} s "
                           f"({plural(info.get('pending_bytes', 0), 'byte')} waiting)"),
            ("connections", f"{info.get('connections', 0):,} of "
                            f"{info.get('max_connections', 0):,}"),
            ("last error", info.get("last_error") or "none"),
        ]  # fmt: skip
        sync = info.get("sync") or {}
        if sync.get("state", "off") != "off":
            pending = sync.get("rows_pending")
            retry = sync.get("retry_in_seconds")
            lines.append((
                "team sync",
                f"{sync['state']} → {sync['url']}; "
                f"{'?' if pending is None else f'{pending:,}'} job changes pending; "
                f"last push {sync.get('last_push_at') or 'never'}"
                + (f"; retry in {retry:.0f} s" if retry else ""),
            ))  # fmt: skip
            if sync.get("last_error"):
                lines.append(("sync error", f"{sync['last_error']} ({sync['last_error_at']})"))
    incident = info.get("db_incident")
    if incident:
        lines.append(("database event", f"{incident['detected_at']}: {incident['message']}"))
        lines.append(("", incident["action"]))
    size = max(len(k) for k, _ in lines)
    emit([f"{key.ljust(size)}  {value}" for key, value in lines])


def import_summary(summary: dict[str, Any]) -> None:
    emit([
        f"imported {plural(summary['files'], 'file')}: {plural(summary['bytes_archived'], 'byte')}"
        f", {plural(summary['lines'], 'line')} ({summary['bad_lines']:,} bad), "
        f"{plural(summary['jobs'], 'job')} → {summary['db']}"
    ])  # fmt: skip
