"""A live job rewritten by what changed leaves the database exactly as a whole rewrite does.

Two engines read the same files step by step into two databases: one writes each live record
by its differences (store/increments.py), the other is made to write every record whole. After
every step — new lines, a tool result for an earlier call, a subagent, an edit, a new hour, a
resume after finalization — every table a record touches must hold the same rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.helpers import SESSION, assistant, dumps, session_lines, user

TABLES = {
    "jobs": "SELECT id, session_id, status, model, models, input_tokens, output_tokens, "
    "cache_creation_tokens, cache_read_tokens, cost_usd, tool_call_count, failed_tool_calls, "
    "message_count, user_message_count, subagent_count, prompt, summary, title, record "
    "FROM jobs ORDER BY id",
    "tool_calls": "SELECT * FROM tool_calls ORDER BY job_id, seq",
    "subagents": "SELECT * FROM subagents ORDER BY job_id, agent_id",
    "files_modified": "SELECT * FROM files_modified ORDER BY job_id, path, tool",
    "job_usage": "SELECT * FROM job_usage ORDER BY job_id, hour, model",
    "daily_metrics": "SELECT * FROM daily_metrics ORDER BY day, source, model",
    # (not `id`: a row's place in the table is not part of what it says)
    "usage_keys": "SELECT key, key_hash, session_id, sidechain, total, path, offset, at, model, "
    "input_tokens, output_tokens, cache_creation_tokens, cache_read_tokens, cost_usd "
    "FROM usage_keys ORDER BY key, session_id",
    "search": "SELECT d.job_id, f.title, f.prompt, f.summary, f.body FROM search_docs d "
    "JOIN search_fts f ON f.rowid = d.id ORDER BY d.job_id",
    "job_rate_limits": "SELECT * FROM job_rate_limits ORDER BY job_id, at, window",
}


class _Forgetful(dict[str, Any]):
    """A state map that never keeps anything: every record is written whole."""

    def __setitem__(self, key: str, value: Any) -> None:
        return None

    def setdefault(self, key: str, default: Any = None) -> Any:
        return default


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        out = {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}
    finally:
        conn.close()
    # Each vault has its own machine id, which the record carries.
    out["jobs"] = [(*row[:-1], {**json.loads(row[-1]), "machine_id": None}) for row in out["jobs"]]
    return out


def _edit(second: int, tool_id: str, path: str) -> bytes:
    return dumps(
        assistant(
            f"msg_edit_{second}", second, out=40,
            content=[{"type": "tool_use", "id": tool_id, "name": "Edit",
                      "input": {"file_path": path, "old_string": "a", "new_string": "b"}}],
        )
    )  # fmt: skip


def _result(second: int, tool_id: str, *, error: bool = False) -> bytes:
    obj = user("", second, uuid=f"res{second}")
    obj["message"] = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "done",
                     "is_error": error}],
    }  # fmt: skip
    return dumps(obj)


def test_live_records_written_by_difference_equal_whole_rewrites(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    project = root / "-work-app"
    project.mkdir(parents=True)
    main = project / f"{SESSION}.jsonl"
    agent = project / SESSION / "subagents" / "agent-a1b2.jsonl"
    engines = []
    for name, forget in (("diff", False), ("whole", True)):
        db = tmp_path / name / "jobvault.db"
        store = Store(open_writer(db))
        engine = Engine(Config(watch=(root,), db=db), store, job_write_interval=0)
        if forget:
            engine.writer.written = _Forgetful()
            engine.writer.settled = _Forgetful()
        engines.append((engine, store, db))
    steps: list[list[tuple[Path, bytes]]] = [
        [(main, b"".join(session_lines(3)))],
        [(main, _edit(100, "toolu_e1", "/work/app/x.py"))],  # a call without its result yet
        [(main, dumps(assistant("msg_more", 101, out=7, text="more")))],
        [(main, _result(102, "toolu_e1", error=True))],  # an earlier call's row changes
        [(main, _edit(103, "toolu_e2", "/work/app/y.py")), (main, _result(104, "toolu_e2"))],
        [(agent, b"".join(session_lines(2, base=200)).replace(b'"isSidechain":false',
                                                             b'"isSidechain":true'))],
        [(main, dumps(assistant("msg_late", 3700, out=9, text="an hour later")))],
        [(main, dumps(user("a second prompt", 3701)))],
        [(main, dumps({"type": "ai-title", "aiTitle": "Fix the parser", "sessionId": SESSION}))],
    ]  # fmt: skip
    for number, step in enumerate(steps):
        for path, data in step:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as fh:
                fh.write(data)
        for engine, _store, _db in engines:
            engine.rescan([root])
            engine.flush()  # every record written now, live
        diff, whole = (_tables(db) for _e, _s, db in engines)
        assert diff["jobs"] and diff["jobs"][0][2] == "active"
        for table in TABLES:
            assert diff[table] == whole[table], (number, table)
        if number == 4:  # finalized, then resumed: the state starts over
            for engine, _store, _db in engines:
                engine.finalize(SESSION)
    for engine, store, _db in engines:
        engine.finalize_all()
        engine.close()
        store.close()
    diff, whole = (_tables(db) for _e, _s, db in engines)
    assert diff == whole


class _Live:
    """One live session read by an engine that writes every record at once."""

    def __init__(self, tmp_path: Path, lines: int) -> None:
        root = tmp_path / "projects"
        (root / "-p").mkdir(parents=True)
        self.root, self.path = root, root / "-p" / f"{SESSION}.jsonl"
        self.path.write_bytes(b"".join(session_lines(lines)))
        self.db = tmp_path / "v" / "jobvault.db"
        self.store = Store(open_writer(self.db))
        self.engine = Engine(Config(watch=(root,), db=self.db), self.store, job_write_interval=0)
        self.engine.rescan([root])  # first written whole, its text with it

    def append(self, msg_id: str, second: int, text: str, *, flush: bool = True) -> None:
        with self.path.open("ab") as fh:
            fh.write(dumps(assistant(msg_id, second, out=3, text=text)))
        self.engine.rescan([self.root])
        if flush:
            self.engine.flush()

    def traced(self, msg_id: str, second: int, text: str) -> list[str]:
        """The statements an appended answer's round runs (flushed)."""
        changes: list[str] = []
        self.store.conn.set_trace_callback(changes.append)
        try:
            self.append(msg_id, second, text)
        finally:
            self.store.conn.set_trace_callback(None)
        return changes

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def found(self, word: str) -> list[str]:
        return [r[0] for r in self.rows(
            "SELECT d.job_id FROM search_fts f JOIN search_docs d ON d.id = f.rowid "
            "WHERE search_fts MATCH ?", word,
        )]  # fmt: skip

    def messages(self) -> int:
        return int(self.rows("SELECT message_count FROM jobs")[0][0])

    def close(self) -> None:
        self.engine.close()
        self.store.close()


@pytest.mark.parametrize("lines", [50, 400])
def test_a_live_write_touches_only_what_changed(tmp_path: Path, lines: int) -> None:
    """Appending one answer to a long live session rewrites its row, not its tool calls."""
    live = _Live(tmp_path, lines)
    live.engine.flush()
    changes = live.traced("msg_tail", 9000, "one more answer")
    inserts = [s for s in changes if s.lstrip().upper().startswith("INSERT INTO TOOL_CALLS")]
    deletes = [s for s in changes if "DELETE FROM jobs" in s]
    assert not deletes, "the job row is updated in place"
    assert not inserts, "no tool call changed, none was written"
    live.close()


def test_a_live_sessions_search_text_is_paced_and_catches_up_without_new_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record follows every line; the indexed text at most every SEARCH_PACE seconds,
    and a text held back is indexed when its pace is up (no further line needed) or at a
    flush."""
    monkeypatch.setattr("jobvault.ingest.book.SEARCH_PACE", 0.5)
    live = _Live(tmp_path, 3)
    job = f"claude:{SESSION}"
    before = live.messages()
    assert live.found("prompt") == [job]
    live.append("msg_z", 500, "zebracrossing", flush=False)
    assert live.messages() == before + 1, "the record follows the line at once"
    assert live.found("zebracrossing") == [], "its text waits for the pace"
    wait = live.engine.write_pending()
    assert wait is not None and 0 < wait <= 0.5, "the daemon is told when the text is due"
    time.sleep(wait + 0.05)
    assert live.engine.write_pending() is None, "nothing waits once the text is indexed"
    assert live.found("zebracrossing") == [job]
    # Held back again, then flushed (as at shutdown): indexed at once.
    live.append("msg_y", 501, "yellowsubmarine", flush=False)
    assert live.found("yellowsubmarine") == []
    live.engine.flush()
    assert live.found("yellowsubmarine") == [job]
    live.close()


def test_a_live_write_updates_only_the_job_columns_that_changed(tmp_path: Path) -> None:
    """An appended line's UPDATE names neither the start, the project nor the session (each
    named column rewrites its indexes); a job row deleted meanwhile is inserted again."""
    live = _Live(tmp_path, 3)
    live.engine.flush()
    changes = live.traced("msg_tail", 9000, "one more answer")
    updates = [s for s in changes if s.lstrip().upper().startswith("UPDATE JOBS SET")]
    for column in ("started_at", "project", "session_id", "source"):
        assert all(f"{column} =" not in s for s in updates), (column, updates)
    # (one statement: the trace repeats it for each trigger it fires)
    assert len(set(updates)) == 1 and "message_count =" in updates[0], updates
    messages = live.messages()
    live.store.conn.execute("DELETE FROM jobs")  # (gone under the writer: not in its state)
    live.store.conn.commit()
    live.append("msg_tail2", 9001, "and another")
    assert live.messages() == messages + 1
    live.close()


def test_a_live_build_folds_only_the_new_copies_and_equals_a_fresh_one() -> None:
    """`ClaudeJob.build` after each line keeps its fold of the message copies and folds only
    those appended since; a copy replaced before the end (a longer streamed copy), other
    exclusions or a spilled session fold all again. Every build equals that of an
    accumulator fed the same lines at once, to the last bit of every cost."""
    import orjson

    from jobvault.sources import LineContext
    from jobvault.sources.claude import ClaudeJob

    ctx = LineContext(1, "main", None, None, "-work-app", f"/p/{SESSION}.jsonl")
    lines: list[bytes] = []
    for i in range(40):
        lines.append(dumps(user(f"prompt {i}", 3 * i)))
        model = "claude-opus-4-1-20250805" if i % 3 else "claude-sonnet-4-20250514"
        lines.append(dumps(assistant(f"m{i}", 3 * i + 1, inp=7 + i, out=13 * i, read=i,
                                     model=model)))  # fmt: skip
    # A longer copy of an early message, later in the file: it replaces one before the end.
    lines.insert(60, dumps(assistant("m3", 90, inp=10, out=999)))

    def fresh(count: int, excluded: frozenset[str] = frozenset()) -> Any:
        acc = ClaudeJob(SESSION)
        offset = 0
        for raw in lines[:count]:
            acc.feed(orjson.loads(raw), ctx, offset)
            offset += len(raw)
        return acc.build(finalized=False, machine_id=None, excluded_keys=excluded)

    live = ClaudeJob(SESSION)
    offset = 0
    for count, raw in enumerate(lines, 1):
        live.feed(orjson.loads(raw), ctx, offset)
        offset += len(raw)
        excluded = frozenset({"m5:req_m5"}) if count % 7 == 0 else frozenset()
        built = live.build(finalized=False, machine_id=None, excluded_keys=excluded)
        assert built == fresh(count, excluded), count
        if count == 50 and not live.spilled:  # (JOBVAULT_TEST_SPILL: all are spilled)
            kept = live._kept_fold
            assert kept is not None and len(kept[1]) == 25  # (the copies folded so far)
    assert built.record.output_tokens == sum(13 * i for i in range(40)) - 13 * 3 + 999


def test_no_fold_is_kept_for_a_final_build_or_a_spilled_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kept fold holds a list of every copy: a spilled session (whose copies are on disk
    because memory is short) and a final build (the last one) keep none; a live build does."""
    import orjson

    from jobvault.sources import LineContext, spill
    from jobvault.sources.claude import ClaudeJob

    ctx = LineContext(1, "main", None, None, "-work-app", f"/p/{SESSION}.jsonl")

    def fed() -> ClaudeJob:
        acc = ClaudeJob(SESSION)
        offset = 0
        for raw in session_lines(30):
            acc.feed(orjson.loads(raw), ctx, offset)
            offset += len(raw)
        return acc

    live = fed()
    before = live.build(finalized=False, machine_id=None)
    assert (live._kept_fold is not None) is not live.spilled  # (JOBVAULT_TEST_SPILL)
    final = live.build(finalized=True, machine_id=None)
    assert live._kept_fold is None and final.record.output_tokens == before.record.output_tokens
    monkeypatch.setattr(spill, "SPILL_AFTER", 0)
    monkeypatch.setattr(spill, "FLUSH_EVERY", 3)
    spilled = fed()
    assert spilled.spilled
    built = spilled.build(finalized=False, machine_id=None)
    assert spilled._kept_fold is None
    assert built.record.output_tokens == before.record.output_tokens
