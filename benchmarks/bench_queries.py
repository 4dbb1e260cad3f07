"""Time the usage reports and full-text search on a synthetic vault of many jobs.

    python benchmarks/bench_queries.py [--jobs 100000] [--db PATH] [--keep]

Job rows and their children (hourly usage, tool calls, files, search documents and daily
metrics) are synthesized directly in a migrated database, through the same SQL the writer
uses, which takes a minute rather than the hours a real import of 100k sessions would; then
each query runs a few times on a read-only connection and the median is printed. Figures, not
assertions: timing belongs here, not in the tests.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobvault.store import search, stats
from jobvault.store.db import open_reader, open_writer

MODELS = ["claude-sonnet-4-20250514", "claude-opus-4-1-20250805", "claude-haiku-4-5-20251001",
          "gpt-5-codex"]  # fmt: skip
TOOLS = ["Bash", "Read", "Edit", "Write", "Grep", "Glob", "Task", "MultiEdit", "WebFetch"]
START = datetime(2024, 1, 1, tzinfo=UTC)


def _words(rng: random.Random, vocabulary: list[str], n: int) -> str:
    # Zipf-like: a few words are everywhere, most are rare, as in real transcripts.
    return " ".join(vocabulary[min(int(rng.paretovariate(1.1)) - 1, len(vocabulary) - 1)]
                    for _ in range(n))  # fmt: skip


def synthesize(db: Path, jobs: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(20_000)]
    vocabulary[:12] = ["the", "fix", "test", "error", "login", "refactor", "database", "cache",
                       "deploy", "tokenizer", "pagination", "migration"]  # fmt: skip
    conn = open_writer(db)
    conn.execute("BEGIN IMMEDIATE")
    for n in range(jobs):
        job_id = f"claude:{n:08d}-0000-4000-8000-000000000000"
        started = START + timedelta(minutes=rng.randrange(0, 2 * 365 * 24 * 60))
        hours = rng.randint(1, 4)
        model = rng.choice(MODELS)
        project = f"-home-dev-p{rng.randrange(200)}"
        prompt = _words(rng, vocabulary, rng.randint(6, 30))
        body = _words(rng, vocabulary, rng.randint(80, 300))
        usage = []
        cost = 0.0
        for h in range(hours):
            moment = started + timedelta(hours=h)
            hour = moment.strftime("%Y-%m-%dT%H")
            row_cost = rng.random() * 0.5
            cost += row_cost
            first = moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            usage.append((job_id, hour, model, rng.randint(1, 40), rng.randint(10, 500),
                          rng.randint(100, 20_000), rng.randint(0, 50_000),
                          rng.randint(0, 500_000), 0, row_cost, first, first))  # fmt: skip
        calls = [(job_id, i, f"toolu_{n}_{i}", rng.choice(TOOLS), None,
                  int(rng.random() < 0.08), started.isoformat()[:19] + ".000Z", "{}", "ok")
                 for i in range(rng.randint(0, 25))]  # fmt: skip
        ended = started + timedelta(hours=hours)
        conn.execute(
            "INSERT INTO jobs (id, source, session_id, project, cwd, model, models, status, "
            "started_at, ended_at, prompt, summary, cost_usd, tool_call_count, "
            "failed_tool_calls, record, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job_id, "claude", job_id[7:], project, f"/home/dev/{project}", model,
             f'["{model}"]', "completed", started.isoformat()[:19] + ".000Z",
             ended.isoformat()[:19] + ".000Z", prompt, body[:200], round(cost, 6), len(calls),
             sum(c[5] for c in calls), f'{{"id": "{job_id}", "prompt": "{prompt}"}}',
             ended.isoformat()),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO job_usage (job_id, hour, model, messages, input_tokens, output_tokens, "
            "cache_creation_tokens, cache_read_tokens, reasoning_tokens, cost_usd, first_at, "
            "last_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            usage,
        )
        conn.executemany("INSERT INTO tool_calls VALUES (?,?,?,?,?,?,?,?,?)", calls)
        conn.executemany(
            "INSERT OR IGNORE INTO files_modified VALUES (?,?,?,?)",
            [(job_id, f"/home/dev/{project}/src/m{rng.randrange(500)}.py", "Edit", 1)
             for _ in range(rng.randint(0, 4))],
        )  # fmt: skip
        doc = conn.execute("INSERT INTO search_docs (job_id) VALUES (?)", (job_id,)).lastrowid
        conn.execute(
            "INSERT INTO search_fts (rowid, title, prompt, summary, body) VALUES (?,?,?,?,?)",
            (doc, "", prompt, body[:200], body),
        )
    conn.execute(
        "INSERT INTO daily_metrics SELECT substr(u.hour, 1, 10), j.source, u.model, "
        "SUM(u.messages), SUM(u.input_tokens), SUM(u.output_tokens), "
        "SUM(u.cache_creation_tokens), SUM(u.cache_read_tokens), SUM(u.reasoning_tokens), "
        "SUM(u.cost_usd) FROM job_usage u "
        "JOIN jobs j ON j.id = u.job_id GROUP BY 1, 2, 3"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, Any]:
    results = []
    value = None
    for _ in range(repeat):
        began = time.perf_counter()
        value = fn()
        results.append(time.perf_counter() - began)
    return statistics.median(results), value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--db", type=Path, help="reuse or keep this database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.db"
        if not db.exists():
            began = time.perf_counter()
            synthesize(db, args.jobs)
            print(f"synthesized {args.jobs:,} jobs in {time.perf_counter() - began:.1f} s "
                  f"({db.stat().st_size / 1e6:.0f} MB)")  # fmt: skip
        conn = open_reader(db)
        counts = conn.execute(
            "SELECT (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM job_usage), "
            "(SELECT COUNT(*) FROM tool_calls)"
        ).fetchone()
        print(f"{counts[0]:,} jobs, {counts[1]:,} hourly usage rows, {counts[2]:,} tool calls")
        year = "2025-01-01T00:00:00.000Z"
        cases: list[tuple[str, Callable[[], Any]]] = [
            ("stats.usage day, UTC (daily_metrics)", lambda: stats.usage(conn, "day")),
            ("stats.usage day, Europe/Paris", lambda: stats.usage(
                conn, "day", timezone="Europe/Paris")),
            ("stats.usage week, America/New_York", lambda: stats.usage(
                conn, "week", timezone="America/New_York")),
            ("stats.usage month, UTC, project filter", lambda: stats.usage(
                conn, "month", filters={"project": "-home-dev-p7"})),
            ("stats.usage day, last year, top 10", lambda: stats.usage(
                conn, "day", timezone="Europe/Paris", since=year, top=10)),
            ("stats.usage model", lambda: stats.usage(conn, "model")),
            ("stats.usage project", lambda: stats.usage(conn, "project")),
            ("stats.tools", lambda: stats.tools(conn)),
            ("stats.blocks (two years)", lambda: stats.blocks(conn)),
            ("search common word 'fix'", lambda: search.search(conn, "fix")),
            ("search rare word 'w900'", lambda: search.search(conn, "w900")),
            ("search phrase '\"the fix\"'", lambda: search.search(conn, '"the fix"')),
            ("search prefix 'tokeni*'", lambda: search.search(conn, "tokeni*")),
            ("search 'login' + project + since", lambda: search.search(
                conn, "login", {"project": "-home-dev-p7", "since": year})),
            ("search 'cache' + tool Bash", lambda: search.search(conn, "cache", {"tool": "Bash"})),
            ("search by file glob '*/m42.py'", lambda: search.search(
                conn, "", {"file_glob": "*/m42.py"})),
            ("search by file prefix", lambda: search.search(
                conn, "", {"file_prefix": "/home/dev/-home-dev-p7/src/"})),
        ]  # fmt: skip
        print(f"{'query':<44} {'median':>10}  result")
        for name, fn in cases:
            seconds, value = timed(fn)
            size = len(value.get("rows") or value.get("results") or value.get("blocks") or [])
            print(f"{name:<44} {seconds * 1000:>8.1f} ms  {size} rows")
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
