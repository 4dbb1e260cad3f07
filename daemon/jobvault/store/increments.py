"""Rewriting a live job's record by what changed since its last write.

A job being appended to is rewritten every few tenths of a second. Writing it whole each time
(delete the row and every child, insert them again, re-index its text) costs time in
proportion to the session, so a long live session made every appended line dearer. Instead
the writer keeps, in memory, what it last wrote of each live job (`Written`: a hash per tool
call row and of every other child table, the usage rows, the indexed text) and writes only
the difference: the job row is updated in place, tool calls from the first one that changed,
other child tables and the search document only when they differ, and the daily metrics by
the usage rows' deltas. The database ends up exactly as a whole rewrite leaves it (tested).

A job written for the first time in this process, or final, is written whole.

Re-indexing the text is the dearest part of a live job's write (FTS5 deletes and tokenizes the
whole document again, up to its 32 KB cap), so the caller may hold it back (`defer_text`): the
rest is written, and the state remembers the text as stale until a later write indexes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from jobvault.records import JobDetail

Row = tuple[Any, ...]
# A job's subagent, files-modified and rate-limit rows, and its usage rows by (hour, model).
Children = tuple[list[Row], list[Row], list[Row], dict[tuple[str, str], Row]]


@dataclass(slots=True)
class Written:
    """What was last written of one job (kept while it is live)."""

    tools: list[int] = field(default_factory=list)  # a hash per tool-call row, in seq order
    seqs: list[int] = field(default_factory=list)
    subagents: int = 0
    files: int = 0
    rates: int = 0
    text: int = 0
    text_stale: bool = False  # the indexed text is older than the record (held back)
    job: Row = ()  # the job row as written
    usage: dict[tuple[str, str], Row] = field(default_factory=dict)  # (hour, model) -> values


def tool_rows(detail: JobDetail) -> list[Row]:
    rec = detail.record
    return [
        (rec.id, t.seq, t.tool_use_id, t.name, t.agent_id, int(t.is_error), t.timestamp,
         t.input_preview, t.output_preview)
        for t in detail.tool_calls
    ]  # fmt: skip


def text_of(detail: JobDetail) -> tuple[str, str, str, str]:
    rec = detail.record
    return (rec.title or "", rec.prompt or "", rec.summary or "", detail.search_text)


def state_of(
    detail: JobDetail,
    tools: Sequence[Row],
    subagents: Sequence[Row],
    files: Sequence[Row],
    rates: Sequence[Row],
    usage: dict[tuple[str, str], Row],
    job: Row,
) -> Written:
    return Written(
        tools=[hash(r) for r in tools],
        seqs=[r[1] for r in tools],
        subagents=hash(tuple(subagents)),
        files=hash(tuple(files)),
        rates=hash(tuple(rates)),
        text=hash(text_of(detail)),
        usage=dict(usage),
        job=job,
    )


def write_changes(
    conn: sqlite3.Connection,
    detail: JobDetail,
    prev: Written,
    *,
    job_row: Row,
    update_job: Callable[[Row, Row], object],
    children: Callable[
        [JobDetail], tuple[list[Row], list[Row], list[Row], dict[tuple[str, str], Row]]
    ],
    insert: dict[str, str],
    daily: Callable[[str, dict[tuple[str, str], list[Any]]], None],
    hourly: Callable[[str, dict[tuple[str, str], list[Any]]], None] | None = None,
    defer_text: bool = False,
) -> Written:
    """Write what differs from `prev`; return the new state. The caller gives the SQL, and
    `update_job(job_row, prev.job)` writes the job row (by the columns that changed: an UPDATE
    naming a column rewrites every index on it).

    `daily` gets the usage deltas per (day, model); `hourly` those per (hour, model) of the
    rows written (`usage_hourly_delete`, a trigger of m005_read_side, subtracts a row deleted).
    With `defer_text`, a changed text is not indexed: the state keeps the old text's hash and
    says `text_stale`.
    """
    rec = detail.record
    update_job(job_row, prev.job)
    tools = tool_rows(detail)
    hashes = [hash(r) for r in tools]
    first = 0
    limit = min(len(hashes), len(prev.tools))
    while first < limit and hashes[first] == prev.tools[first]:
        first += 1
    if first < len(prev.tools):
        conn.execute(
            "DELETE FROM tool_calls WHERE job_id = ? AND seq >= ?", (rec.id, prev.seqs[first])
        )
    conn.executemany(insert["tool_calls"], tools[first:])
    subagents, files, rates, usage = children(detail)
    for table, rows, before in (
        ("subagents", subagents, prev.subagents),
        ("files_modified", files, prev.files),
        ("job_rate_limits", rates, prev.rates),
    ):
        if hash(tuple(rows)) != before:
            conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (rec.id,))
            conn.executemany(insert[table], rows)
    deltas: dict[tuple[str, str], list[Any]] = {}
    hours: dict[tuple[str, str], list[Any]] = {}
    for key in prev.usage.keys() | usage.keys():
        new, old = usage.get(key), prev.usage.get(key)
        if new == old:
            continue
        hour, model = key
        if new is None:
            conn.execute(
                "DELETE FROM job_usage WHERE job_id = ? AND hour = ? AND model = ?",
                (rec.id, hour, model),
            )
        else:
            conn.execute(insert["job_usage"], new)
        # The usage columns are messages .. cost_usd: values 3..9 of a job_usage row.
        new_values = new[3:10] if new is not None else (0,) * 7
        old_values = old[3:10] if old is not None else (0,) * 7
        day = deltas.setdefault((hour[:10], model), [0] * 7)
        for i in range(7):
            day[i] += new_values[i] - old_values[i]
        if new is not None:  # (a row deleted is subtracted by usage_hourly's own trigger)
            hours[key] = [n - o for n, o in zip(new_values, old_values, strict=True)]
    if deltas:
        daily(rec.source, deltas)
    if hours and hourly is not None:
        hourly(rec.source, hours)
    state = state_of(detail, tools, subagents, files, rates, usage, job_row)
    if state.text == prev.text:
        return state
    if defer_text:
        state.text, state.text_stale = prev.text, True
        return state
    conn.execute(
        "DELETE FROM search_fts WHERE rowid IN (SELECT id FROM search_docs WHERE job_id = ?)",
        (rec.id,),
    )
    conn.execute(
        "INSERT INTO search_fts (rowid, title, prompt, summary, body) "
        "SELECT id, ?, ?, ?, ? FROM search_docs WHERE job_id = ?",
        (*text_of(detail), rec.id),
    )
    return state
