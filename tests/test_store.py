"""The store: private files, WAL, named migrations, and the generated schema document."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from jobvault.errors import StoreError
from jobvault.records import JobDetail, JobRecord, UsageCandidate, UsageRow
from jobvault.store import migrations
from jobvault.store.db import open_reader, open_writer
from jobvault.store.keys import key_hash
from jobvault.store.schema_doc import DESCRIPTIONS, render
from jobvault.store.writer import Batch, Chunk, Store, key_rows

ROOT = Path(__file__).resolve().parents[1]


def test_database_created_private_in_private_dir(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "jobvault.db"
    conn = open_writer(db)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    conn.execute("COMMIT")
    assert (os.stat(db.parent).st_mode & 0o777) == 0o700
    for name in ("jobvault.db", "jobvault.db-wal", "jobvault.db-shm"):
        assert (os.stat(db.parent / name).st_mode & 0o777) == 0o600, name
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "jobvault.db"
    open_writer(db).close()
    conn = open_writer(db)  # opening again applies nothing new
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in migrations.MIGRATIONS]
    assert migrations.migrate(conn) == []
    conn.close()


def test_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)

    def m900_broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half (x)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        migrations.migrate(conn, [migrations.m001_initial, m900_broken])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "jobs" in tables  # m001 committed in its own transaction
    assert "half" not in tables  # m900 rolled back whole
    assert migrations.applied(conn) == ["m001_initial"]
    conn.close()


def test_every_migration_upgrades_from_each_older_schema(tmp_path: Path) -> None:
    steps = migrations.MIGRATIONS
    for upto in range(len(steps) + 1):
        conn = sqlite3.connect(tmp_path / f"v{upto}.db", isolation_level=None)
        migrations.migrate(conn, steps[:upto])
        migrations.migrate(conn)
        assert migrations.applied(conn) == [m.__name__ for m in steps]
        conn.close()


def test_reader_is_read_only(tmp_path: Path) -> None:
    db = tmp_path / "jobvault.db"
    open_writer(db).close()
    conn = open_reader(db)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    conn.close()


def test_schema_doc_is_current() -> None:
    committed = (ROOT / "docs" / "schema.md").read_text()
    assert committed == render(), "docs/schema.md is stale: run `make schema-doc`"


def test_every_table_is_described() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrations.migrate(conn)
    tables = {
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        if not r[0].startswith("sqlite_")
    }
    conn.close()
    assert tables == set(DESCRIPTIONS)


def _file(store: Store, name: str) -> int:
    from jobvault.store.archive import FileRow

    file_id = store.max_file_id() + 1
    row = FileRow(
        file_id, "claude", f"/x/{name}", "/x", name, 0, 1, 2, 0, None, 0, 0, 0,
        False, False, "active", None, "main", None, 0, 0, 0,
    )  # fmt: skip
    store.commit(Batch(new_files=[row]))  # joins an open transaction
    return file_id


def test_chunks_compressed_on_the_packer_thread_round_trip(tmp_path: Path) -> None:
    store = Store(open_writer(tmp_path / "jv.db"))
    file_id = _file(store, "a.jsonl")
    data = b"".join(b'{"n": %d, "text": "%s"}\n' % (i, b"x" * (i % 97)) for i in range(5000))
    chunk = Chunk(file_id, 0, data, 5000)
    store.pack(chunk)
    assert chunk.packed is not None
    assert any(t.name.startswith("jobvault-zstd") for t in threading.enumerate())
    store.commit(Batch(chunks=[chunk]), stale_jobs=set())
    codec, length = store.conn.execute("SELECT codec, length(data) FROM chunks").fetchone()
    assert codec == "zstd" and length < len(data) / 4
    assert b"".join(part for _, part in store.iter_chunks(file_id)) == data
    store.close()
    assert not any(t.name.startswith("jobvault-zstd") for t in threading.enumerate())


def test_nested_writes_commit_or_roll_back_as_one(tmp_path: Path) -> None:
    store = Store(open_writer(tmp_path / "jv.db"))
    with pytest.raises(StoreError), store.transaction():
        _file(store, "kept-only-if-all-commit.jsonl")  # its own commit joins the outer one
        store.conn.execute("INSERT INTO files (id) VALUES (NULL)")  # NOT NULL columns: refused
    assert store.conn.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0
    with store.transaction():
        _file(store, "a.jsonl")
        _file(store, "b.jsonl")
        assert store.conn.in_transaction
    assert not store.conn.in_transaction
    assert store.conn.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 2
    store.close()


def test_usage_keys_hold_what_each_message_copy_counts(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`usage_keys` is the per-message usage of every job: its counted copies add up to the
    job's totals (what a team vault dedups across machines with)."""
    from tests.helpers import SESSION, run_json, session_lines

    project = tmp_path / "p"
    project.mkdir()
    (project / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(6)))
    run_json(capsys, "import", str(project), "--db", str(db), "--no-progress")
    job = run_json(capsys, "show", SESSION, "--db", str(db))
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd), "
            "MIN(model), MIN(at) FROM usage_keys WHERE session_id = ?",
            (SESSION,),
        ).fetchone()
    finally:
        conn.close()
    assert row[0] == 6
    assert (row[1], row[2]) == (job["input_tokens"], job["output_tokens"])
    assert row[3] == pytest.approx(job["cost_usd"], abs=1e-6)
    assert row[4] == "claude-sonnet-4-20250514" and row[5].startswith("2025-10-01T")


def test_search_index_keeps_its_documents_through_m010(tmp_path: Path) -> None:
    """m010 rebuilds the full-text index without prefix indexes: documents survive, prefix
    queries still match, and deleting a job still drops its document (the trigger)."""
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    steps = migrations.MIGRATIONS
    upto = [m.__name__ for m in steps].index("m010_search_without_prefix_indexes")
    migrations.migrate(conn, steps[:upto])
    conn.execute(
        "INSERT INTO jobs (id, source, session_id, status, record, updated_at) "
        "VALUES ('claude:s', 'claude', 's', 'completed', '{}', 'now')"
    )
    conn.execute("INSERT INTO search_docs (id, job_id) VALUES (7, 'claude:s')")
    conn.execute(
        "INSERT INTO search_fts (rowid, title, prompt, summary, body) "
        "VALUES (7, '', 'deploy the kubernetes cluster', '', '')"
    )
    migrations.migrate(conn)
    hits = conn.execute("SELECT rowid FROM search_fts WHERE search_fts MATCH 'kubern*'")
    assert [r[0] for r in hits] == [7]
    conn.execute("DELETE FROM jobs WHERE id = 'claude:s'")
    assert conn.execute("SELECT COUNT(*) FROM search_fts").fetchone()[0] == 0
    conn.close()


def test_usage_keys_keep_their_rows_and_winners_through_m011(tmp_path: Path) -> None:
    """m011 moves `usage_keys` to arrival order with a digest index: every row is kept with
    the digest of its key, and which session holds a message's best copy is unchanged."""
    db = tmp_path / "x.db"
    conn = sqlite3.connect(db, isolation_level=None)
    steps = migrations.MIGRATIONS
    upto = [m.__name__ for m in steps].index("m011_usage_keys_in_arrival_order")
    migrations.migrate(conn, steps[:upto])
    rows = [  # (key, session, sidechain, total): "a" has the better copy of m1
        ("m1", "a", 0, 30),
        ("m1", "b", 0, 20),
        ("m2", "b", 0, 5),
        ("m3", "a", 1, 9),
    ]
    conn.executemany(
        "INSERT INTO usage_keys (key, session_id, sidechain, total, path, offset, model) "
        "VALUES (?, ?, ?, ?, '/p', 0, 'm')",
        rows,
    )
    migrations.migrate(conn)
    got = conn.execute(
        "SELECT key, key_hash, session_id, sidechain, total, model FROM usage_keys "
        "ORDER BY key, session_id"
    ).fetchall()
    assert got == [(k, key_hash(k), s, side, total, "m") for k, s, side, total in rows]
    conn.close()
    store = Store(open_writer(db))
    try:
        assert store.lost_keys(["a", "b"]) == {"a": frozenset(), "b": frozenset({"m1"})}
    finally:
        store.close()


def test_a_digest_shared_by_two_keys_is_never_one_message(db: Path) -> None:
    """Keys are found by their 8-byte digest and then compared whole: two messages whose
    digests collide are still two messages, each counted by its own session."""
    store = Store(open_writer(db))
    try:
        with store.transaction():  # m1 is given m2's digest: a collision
            store.conn.executemany(
                "INSERT INTO usage_keys (key, key_hash, session_id, sidechain, total, path, "
                "offset) VALUES (?, ?, ?, 0, ?, '/p', 0)",
                [("m1", key_hash("m2"), "a", 10), ("m2", key_hash("m2"), "b", 20)],
            )
        assert store.lost_keys(["a", "b"]) == {"a": frozenset(), "b": frozenset()}
        assert store.lost_among("a", ["m1"]) == set()
        better = UsageCandidate(sidechain=False, total=99, path="/p", offset=0)
        assert store.settle_usage("c", key_rows([("m2", better)])) == {"b"}  # not "a"
        assert store.lost_keys(["a", "b", "c"]) == {
            "a": frozenset(), "b": frozenset({"m2"}), "c": frozenset(),
        }  # fmt: skip
    finally:
        store.close()


def _detail(session: str, **values: Any) -> JobDetail:
    fields: dict[str, Any] = {f.name: None for f in dataclasses.fields(JobRecord)}
    fields.update(
        id=f"claude:{session}", source="claude", session_id=session, models=[],
        status="completed", input_tokens=5, output_tokens=0, cache_creation_tokens=0,
        cache_read_tokens=0, reasoning_tokens=0, cost_usd=0.0, tool_call_count=0,
        failed_tool_calls=0, files_modified=[], message_count=1, user_message_count=1,
        subagent_count=0, prompt=f"deploy {session}",
    )  # fmt: skip
    fields.update(values)
    row = UsageRow("2026-08-03T09", "m", 1, 5, 0, 0, 0, 0, 0.0)
    text = str(fields.pop("search_text", f"kubernetes {session}"))
    return JobDetail(JobRecord(**fields), [], [], [], [row], search_text=text)


def test_a_refused_record_is_rolled_back_alone_and_the_others_are_searchable(
    tmp_path: Path,
) -> None:
    """Each record has a savepoint of its own, and the full-text documents are written after
    them all: a refused record takes neither its rows nor its document with it, nor anyone
    else's; what SQLite will not take in a document's text becomes "?"."""
    store = Store(open_writer(tmp_path / "x.db", "FULL"))
    try:
        jobs = [
            _detail("a"),
            _detail("b", status="nonsense"),  # the CHECK constraint refuses it
            _detail("c", prompt="bad \ud800 text"),  # not encodable as UTF-8
            _detail("d", search_text="lone \udc00 surrogate"),  # only its document is bad
            _detail("e"),
        ]
        refused = store.write_jobs([(job, True) for job in jobs])
        assert sorted(d.record.session_id for d, _ in refused) == ["b", "c"]
        conn = store.conn
        assert [r[0] for r in conn.execute("SELECT session_id FROM jobs ORDER BY 1")] == [
            "a", "d", "e",
        ]  # fmt: skip
        assert [r[0] for r in conn.execute("SELECT job_id FROM job_usage ORDER BY 1")] == [
            "claude:a", "claude:d", "claude:e",
        ]  # fmt: skip
        hits = conn.execute(
            "SELECT d.job_id FROM search_fts f JOIN search_docs d ON d.id = f.rowid "
            "WHERE search_fts MATCH 'kubernetes' ORDER BY 1"
        )
        assert [r[0] for r in hits] == ["claude:a", "claude:e"]
        docs = conn.execute(
            "SELECT d.job_id, f.body FROM search_fts f JOIN search_docs d ON d.id = f.rowid "
            "ORDER BY 1"
        )
        assert docs.fetchall() == [
            ("claude:a", "kubernetes a"), ("claude:d", "lone ? surrogate"),
            ("claude:e", "kubernetes e"),
        ]  # fmt: skip
    finally:
        store.close()
