"""An independent recount of every Claude job's tokens from the archive alone.

Written from the rule in docs/architecture.md ("Counting tokens like ccusage") and
/work/shared/FORMATS.md, not from the adapter: usage is keyed by (message.id, requestId),
falling back to message.id; of all the copies of a key in the archive the best one counts — a
non-sidechain copy (not `isSidechain`, not in a subagent's file), then the largest input +
output + cache write + cache read total, then the smallest (path, offset) — and it counts in
the job that holds it (a message copied into another session counts once, overall). A line
without message.id always counts. The archive read is what each job is made of: the current
generation of each of its files, and deleted files (their history exists nowhere else);
superseded generations count for nothing.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from jobvault.store.archive import iter_chunks

Tokens = tuple[int, int, int, int]  # input, output, cache creation, cache read
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")


def _usage(obj: Any) -> Tokens | None:
    if not isinstance(obj, dict) or obj.get("type") != "assistant":
        return None
    message = obj.get("message")
    if not isinstance(message, dict) or message.get("model") == "<synthetic>":
        return None
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return None
    parts = usage.get("cache_creation")
    if isinstance(parts, dict):
        write = int(parts.get("ephemeral_5m_input_tokens") or 0) + int(
            parts.get("ephemeral_1h_input_tokens") or 0
        )
    else:
        write = int(usage.get("cache_creation_input_tokens") or 0)
    return (int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0), write,
            int(usage.get("cache_read_input_tokens") or 0))  # fmt: skip


def recount(db: Path) -> dict[str, Tokens]:
    """Each Claude job's (input, output, cache creation, cache read) tokens."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        files = conn.execute(
            "SELECT id, path, job_key, role FROM files WHERE source = 'claude' "
            "AND job_key IS NOT NULL AND state IN ('active', 'deleted') ORDER BY id"
        ).fetchall()
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        best: dict[str, tuple[tuple[bool, int, str, int], str, Tokens]] = {}
        for file_id, path, job, role in files:
            data = b"".join(chunk for _offset, chunk in iter_chunks(conn, file_id))
            offset = 0
            for raw in data.split(b"\n"):
                at, offset = offset, offset + len(raw) + 1
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                counts = _usage(obj)
                if counts is None:
                    continue
                message_id = obj["message"].get("id")
                if not isinstance(message_id, str) or not message_id:
                    totals[job] = [a + b for a, b in zip(totals[job], counts, strict=True)]
                    continue
                request = obj.get("requestId")
                key = (
                    f"{message_id}:{request}"
                    if isinstance(request, str) and request
                    else message_id
                )
                sidechain = bool(obj.get("isSidechain")) or role == "subagent"
                rank = (sidechain, -sum(counts), path, at)
                if key not in best or rank < best[key][0]:
                    best[key] = (rank, job, counts)
        for _rank, job, counts in best.values():
            totals[job] = [a + b for a, b in zip(totals[job], counts, strict=True)]
        return {job: (t[0], t[1], t[2], t[3]) for job, t in totals.items()}
    finally:
        conn.close()


def recorded(db: Path) -> dict[str, tuple[str, Tokens]]:
    """Each Claude job's (status, tokens) as its record says."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            f"SELECT session_id, status, {', '.join(TOKEN_COLUMNS)} FROM jobs "
            "WHERE source = 'claude'"
        ).fetchall()
    finally:
        conn.close()
    return {row[0]: (row[1], (row[2], row[3], row[4], row[5])) for row in rows}


def mismatches(db: Path) -> list[str]:
    """Jobs whose recorded tokens differ from the recount (a job with no record counts 0)."""
    counted = recount(db)
    records = recorded(db)
    out = []
    for job in sorted(set(counted) | set(records)):
        want = counted.get(job, (0, 0, 0, 0))
        got = records[job][1] if job in records else (0, 0, 0, 0)
        if got != want:
            out.append(f"{job}: record {got}, recount {want}")
    return out
