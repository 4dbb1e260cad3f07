"""The job record and its children: the typed seam between source adapters and the store.

Every field means the same for every source, as ccusage reports them: `input_tokens` is input
not served from cache, `cache_read_tokens` the cached input, `cache_creation_tokens` the
cache writes (5-minute and 1-hour), `output_tokens` includes reasoning and `reasoning_tokens`
repeats the reasoning part. Token counts and costs include the job's subagents.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from jobvault.pickling import quick

Status = Literal["active", "completed", "interrupted", "error"]
STATUSES: tuple[Status, ...] = ("active", "completed", "interrupted", "error")
PREVIEW_CHARS = 500
SEARCH_TEXT_CHARS = 32 * 1024  # message text indexed for full-text search, per job
# A token count above this is no real one (a million times a long session's): a corrupt or
# hostile line. It is counted as a bad value, never stored, so no sum can overflow SQLite.
MAX_COUNT = 10**12


def count(value: Any, name: str, bad: list[str]) -> int:
    """A token count taken from a line: a non-negative integer up to MAX_COUNT, else 0.

    Missing values, bools, floats and strings count 0 as before; an integer outside
    0..MAX_COUNT is also noted in `bad`, which the adapter returns from `feed` so the engine
    counts the line as a bad value (the line stays archived; its other fields are used).
    """
    if value.__class__ is not int:
        return 0
    if 0 <= value <= MAX_COUNT:
        return int(value)
    bad.append(f"bad value: {name} = {str(value)[:24]} is outside 0..{MAX_COUNT}")
    return 0


MAX_COST = 1e6  # dollars for one message: anything above is no real cost


def money(value: Any, name: str, bad: list[str]) -> float | None:
    """A cost in dollars taken from a line (None when absent); out of range is a bad value."""
    return number(value, name, bad, MAX_COST)


def number(value: Any, name: str, bad: list[str], maximum: float) -> float | None:
    """A non-negative number up to `maximum` taken from a line (None when absent or not a
    number); out of range (NaN included) is noted in `bad` and read as None."""
    if value is None or value.__class__ not in (int, float):
        return None
    if 0 <= value <= maximum:  # (NaN fails both comparisons)
        return float(value)
    bad.append(f"bad value: {name} = {str(value)[:24]} is outside 0..{maximum:g}")
    return None


@quick
@dataclass(frozen=True, slots=True)
class ToolCall:
    seq: int
    tool_use_id: str | None
    name: str
    agent_id: str | None
    is_error: bool
    timestamp: str | None
    input_preview: str | None
    output_preview: str | None


@quick
@dataclass(frozen=True, slots=True)
class Subagent:
    agent_id: str
    agent_type: str | None
    description: str | None
    layout: Literal["subagents-dir", "flat-file", "sidechain"]
    started_at: str | None
    ended_at: str | None
    message_count: int
    tool_call_count: int
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    cost_usd: float


@quick
@dataclass(frozen=True, slots=True)
class FileModified:
    path: str
    tool: str
    count: int


@quick
@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one job in one UTC hour with one model."""

    hour: str  # "YYYY-MM-DDTHH"
    model: str
    messages: int
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    reasoning_tokens: int
    cost_usd: float
    # The first and last counted message in this hour (ISO times): billing blocks need them.
    first_at: str | None = None
    last_at: str | None = None


@quick
@dataclass(frozen=True, slots=True)
class UsageCandidate:
    """A job's best copy of one deduplicated message; across jobs the best copy counts.

    Best = a non-sidechain copy, then the largest token total, then the smallest (path,
    offset): ccusage's rule, so totals agree with it.
    """

    sidechain: bool
    total: int
    path: str
    offset: int
    # What the copy counts (stored per message in `usage_keys`, so a team vault can count a
    # message present on several machines once, by the same rule).
    at: str = ""  # the line's timestamp
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0


RateWindow = Literal["primary", "secondary"]


@quick
@dataclass(frozen=True, slots=True)
class RateLimitSample:
    """One reading of a plan's rate-limit window, as the agent reported it (Codex
    `token_count.rate_limits`): stored in `job_rate_limits` for limit history."""

    at: str  # the line's timestamp (ISO 8601)
    window: RateWindow  # Codex: primary (the short window, 5 h) / secondary (weekly)
    used_percent: float | None
    window_minutes: int | None
    resets_at: str | None  # ISO 8601, UTC


@quick
@dataclass(frozen=True, slots=True)
class JobRecord:
    """One agent session, derived from the raw archive alone (a pure function of it)."""

    id: str
    source: str
    session_id: str
    project: str | None
    cwd: str | None
    git_branch: str | None
    version: str | None
    model: str | None
    models: list[str]
    status: Status
    started_at: str | None
    ended_at: str | None
    duration_ms: int | None
    prompt: str | None
    summary: str | None
    title: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_tokens: int
    cache_read_tokens: int
    reasoning_tokens: int
    cost_usd: float
    pricing_version: str
    tool_call_count: int
    failed_tool_calls: int
    primary_tool: str | None
    files_modified: list[str]
    message_count: int
    user_message_count: int
    subagent_count: int
    context_window: int | None
    context_used_pct: float | None
    source_path: str | None
    machine_id: str | None
    unpriced_models: list[str] = field(default_factory=list)
    # Added with the Codex source; other sources keep the defaults.
    parent_session_id: str | None = None  # the session this one was forked or spawned from
    reasoning_effort: str | None = None  # of the last turn
    sandbox_policy: str | None = None  # of the last turn
    approval_policy: str | None = None  # of the last turn
    skipped_records: int = 0  # lines of a kind the adapter does not know: archived, not parsed
    skipped_kinds: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (orjson encodes the dataclass itself: many times
        faster than `dataclasses.asdict`, which deep-copies every field)."""
        value: dict[str, Any] = orjson.loads(orjson.dumps(self))
        return value


@quick
@dataclass(frozen=True, slots=True)
class JobDetail:
    """A job record with its children, as the store writes it and `show` prints it."""

    record: JobRecord
    tool_calls: Sequence[ToolCall]  # a list, or a `previews.ToolCallList` read lazily
    subagents: list[Subagent]
    files: list[FileModified]
    usage: list[UsageRow]
    # Prompts and assistant text, in order, cut at SEARCH_TEXT_CHARS: the full-text index.
    search_text: str = ""
    # Rate-limit readings in time order (a list, or a lazy sequence for a spilled session).
    rate_limits: Sequence[RateLimitSample] = ()
    # No user or assistant message at all, meta lines aside (a summary-only,
    # attachment-only or snapshot-only file): archived and listed by `status`, never a job.
    empty: bool = False


def duration_ms(start: str | None, end: str | None) -> int | None:
    """Milliseconds between two ISO 8601 timestamps (None if either is missing or bad)."""
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(int((b - a).total_seconds() * 1000), 0)


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str | None:
    """Cut `text` to at most `limit` characters, marking the cut."""
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TextSample:
    """The first `limit` characters of a job's text pieces, ordered by their line's order key.

    Pieces may arrive in any order across files; a piece is dropped only once `limit`
    characters of pieces ordered before it are held, and more pieces can only push it further
    back, so the result is the same whatever order lines were fed in, and memory stays
    bounded.
    """

    def __init__(self, limit: int = SEARCH_TEXT_CHARS) -> None:
        self.limit = limit
        self._pieces: list[tuple[Any, str]] = []
        self._text: str | None = None  # the joined sample, until a piece changes it
        self._size = 0

    def add(self, order: Any, text: str) -> None:
        if self._size >= self.limit and self._pieces and order > self._pieces[-1][0]:
            return  # the pieces before it fill the sample already: it would be dropped
        # text.strip()[:limit], without copying all of a long text
        text = text.lstrip()
        if len(text) > self.limit and not text[self.limit :].isspace():
            text = text[: self.limit]
        else:
            text = text[: self.limit].rstrip()
        if not text:
            return
        bisect.insort(self._pieces, (order, text))  # ties broken by the text itself
        self._text = None
        self._size += len(text) + 1
        while len(self._pieces) > 1 and self._size - len(self._pieces[-1][1]) - 1 >= self.limit:
            _, dropped = self._pieces.pop()
            self._size -= len(dropped) + 1

    def pieces(self) -> list[tuple[Any, str]]:
        return list(self._pieces)

    def text(self) -> str:
        # (a live record is built after every line: the join is kept until a piece changes)
        if self._text is None:
            self._text = join_sample(self._pieces, self.limit)
        return self._text


def join_sample(pieces: list[tuple[Any, str]], limit: int = SEARCH_TEXT_CHARS) -> str:
    """Join ordered text pieces with newlines, cut at `limit` characters."""
    return "\n".join(text for _, text in sorted(pieces))[:limit]
