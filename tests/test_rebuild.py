"""Job records are a pure function of the archive: rebuild reproduces them exactly."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobvault.config import Config
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.helpers import SESSION, assistant, dumps, run, run_json, session_lines, user

OTHER = "99999999-2222-4333-8444-555555555555"


def _records(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, record FROM jobs"))
    finally:
        conn.close()


def _children(db: Path) -> list[list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        return [
            conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()
            for table in ("tool_calls", "subagents", "files_modified", "job_usage")
        ]
    finally:
        conn.close()


def _daily(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """(the incrementally kept daily metrics, a recomputation from job_usage)."""
    conn = sqlite3.connect(db)
    try:
        kept = conn.execute(
            "SELECT day, source, model, messages, input_tokens, output_tokens, "
            "cache_creation_tokens, cache_read_tokens, ROUND(cost_usd, 6) FROM daily_metrics "
            "ORDER BY 1, 2, 3"
        ).fetchall()
        fresh = conn.execute(
            "SELECT substr(u.hour, 1, 10), j.source, u.model, SUM(u.messages), "
            "SUM(u.input_tokens), SUM(u.output_tokens), SUM(u.cache_creation_tokens), "
            "SUM(u.cache_read_tokens), ROUND(SUM(u.cost_usd), 6) FROM job_usage u "
            "JOIN jobs j ON j.id = u.job_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        return kept, fresh
    finally:
        conn.close()


def _rollups(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """(the trigger-kept hourly usage and status counters, a recomputation of both)."""
    conn = sqlite3.connect(db)
    try:
        kept = conn.execute(
            "SELECT hour, source, model, messages, input_tokens, output_tokens, "
            "cache_creation_tokens, cache_read_tokens, reasoning_tokens, ROUND(cost_usd, 6) "
            "FROM usage_hourly ORDER BY 1, 2, 3"
        ).fetchall()
        fresh = conn.execute(
            "SELECT u.hour, j.source, u.model, SUM(u.messages), SUM(u.input_tokens), "
            "SUM(u.output_tokens), SUM(u.cache_creation_tokens), SUM(u.cache_read_tokens), "
            "SUM(u.reasoning_tokens), ROUND(SUM(u.cost_usd), 6) FROM job_usage u "
            "JOIN jobs j ON j.id = u.job_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
        kept += conn.execute("SELECT * FROM status_counters").fetchall()
        fresh += conn.execute(
            "SELECT 1, (SELECT COUNT(*) FROM files), (SELECT TOTAL(state = 'active') FROM files), "
            "(SELECT TOTAL(line_count) FROM files), (SELECT COUNT(*) FROM bad_lines), "
            "(SELECT TOTAL(lost_bytes) FROM files), (SELECT COUNT(*) FROM chunks), "
            "(SELECT TOTAL(length) FROM chunks)"
        ).fetchall()
        return kept, fresh
    finally:
        conn.close()


def _indexed(db: Path) -> bool:
    """Every job has exactly one full-text document and no document outlives its job."""
    conn = sqlite3.connect(db)
    try:
        jobs = sorted(r[0] for r in conn.execute("SELECT id FROM jobs"))
        docs = sorted(r[0] for r in conn.execute("SELECT job_id FROM search_docs"))
        rows = conn.execute("SELECT COUNT(*) FROM search_fts").fetchone()[0]
        prompts = conn.execute(
            "SELECT COUNT(*) FROM search_fts f JOIN search_docs d ON d.id = f.rowid "
            "JOIN jobs j ON j.id = d.job_id WHERE f.prompt = COALESCE(j.prompt, '')"
        ).fetchone()[0]
        return bool(jobs) and jobs == docs and rows == len(jobs) == prompts
    finally:
        conn.close()


def _tree(tmp_path: Path) -> Path:
    project = tmp_path / "projects" / "-work-app"
    (project / SESSION / "subagents").mkdir(parents=True)
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(9)))
    (project / SESSION / "subagents" / "agent-s1.jsonl").write_bytes(
        dumps({**assistant("msg_sub", 5, out=7), "isSidechain": True, "agentId": "s1"})
    )
    # A resumed session repeating two of the first session's messages, then its own.
    first = session_lines(9)
    (project / f"{OTHER}.jsonl").write_bytes(
        first[1].replace(SESSION.encode(), OTHER.encode())
        + first[2].replace(SESSION.encode(), OTHER.encode())
        + dumps(user("resumed", 100, session=OTHER))
        + dumps(assistant("msg_new", 101, session=OTHER, inp=3, out=4))
    )
    return tmp_path / "projects"


def test_rebuild_reproduces_every_record(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path)
    assert run(capsys, "import", str(root), "--db", str(db), "--no-progress")[0] == 0
    before, children = _records(db), _children(db)
    assert len(before) == 2
    # The repeated message counts once, in the job holding its best copy (path order).
    first = run_json(capsys, "show", SESSION, "--db", str(db))
    other = run_json(capsys, "show", OTHER, "--db", str(db))
    assert SESSION < OTHER
    assert first["output_tokens"] == sum(50 + i for i in range(9)) + 7
    assert other["output_tokens"] == 4 and other["input_tokens"] == 3
    assert other["tool_call_count"] == 1  # the repeated tool call still happened there
    for path in root.rglob("*.jsonl"):
        path.unlink()  # rebuild needs nothing but the archive
    assert run(capsys, "rebuild", "--db", str(db), "--no-progress")[0] == 0
    assert _records(db) == before
    assert _children(db) == children
    kept, fresh = _daily(db)
    assert kept == fresh and kept
    kept, fresh = _rollups(db)
    assert kept == fresh and len(kept) > 1


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order=st.permutations(list(range(6))),
    seed=st.integers(0, 10_000),
    rebuild_after=st.sets(st.integers(0, 5), max_size=2),
)
def test_daily_metrics_equal_recomputation_in_any_order(
    tmp_path_factory: pytest.TempPathFactory, order: list[int], seed: int, rebuild_after: set[int]
) -> None:
    """Finalize, update and rebuild jobs in random order; daily metrics always match.

    So do the trigger-kept hourly usage rollup and the status counters (`m005_read_side`).

    The full-text index is checked alongside: exactly one document per job, whatever the
    order of writes, rewrites and rebuilds.
    """
    tmp = tmp_path_factory.mktemp("orders")
    root = tmp / "projects" / "-p"
    root.mkdir(parents=True)
    rng = random.Random(seed)
    sessions = [f"{i:08d}-2222-4333-8444-555555555555" for i in range(6)]
    plans = {
        s: session_lines(rng.randint(1, 6), session=s, base=3600 * i * 7)
        for i, s in enumerate(sessions)
    }
    db = tmp / "db.sqlite"
    store = Store(open_writer(db))
    engine = Engine(Config(watch=(root,), db=db), store, job_write_interval=0)
    for step, i in enumerate(order):
        session = sessions[i]
        path = root / f"{session}.jsonl"
        lines = plans[session]
        half = len(lines) // 2 if step % 2 else len(lines)
        with path.open("ab") as fh:
            fh.write(b"".join(lines[:half]))
        engine.poll([str(path)], [root])
        if step % 3 == 0:
            engine.finalize(session)
        if half < len(lines):  # an update after the first write (a resume)
            with path.open("ab") as fh:
                fh.write(b"".join(lines[half:]))
            engine.poll([str(path)], [root])
        if step in rebuild_after:
            engine.rebuild()  # mid-way: later appends resume rebuilt jobs
        kept, fresh = _daily(db)
        assert kept == fresh
        assert _indexed(db)
        kept, fresh = _rollups(db)
        assert kept == fresh
    engine.finalize_all()
    kept, fresh = _daily(db)
    assert kept == fresh
    engine.rebuild()
    assert _daily(db) == (kept, fresh)
    assert _indexed(db)
    kept, fresh = _rollups(db)
    assert kept == fresh
    engine.close()
    store.close()


def test_hourly_rollup_follows_live_writes(tmp_path: Path) -> None:
    """A live record written by what changed (rows replaced, added and removed), then
    written whole, then deleted: usage_hourly equals a recomputation at every step."""
    import dataclasses

    from benchmarks.synth import detail

    from jobvault.records import JobDetail, UsageRow

    store = Store(open_writer(tmp_path / "v.db"))
    base = detail(1, random.Random(3))
    job = dataclasses.replace(base, record=dataclasses.replace(base.record, status="active"))

    def usage(*rows: tuple[str, int]) -> JobDetail:
        return dataclasses.replace(
            job, usage=[UsageRow(hour, "m", n, n, n, 0, 0, 0, n / 100) for hour, n in rows]
        )

    states: dict[str, Any] = {}
    for step in (usage(("2025-01-01T10", 5), ("2025-01-01T11", 7)),
                 usage(("2025-01-01T10", 6), ("2025-01-01T12", 1)),  # changed, gone, new
                 usage(("2025-01-01T12", 2))):  # fmt: skip
        store.write_jobs([(step, False)], states)
        kept, fresh = _rollups(tmp_path / "v.db")
        assert kept == fresh and kept
    store.write_jobs([(usage(("2025-01-01T09", 3)), True)], states)  # finalized: written whole
    kept, fresh = _rollups(tmp_path / "v.db")
    assert kept == fresh
    store.delete_orphan_jobs([])
    kept, fresh = _rollups(tmp_path / "v.db")
    assert kept == fresh
    store.close()
