"""Rendering: one Jinja2 environment (autoescaped) and the templates, for the live dashboard
and the static report alike; only `Urls` differs (server routes, or relative file names)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import jinja2
import orjson
from markupsafe import Markup, escape

from jobvault.store.replay import input_summary

ASSETS = ("app.css", "app.js", "favicon.svg")
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(job_id: str) -> str:
    """A file name for a job id (`claude:5f0c…` → `claude_5f0c…`)."""
    return _SLUG.sub("_", job_id).strip("._") or "job"


@dataclass(frozen=True)
class Urls:
    """Where links point: the live server's routes, or the static report's files."""

    live: bool
    root: str = "/"  # the static report: "" from index.html, "../" from jobs/<id>.html
    version: str = ""
    transcripts: bool = True  # the static report: are the original files beside the pages?

    def overview(self, query: str = "") -> str:
        if not self.live:
            return self.root + "index.html"
        return "/" + ("?" + query if query else "")

    def jobs(self, query: str = "") -> str:
        if not self.live:
            return self.root + "jobs.html"
        return "/jobs" + ("?" + query if query else "")

    def job(self, job_id: str) -> str:
        if not self.live:
            return f"{self.root}jobs/{slug(job_id)}.html"
        return "/jobs/" + quote(job_id, safe="")

    def export(self, job_id: str) -> str | None:
        if not self.live:
            return f"{self.root}jobs/{slug(job_id)}.jsonl" if self.transcripts else None
        return self.job(job_id) + "/export"

    def replay(self, job_id: str) -> str | None:
        return self.job(job_id) + "/replay" if self.live else None

    def asset(self, name: str) -> str:
        if not self.live:
            return f"{self.root}assets/{name}"
        return f"/static/{name}" + (f"?v={self.version}" if self.version else "")


def money(value: Any, digits: int = 2) -> str:
    number = float(value or 0)
    if 0 < abs(number) < 0.01:
        return f"${number:.4f}"
    return f"${number:,.{digits}f}"


def tokens(value: Any) -> str:
    """1,234 / 12.3 k / 4.56 M / 7.89 B: readable at a glance (the exact count is in title)."""
    number = int(value or 0)
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= size * 10:
            return f"{number / size:,.1f} {unit}"
    return f"{number:,}"


def percent(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * float(value):.{digits}f}%"


def duration(ms: Any) -> str:
    if ms is None:
        return "–"
    seconds = int(ms) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def minutes(value: Any) -> str:
    return duration(int(value or 0) * 60_000)


class When:
    """Times shown in one zone (the overview's), as `2025-10-01 14:03`."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)

    def __call__(self, value: Any, seconds: bool = False) -> str:
        if not value:
            return "–"
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
        if moment.tzinfo is not None:
            moment = moment.astimezone(self.zone)
        return moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def clip(text: Any, lines: int = 3, width: int = 400) -> str:
    """The first lines of a text, for a folded view (the whole text is in the unfolded one)."""
    all_lines = str(text or "").rstrip().splitlines()
    return "\n".join(all_lines[:lines])[:width]


def line_count(text: Any) -> int:
    return len(str(text or "").rstrip().splitlines())


_TAG = re.compile(
    r"<(command-name|command-args|local-command-stdout|command-message)>(.*?)</\1>", re.S
)


def command_text(text: Any) -> str:
    """A slash command as typed (`/review src/`), or a local command's output, from the
    wrapper tags Claude Code stores it in; the text itself when there are none."""
    parts = {name: value.strip() for name, value in _TAG.findall(str(text or ""))}
    if "command-name" in parts:
        return " ".join(p for p in (parts["command-name"], parts.get("command-args", "")) if p)
    return str(parts.get("local-command-stdout", text or ""))


def pretty(value: Any) -> str:
    """A tool input as indented JSON (a string stays itself)."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return str(value)


def snippet(text: str | None) -> Markup:
    """A search snippet with its «marks» as <mark> (the text itself stays escaped)."""
    escaped = escape(text or "")
    return Markup(str(escaped).replace("«", "<mark>").replace("»", "</mark>"))


def json_script(value: Any) -> Markup:
    """JSON for a <script type="application/json"> block: `<`, `>` and `&` escaped, so the
    data can never close the element."""
    text = orjson.dumps(value).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("jobvault.serve.web", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(
        money=money,
        tokens=tokens,
        percent=percent,
        duration=duration,
        minutes=minutes,
        clip=clip,
        line_count=line_count,
        pretty=pretty,
        snippet=snippet,
        command_text=command_text,
        json_script=json_script,
        summary=input_summary,
    )
    return env


def render(name: str, **context: Any) -> str:
    """Render a template; every page gets `urls`, `when` and `live` from the context."""
    return environment().get_template(name).render(**context)


def render_block(name: str, block: str, **context: Any) -> str:
    """Render one block of a template (a live page re-reads its <main> this way)."""
    template = environment().get_template(name)
    return "".join(template.blocks[block](template.new_context(context)))


def warm() -> None:
    """Compile every template now, so the first visit does not wait for it (~30 ms)."""
    env = environment()
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)
