"""Very long sessions keep their per-message state in a scratch file: same records, less memory."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from jobvault.cli import main
from jobvault.sources import previews, spill
from jobvault.sources.spill import Codec, Scratch, SpillMap
from tests.helpers import session_lines

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TABLES = {
    "jobs": "id, status, started_at, ended_at, duration_ms, prompt, summary, model, models, "
    "input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_usd, "
    "tool_call_count, failed_tool_calls, primary_tool, message_count, user_message_count, "
    "subagent_count, context_window, context_used_pct",
    "tool_calls": "job_id, seq, tool_use_id, name, agent_id, is_error, timestamp, "
    "input_preview, output_preview",
    "subagents": "job_id, agent_id, agent_type, description, layout, message_count, "
    "tool_call_count, input_tokens, output_tokens, cost_usd",
    "files_modified": "job_id, path, tool, count",
    "job_usage": "job_id, hour, model, messages, input_tokens, output_tokens, "
    "cache_creation_tokens, cache_read_tokens, cost_usd, first_at, last_at",
    "usage_keys": "key, session_id, sidechain, total, path, offset",
}


def _import(tmp_path: Path, name: str, roots: list[Path]) -> dict[str, list[Any]]:
    db = tmp_path / name / "jobvault.db"
    args = ["import", *map(str, roots), "--db", str(db), "--no-progress", "--json"]
    assert main(args) == 0
    conn = sqlite3.connect(db)
    try:
        return {
            table: conn.execute(f"SELECT {cols} FROM {table} ORDER BY {cols}").fetchall()
            for table, cols in TABLES.items()
        }
    finally:
        conn.close()


def _fixture_roots(tmp_path: Path) -> list[Path]:
    root = tmp_path / "agents"
    shutil.copytree(FIXTURES / "claude" / "projects", root / "claude" / "projects")
    shutil.copytree(FIXTURES / "codex" / "home", root / "codex")
    # A long generated session too, so that merges of batches into the file happen.
    long = root / "claude" / "projects" / "-long" / "long-session.jsonl"
    long.parent.mkdir(parents=True)
    long.write_bytes(b"".join(session_lines(300, session="long-session")))
    return [root / "claude" / "projects", root / "codex"]


def test_spilled_sessions_give_the_same_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobvault.ingest import workers

    # The scratch files are counted in this process: read every session here.
    monkeypatch.setattr(workers, "MIN_COLD_BYTES", 1 << 62)
    roots = _fixture_roots(tmp_path)
    in_memory = _import(tmp_path, "memory", roots)
    made: list[Scratch] = []
    original = Scratch.__init__

    def counting_init(self: Scratch) -> None:
        original(self)
        made.append(self)

    monkeypatch.setattr(Scratch, "__init__", counting_init)
    monkeypatch.setattr(spill, "SPILL_AFTER", 0)
    monkeypatch.setattr(spill, "FLUSH_EVERY", 3)
    monkeypatch.setattr(previews, "MEMORY_BUDGET", 0)
    spilled = _import(tmp_path, "spilled", roots)
    assert len(made) >= 5, "every Claude session went to a scratch file"
    beside_db = str(tmp_path / "spilled" / "jobvault.db-spill-")
    assert all(s.path.startswith(beside_db) for s in made), "private, beside the database"
    assert all(len(rows) for table, rows in in_memory.items() if table != "usage_keys")
    for table in TABLES:
        assert spilled[table] == in_memory[table], table
    made.clear()  # the last references: the scratch files go with them
    leftovers = list((tmp_path / "spilled").glob("*-spill-*"))
    assert leftovers == [], "scratch files are deleted with their session"


def test_spill_map_keeps_the_preferred_copy_across_merges(tmp_path: Path) -> None:
    spill.set_spill_dir(tmp_path)
    try:
        codec: Codec[tuple[int, str]] = Codec(repr_pack, repr_unpack)
        order = lambda v: ("", 0, v[0])  # noqa: E731
        memory = SpillMap(codec, order, lambda new, old: new[0] > old[0])
        disk = SpillMap(codec, order, lambda new, old: new[0] > old[0])
        scratch = Scratch()
        disk.spill(scratch)
        offers = [(f"k{(i * 7) % 50:03d}", (i, f"v{i}")) for i in range(400)]
        for i, (key, value) in enumerate(offers):
            memory.offer(key, value)
            disk.offer(key, value)
            if i % 37 == 0:
                assert disk.get(key) == memory.get(key)
        assert len(disk) == len(memory) == 50
        assert list(disk.sorted_items()) == list(memory.sorted_items())
        assert list(spill.ordered([disk])) == list(spill.ordered([memory]))
        assert disk.get("absent") is None
        path = Path(scratch.path)
        assert path.exists() and path.parent == tmp_path
        scratch.close()
        assert not path.exists()
    finally:
        spill.set_spill_dir(None)


def test_stale_scratch_files_are_removed_at_start(tmp_path: Path) -> None:
    db = tmp_path / "vault" / "jobvault.db"
    db.parent.mkdir()
    stale = db.parent / f"{spill.prefix_of(db.name)}killed.db"
    stale.write_bytes(b"left by a kill -9")
    # Another database in the same directory: its writer may be running, its files stay.
    other = db.parent / f"{spill.prefix_of('other.db')}in-use.db"
    other.write_bytes(b"another writer's")
    assert main(["import", str(tmp_path / "vault"), "--db", str(db), "--no-progress"]) == 0
    assert not stale.exists()
    assert other.exists()
    assert db.exists()


def repr_pack(value: tuple[int, str]) -> bytes:
    return repr(value).encode()


def repr_unpack(data: bytes) -> tuple[int, str]:
    number, text = data.decode().strip("()").split(", ")
    return int(number), text.strip("'")


def test_a_session_of_tool_results_alone_spills_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded for any line mix, not only for sessions with usage lines."""
    from jobvault.sources.base import LineContext
    from jobvault.sources.claude import ClaudeJob

    monkeypatch.setattr(spill, "SPILL_AFTER", 50)
    spill.set_spill_dir(tmp_path)
    try:
        job = ClaudeJob("s")
        ctx = LineContext(1, "main", None, None, "p", "/p/s.jsonl")
        for i in range(200):
            block = {"type": "tool_result", "tool_use_id": f"t{i}", "content": "ok"}
            line = {"type": "user", "timestamp": f"2025-01-01T00:00:{i % 60:02d}Z",
                    "message": {"role": "user", "content": [block]}}  # fmt: skip
            job.feed(line, ctx, i * 100)
        assert job._scratch is not None, "spilled without a single usage line"
        assert len(job.tool_results) == 200
    finally:
        spill.set_spill_dir(None)


def _feed_tool_calls(job: Any, start: int, end: int) -> Any:
    """Feed assistant lines `start` to `end` (one tool call and one usage each) to `job`."""
    from jobvault.sources.base import LineContext

    ctx = LineContext(1, "main", None, None, "p", "/p/s.jsonl")
    for i in range(start, end):
        use = {"type": "tool_use", "id": f"t{i:04d}", "name": "Bash", "input": {"n": i}}
        job.feed(
            {"type": "assistant", "timestamp": f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
             "message": {"id": f"m{i}", "model": "claude-sonnet-4-5", "content": [use],
                         "usage": {"input_tokens": 1, "output_tokens": 2}}},
            ctx, i * 100,
        )  # fmt: skip
    return job


def _new_job() -> Any:
    from jobvault.sources.claude import ClaudeJob

    return ClaudeJob("s")


def test_no_room_for_a_scratch_file_keeps_the_state_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill, "SPILL_AFTER", 20)
    spill.set_spill_dir(tmp_path / "missing")  # cannot be created there
    try:
        job = _feed_tool_calls(_new_job(), 0, 100)
        assert job._scratch is None
        detail = job.build(finalized=True, machine_id=None)
        assert len(detail.tool_calls) == 100 and detail.record.output_tokens == 200
    finally:
        spill.set_spill_dir(None)


def test_a_full_scratch_file_fails_the_build_until_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobvault.errors import StoreError

    monkeypatch.setattr(spill, "SPILL_AFTER", 20)
    monkeypatch.setattr(spill, "FLUSH_EVERY", 10)
    spill.set_spill_dir(tmp_path)
    try:
        expected = _feed_tool_calls(_new_job(), 0, 300).build(finalized=True, machine_id=None)
        job = _feed_tool_calls(_new_job(), 0, 30)
        assert job._scratch is not None
        pages = job._scratch.conn.execute("PRAGMA page_count").fetchone()[0]
        job._scratch.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        _feed_tool_calls(job, 30, 300)  # merges fail: the entries stay in memory
        with pytest.raises(StoreError):
            job.build(finalized=True, machine_id=None)
        job._scratch.conn.execute("PRAGMA max_page_count = 1000000")  # room again
        detail = job.build(finalized=True, machine_id=None)
        assert detail.record == expected.record
        assert list(detail.tool_calls) == list(expected.tool_calls)
    finally:
        spill.set_spill_dir(None)


def test_status_counts_the_spilled_sessions(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobvault.config import Config
    from jobvault.ingest.engine import Engine
    from jobvault.store.db import open_writer
    from jobvault.store.writer import Store

    monkeypatch.setattr(spill, "SPILL_AFTER", 20)
    root = tmp_path / "projects"
    (root / "-p").mkdir(parents=True)
    (root / "-p" / "long-session.jsonl").write_bytes(
        b"".join(session_lines(40, session="long-session"))
    )
    (root / "-p" / "short-session.jsonl").write_bytes(
        b"".join(session_lines(2, session="short-session"))
    )
    store = Store(open_writer(db))
    engine = Engine(Config(watch=(root,), db=db), store)
    try:
        engine.poll_all([root])
        status = engine.snapshot()
        assert status["sessions_in_memory"] == 2
        assert status["sessions_spilled"] == 1
        engine.finalize_all()
        assert engine.snapshot()["sessions_spilled"] == 0
        assert not list(db.parent.glob("*-spill-*")), "finalized: its scratch file is gone"
    finally:
        engine.close()
        store.close()


def test_import_holds_few_sessions_whatever_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`import` commits and finalizes sessions after every IMPORT_GROUP_BYTES of transcripts
    read, so many large sessions are never all in memory at once (64 of 8 MB each peaked at
    158 MB before)."""
    from jobvault.ingest import engine as engine_mod

    root = tmp_path / "projects" / "-p"
    root.mkdir(parents=True)
    sizes = []
    for i in range(12):
        path = root / f"{i:08d}-0000-4000-8000-000000000000.jsonl"
        path.write_bytes(b"".join(session_lines(30, session=path.stem)))
        sizes.append(path.stat().st_size)
    monkeypatch.setattr(engine_mod, "IMPORT_GROUP_BYTES", 2 * max(sizes))
    from jobvault.ingest import writing

    held: list[int] = []
    commit = writing.RoundWriter.commit

    def counting(self: Any, rnd: Any) -> None:
        held.append(sum(1 for job in self.book.jobs.values() if job.acc is not None))
        commit(self, rnd)

    monkeypatch.setattr(writing.RoundWriter, "commit", counting)
    db = tmp_path / "vault" / "jobvault.db"
    assert main(["import", str(tmp_path / "projects"), "--db", str(db), "--no-progress"]) == 0
    assert held and max(held) <= 3, held
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 12
    conn.close()
