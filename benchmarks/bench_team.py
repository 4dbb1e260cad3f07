"""Time the team vault: the first push of a large vault, an incremental push, team reports.

    python -m benchmarks.bench_team [--jobs 100000] [--machines 50] [--doc docs/benchmarks.md]

A vault of `--jobs` jobs is written with the store's own writer (benchmarks/synth.py's jobs,
plus the per-message rows of their messages in `usage_keys`, ten at most per job), then pushed
with `jobvault.team.sync.push` to a real PostgreSQL server made for the run (durable settings:
fsync and synchronous commit on). 100 of its jobs are then rewritten and pushed again. For the
reports, the pushed machine's rows are copied in SQL to `--machines` - 1 more machines (new job
ids; 1 % of the jobs of one copy keep the message keys, so that some messages are shared and
the duplicate views have work), the rollup is rebuilt from the rows, and each report runs a few
times through `jobvault.team.reports`, the code `--team` uses; the median is kept.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import synth
from jobvault.store.db import open_writer
from jobvault.store.keys import key_hash
from jobvault.store.writer import Store

BEGIN = "<!-- bench-team:begin (written by `make bench` / benchmarks/bench_team.py) -->"
END = "<!-- bench-team:end -->"
FULL = {"jobs": 100_000, "machines": 50, "changed": 100}
QUICK = {"jobs": 4_000, "machines": 5, "changed": 100}


def build_vault(db: Path, jobs: int, seed: int = 11) -> tuple[float, int]:
    """Write `jobs` jobs and their message rows; return (seconds, message rows)."""
    rng = random.Random(seed)
    began = time.perf_counter()
    store = Store(open_writer(db, synchronous="NORMAL"))
    keys = 0
    try:
        for first in range(0, jobs, 2000):
            details = [synth.detail(n, rng) for n in range(first, min(first + 2000, jobs))]
            rows = []
            for detail in details:
                rec = detail.record
                if rec.source != "claude":
                    continue
                usage = detail.usage[0]
                for i in range(min(usage.messages, 10)):
                    key = f"msg_{rec.session_id}_{i}:req_{i}"
                    rows.append((key, key_hash(key), rec.session_id, 0,
                                 1000 + i, rec.source_path or "", i * 1000, rec.started_at or "",
                                 usage.model, 10 + i, 100 + i, 0, 1000, 0.001))  # fmt: skip
            with store.transaction():
                store.write_jobs((d, True) for d in details)
                store.conn.executemany(
                    "INSERT INTO usage_keys (key, key_hash, session_id, sidechain, total, path, "
                    "offset, at, model, input_tokens, output_tokens, cache_creation_tokens, "
                    "cache_read_tokens, cost_usd) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
            keys += len(rows)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return time.perf_counter() - began, keys


def rewrite(db: Path, jobs: int, count: int, seed: int = 12) -> None:
    """Rewrite `count` of the vault's jobs (new figures), as new lines in them would."""
    rng = random.Random(seed)
    store = Store(open_writer(db, synchronous="NORMAL"))
    try:
        chosen = rng.sample(range(jobs), count)
        store.write_jobs((synth.detail(n, rng), True) for n in chosen)
    finally:
        store.close()


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    walls = []
    value = None
    for _ in range(repeat):
        began = time.perf_counter()
        value = fn()
        walls.append(time.perf_counter() - began)
    return statistics.median(walls), value


def _clone(conn: Any, machine: str, copies: int) -> None:
    """Copy the pushed machine's jobs and hourly rows to `copies` more machines (new ids)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO jobvault.machines (machine_id, name, acked_seq, last_push_at) "
            "SELECT 'bench-' || i, 'bench machine ' || i, 0, now() "
            "FROM generate_series(1, %s) i",
            (copies,),
        )
        conn.execute(
            """
            INSERT INTO jobvault.jobs (machine_id, job_id, source, session_id, project, version,
                model, models, status, started_at, ended_at, duration_ms, input_tokens,
                output_tokens, cache_creation_tokens, cache_read_tokens, reasoning_tokens,
                cost_usd, pricing_version, tool_call_count, failed_tool_calls, primary_tool,
                message_count, user_message_count, subagent_count, record, local_seq)
            SELECT 'bench-' || i, j.job_id || '-' || i, j.source, j.session_id || '-' || i,
                j.project, j.version, j.model, j.models, j.status, j.started_at, j.ended_at,
                j.duration_ms, j.input_tokens, j.output_tokens, j.cache_creation_tokens,
                j.cache_read_tokens, j.reasoning_tokens, j.cost_usd, j.pricing_version,
                j.tool_call_count, j.failed_tool_calls, j.primary_tool, j.message_count,
                j.user_message_count, j.subagent_count, '{}'::jsonb, j.local_seq
            FROM jobvault.jobs j CROSS JOIN generate_series(1, %s) i WHERE j.machine_id = %s
            """,
            (copies, machine),
        )
        conn.execute(
            "INSERT INTO jobvault.job_usage SELECT 'bench-' || i, u.job_id || '-' || i, u.hour, "
            "u.model, u.messages, u.input_tokens, u.output_tokens, u.cache_creation_tokens, "
            "u.cache_read_tokens, u.reasoning_tokens, u.cost_usd, u.first_at, u.last_at "
            "FROM jobvault.job_usage u CROSS JOIN generate_series(1, %s) i "
            "WHERE u.machine_id = %s",
            (copies, machine),
        )
        # 1 % of the jobs of one copy hold the same messages as the original: shared keys.
        conn.execute(
            "INSERT INTO jobvault.usage_keys SELECT 'bench-1', k.job_id || '-1', k.source, k.key, "
            "k.sidechain, k.total, k.hour, k.model, k.input_tokens, k.output_tokens, "
            "k.cache_creation_tokens, k.cache_read_tokens, k.cost_usd "
            "FROM jobvault.usage_keys k WHERE k.machine_id = %s AND hashtext(k.job_id) %% 100 = 0",
            (machine,),
        )
        conn.execute(
            "INSERT INTO jobvault.shared_keys SELECT DISTINCT key FROM jobvault.usage_keys "
            "WHERE machine_id = 'bench-1' ON CONFLICT DO NOTHING"
        )
        conn.execute("TRUNCATE jobvault.usage_hourly")
        conn.execute(
            "INSERT INTO jobvault.usage_hourly SELECT u.hour, j.source, u.model, "
            "SUM(u.messages), SUM(u.input_tokens), SUM(u.output_tokens), "
            "SUM(u.cache_creation_tokens), SUM(u.cache_read_tokens), SUM(u.reasoning_tokens), "
            "SUM(u.cost_usd) FROM jobvault.job_usage u JOIN jobvault.jobs j "
            "USING (machine_id, job_id) WHERE u.hour IS NOT NULL GROUP BY 1, 2, 3"
        )
    conn.execute("ANALYZE")


def measure(
    work: Path, quick: bool = False, sizes: dict[str, int] | None = None, keep: bool = False
) -> dict[str, Any]:
    """Run the team benchmark; {"skipped": reason} when no PostgreSQL server can be had."""
    from tests.pg import Unavailable, remove_server, start_server

    plan = sizes or (QUICK if quick else FULL)
    try:
        server = start_server(durable=True, shared_buffers="1GB", work_mem="64MB",
                              maintenance_work_mem="512MB", max_wal_size="4GB")  # fmt: skip
    except Unavailable as exc:
        return {"skipped": str(exc)}
    import jobvault
    from jobvault.team import connect, reports, schema
    from jobvault.team.sync import Settings, push
    from jobvault.team.vault import Vault

    res: dict[str, Any] = {**plan}
    try:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            db = Path(tmp) / "vault.db"
            res["build_seconds"], res["message_rows"] = build_vault(db, plan["jobs"])
            url = server.url()
            settings = Settings(name="bench", client_version=jobvault.__version__)
            with connect.connect(url) as conn:
                schema.migrate(conn)
                with Vault(db) as vault:
                    began = time.perf_counter()
                    first = push(vault, conn, settings)
                    res["first_push"] = {"seconds": time.perf_counter() - began,
                                         "jobs": first.jobs, "rows": first.rows,
                                         "batches": first.batches}  # fmt: skip
                    began = time.perf_counter()
                    again = push(vault, conn, settings)
                    res["noop_push_seconds"] = time.perf_counter() - began
                    assert again.jobs == 0
                rewrite(db, plan["jobs"], plan["changed"])
                with Vault(db) as vault:
                    began = time.perf_counter()
                    changed = push(vault, conn, settings)
                    seconds = time.perf_counter() - began
                    res["incremental_push"] = {"seconds": seconds, "jobs": changed.jobs,
                                               "rows": changed.rows}  # fmt: skip
                    machine = vault.machine_id
                began = time.perf_counter()
                _clone(conn, machine, plan["machines"] - 1)
                res["clone_seconds"] = time.perf_counter() - began
                counts = conn.execute(
                    "SELECT (SELECT count(*) FROM jobvault.machines), "
                    "(SELECT count(*) FROM jobvault.jobs), "
                    "(SELECT count(*) FROM jobvault.job_usage), "
                    "(SELECT count(*) FROM jobvault.usage_keys), "
                    "(SELECT count(*) FROM jobvault.shared_keys), "
                    "(SELECT count(*) FROM jobvault.usage_hourly), "
                    "pg_database_size(current_database())"
                ).fetchone()
                assert counts is not None
                res["table_bytes"] = dict(
                    conn.execute(
                        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'jobvault' AND c.relkind = 'r'"
                    ).fetchall()
                )
                res["team"] = dict(zip(("machines", "jobs", "usage_rows", "message_rows",
                                        "shared_messages", "rollup_rows", "db_bytes"),
                                       counts, strict=True))  # fmt: skip
                since = "2025-11-01T00:00:00.000Z"
                cases: list[tuple[str, Callable[[], Any]]] = [
                    ("team `stats daily` (UTC, no top)", lambda: reports.usage(conn, "day")),
                    ("team `stats daily` (Europe/Paris, top 5 — the CLI's default)",
                     lambda: reports.usage(conn, "day", timezone="Europe/Paris", top=5)),
                    ("team `stats daily --since 2025-11-01` (top 5)",
                     lambda: reports.usage(conn, "day", since=since, top=5)),
                    ("team `stats monthly --project …` (rows, not the rollup)",
                     lambda: reports.usage(conn, "month", filters={"project": "-home-dev-p7"})),
                    ("team `stats daily --machine …` (rows)",
                     lambda: reports.usage(conn, "day", filters={"machine": "bench-1"})),
                    ("team `stats models`", lambda: reports.usage(conn, "model")),
                    ("team `stats machines`", lambda: reports.usage(conn, "machine")),
                    ("team `jobs` (first page of 50)",
                     lambda: reports.page_jobs(conn, {}, "-started_at", 50)),
                ]  # fmt: skip
                res["reports"] = []
                for name, fn in cases:
                    seconds, value = timed(fn)
                    size = len(value.get("rows") or value.get("jobs") or [])
                    res["reports"].append({"name": name, "seconds": seconds, "rows": size})
    finally:
        if keep:  # for looking at plans: the server stays up until it is stopped by hand
            print(f"kept: {server.url()} (data in {server.base})")
        else:
            remove_server(server)
    return res


def rows(res: dict[str, Any]) -> list[str]:
    """The markdown lines of the figures."""
    if "skipped" in res:
        return [f"Skipped: {res['skipped']}."]
    first, inc, team = res["first_push"], res["incremental_push"], res["team"]
    sizes = res.get("table_bytes") or {}
    per_row = (
        [
            "Bytes per row, indexes included: "
            + ", ".join(
                f"`{table}` {sizes[table] / count:,.0f}"
                for table, count in (("jobs", team["jobs"]), ("job_usage", team["usage_rows"]),
                                     ("usage_keys", team["message_rows"]))
                if count and table in sizes
            )
            + " (the copied machines' records hold no text).",
            "",
        ]
        if sizes
        else []
    )  # fmt: skip
    return [
        f"A vault of {res['jobs']:,} jobs ({res['message_rows']:,} message rows; written in "
        f"{res['build_seconds']:.0f} s) pushed to a local PostgreSQL server (fsync and "
        "synchronous commit on, shared_buffers 1 GB), then copied to "
        f"{team['machines']} machines: {team['jobs']:,} jobs, **{team['usage_rows']:,} hourly "
        f"usage rows**, {team['message_rows']:,} message rows ({team['shared_messages']:,} "
        f"shared by two machines), {team['rollup_rows']:,} rollup rows, "
        f"{team['db_bytes'] / 1e9:.1f} GB.",
        "",
        *per_row,
        "| what | seconds | |",
        "|---|---:|---|",
        f"| first push of {first['jobs']:,} jobs | {first['seconds']:.1f} | "
        f"{first['rows']:,} rows in {first['batches']} transactions, "
        f"{first['rows'] / first['seconds']:,.0f} rows/s |",
        f"| push again, nothing changed | {res['noop_push_seconds']:.3f} | |",
        f"| incremental push of {inc['jobs']} changed jobs | {inc['seconds']:.3f} | "
        f"{inc['rows']:,} rows |",
        *(
            f"| {r['name']} over {team['usage_rows']:,} hourly rows, median of 3 | "
            f"{r['seconds']:.3f} | {r['rows']} rows |"
            for r in res["reports"]
        ),
    ]


def write_doc(path: Path, res: dict[str, Any], stamp: str) -> None:
    """Replace the team section of `path` (appending it the first time)."""
    section = "\n".join([BEGIN, "", stamp, "", *rows(res), "", END])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## The team vault\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=FULL["jobs"])
    parser.add_argument("--machines", type=int, default=FULL["machines"])
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    parser.add_argument("--doc", type=Path, help="write the figures into this document")
    parser.add_argument("--keep", action="store_true", help="leave the server running")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    res = measure(args.work.resolve(), sizes={"jobs": args.jobs, "machines": args.machines,
                                              "changed": 100}, keep=args.keep)  # fmt: skip
    print("\n".join(rows(res)))
    if args.doc is not None:
        stamp = (f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
                 f"`python -m benchmarks.bench_team --jobs {args.jobs} --machines "
                 f"{args.machines}` ({time.monotonic() - began:.0f} s in all).")  # fmt: skip
        write_doc(args.doc, res, stamp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
