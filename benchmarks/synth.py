"""Synthesize many job records straight into a database, through the store's own writer.

The socket figures at 10k and 100k jobs need that many records; importing 100k sessions would
take longer than the whole benchmark, so records are written with `Store.write_jobs` (the same
code the engine uses: children, hourly usage and daily metrics included) and then served by a
real daemon.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from jobvault.records import FileModified, JobDetail, JobRecord, ToolCall, UsageRow
from jobvault.store.db import open_writer
from jobvault.store.writer import Store

MODELS = ("claude-sonnet-4-5-20250929", "claude-opus-4-1-20250805", "gpt-5-codex")
TOOLS = ("Bash", "Read", "Edit", "Write", "Grep")
WORDS = [
    "fix",
    "add",
    "test",
    "refactor",
    "the",
    "parser",
    "cache",
    "socket",
    "daemon",
    "import",
    "flaky",
    "build",
    "docs",
]
BASE = 1_735_689_600  # 2025-01-01T00:00:00Z


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def job_id(n: int) -> str:
    """The session id of synthetic job `n` (stable, so clients can ask for it)."""
    return f"{n:08x}-5a5a-4b4b-8c8c-{n:012x}"


def detail(n: int, rng: random.Random) -> JobDetail:
    """One plausible finished job with a few tool calls, files and hourly usage rows."""
    sid = job_id(n)
    source = "codex" if n % 7 == 0 else "claude"
    start = BASE + n * 300 + rng.randint(0, 250)
    duration = rng.randint(30, 5_400)
    model = MODELS[2] if source == "codex" else rng.choice(MODELS[:2])
    tokens = [
        rng.randint(100, 50_000),
        rng.randint(500, 80_000),
        rng.randint(0, 200_000),
        rng.randint(0, 5_000_000),
    ]
    cost = round(sum(tokens) / 1e6 * rng.uniform(0.5, 3), 4)
    calls = [
        ToolCall(
            i,
            f"toolu_{n}_{i}",
            rng.choice(TOOLS),
            None,
            rng.random() < 0.05,
            _iso(start + i),
            " ".join(rng.choices(WORDS, k=12)),
            "ok " * 40,
        )
        for i in range(rng.randint(0, 12))
    ]
    files = [FileModified(f"/home/dev/p{n % 40}/src/m{i}.py", "Edit", 1) for i in range(2)]
    hour = _iso(start)[:13]
    inp, out, created, read = tokens
    usage = [UsageRow(hour, model, rng.randint(1, 60), inp, out, created, read, 0, cost)]
    prompt = " ".join(rng.choices(WORDS, k=rng.randint(4, 40)))
    record = JobRecord(
        id=f"{source}:{sid}",
        source=source,
        session_id=sid,
        project=f"-home-dev-p{n % 40}",
        cwd=f"/home/dev/p{n % 40}",
        git_branch="main",
        version="2.0.37",
        model=model,
        models=[model],
        status="completed",
        started_at=_iso(start),
        ended_at=_iso(start + duration),
        duration_ms=duration * 1000,
        prompt=prompt,
        summary=prompt[::-1],
        title=None,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cache_creation_tokens=tokens[2],
        cache_read_tokens=tokens[3],
        reasoning_tokens=0,
        cost_usd=cost,
        pricing_version="synthetic",
        tool_call_count=len(calls),
        failed_tool_calls=sum(c.is_error for c in calls),
        primary_tool=calls[0].name if calls else None,
        files_modified=[f.path for f in files],
        message_count=rng.randint(2, 400),
        user_message_count=rng.randint(1, 20),
        subagent_count=0,
        context_window=200_000,
        context_used_pct=rng.uniform(1, 90),
        source_path=f"/home/dev/.claude/projects/-home-dev-p{n % 40}/{sid}.jsonl",
        machine_id="bench",
    )
    return JobDetail(record, calls, [], files, usage)


def synthesize(db: Path, start: int, stop: int, seed: int = 5, batch: int = 2000) -> float:
    """Write jobs `start`..`stop-1` into `db`; return the seconds it took."""
    rng = random.Random(seed + start)
    began = time.perf_counter()
    store = Store(open_writer(db, synchronous="NORMAL"))
    try:
        for first in range(start, stop, batch):
            store.write_jobs((detail(n, rng), True) for n in range(first, min(first + batch, stop)))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.conn.execute("ANALYZE")
    finally:
        store.close()
    return time.perf_counter() - began
