"""File identity through renames, moves with lost events, truncation, replacement, deletion."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.ingest.engine import Engine
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.helpers import SESSION, archived, assistant, dumps, session_lines, user
from tests.recount import mismatches


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "projects" / "-p"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def engine(tmp_path: Path, db: Path, project: Path) -> Iterator[Engine]:
    store = Store(open_writer(db))
    eng = Engine(Config(watch=(project.parent,), db=db), store, job_write_interval=0)
    yield eng
    eng.close()
    store.close()


def _files(db: Path) -> list[tuple[str, str, int, int]]:
    conn = sqlite3.connect(db)
    try:
        return [
            (Path(p).name, state, gen, offset)
            for p, state, gen, offset in conn.execute(
                "SELECT path, state, generation, offset FROM files ORDER BY id"
            )
        ]
    finally:
        conn.close()


def _tool_calls(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT tool_call_count FROM jobs").fetchone()[0])
    finally:
        conn.close()


def test_rename_inside_the_tree_keeps_the_file(engine: Engine, project: Path, db: Path) -> None:
    lines = session_lines(4)
    path = project / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(lines[:6]))
    engine.rescan([project.parent])
    moved = project / "sub" / f"{SESSION}.jsonl"
    moved.parent.mkdir()
    path.rename(moved)
    with moved.open("ab") as fh:
        fh.write(b"".join(lines[6:]))
    engine.rescan([project.parent])
    engine.finalize_all()
    assert _files(db) == [(moved.name, "active", 0, moved.stat().st_size)]
    assert archived(db, moved) == moved.read_bytes()
    assert _tool_calls(db) == 4


def test_move_whose_old_name_was_seen_missing_first(
    engine: Engine, project: Path, db: Path
) -> None:
    path = project / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(session_lines(3)))
    engine.rescan([project.parent])
    other = project / "elsewhere" / f"{SESSION}.jsonl"
    other.parent.mkdir()
    path.rename(other)
    engine.poll([str(path)], [project.parent])  # only the old name's event arrived
    engine.rescan([project.parent])  # the rescan finds the new name
    engine.finalize_all()
    assert [(n, s) for n, s, _, _ in _files(db)] == [(other.name, "active")]
    assert archived(db, other) == other.read_bytes()
    assert _tool_calls(db) == 3


@pytest.mark.parametrize("size", [0, 100])
def test_truncation_starts_a_new_generation(
    engine: Engine, project: Path, db: Path, size: int
) -> None:
    path = project / f"{SESSION}.jsonl"
    old = b"".join(session_lines(5))
    path.write_bytes(old)
    engine.rescan([project.parent])
    os.truncate(path, size)
    new = b"".join(session_lines(2))
    with path.open("r+b") as fh:
        fh.seek(size)
        fh.write(new)
    # The file is now shorter than what was archived: truncated, then rewritten.
    assert path.stat().st_size < len(old)
    engine.rescan([project.parent])
    engine.finalize_all()
    states = _files(db)
    assert [(s, g) for _, s, g, _ in states] == [("truncated", 0), ("active", 1)]
    assert archived(db, path) == path.read_bytes()
    assert states[0][3] == len(old)  # the old generation's bytes are kept


def test_replacement_by_another_inode(engine: Engine, project: Path, db: Path) -> None:
    path = project / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(session_lines(2)))
    engine.rescan([project.parent])
    tmp = project / "tmp.new"
    tmp.write_bytes(b"".join(session_lines(3, base=500)))
    os.replace(tmp, path)  # an atomic rewrite: a new inode at the same path
    engine.rescan([project.parent])
    engine.finalize_all()
    assert [(s, g) for _, s, g, _ in _files(db)] == [("replaced", 0), ("active", 1)]
    assert archived(db, path) == path.read_bytes()
    assert _tool_calls(db) == 3  # the job follows the current generation


def test_deleted_while_stopped_counts_lost_bytes(tmp_path: Path, db: Path, project: Path) -> None:
    """What was known but not archived when the daemon died, then deleted, is counted lost."""
    path = project / f"{SESSION}.jsonl"
    lines = session_lines(3)
    partial = lines[4][:40]  # the daemon dies while a line is half written
    path.write_bytes(b"".join(lines[:4]) + partial)
    config = Config(watch=(project.parent,), db=db)
    store = Store(open_writer(db))
    first = Engine(config, store)
    first.rescan([project.parent])  # archives the complete lines, sees the partial one
    first.close()  # killed: no finalization
    path.unlink()  # deleted while stopped (Claude Code's clean-up, say)
    second = Engine(config, store)
    second.rescan([project.parent])
    assert second.stats.lost_bytes == len(partial)
    conn = sqlite3.connect(db)
    lost = conn.execute("SELECT state, lost_bytes FROM files").fetchone()
    conn.close()
    assert lost == ("deleted", len(partial))
    second.close()
    store.close()
    from jobvault.store import queries
    from jobvault.store.db import open_reader

    reader = open_reader(db)
    assert queries.db_status(reader, str(db))["lost_bytes"] == len(partial)  # in `status`
    reader.close()


def test_many_files_do_not_exhaust_descriptors(tmp_path: Path, db: Path, project: Path) -> None:
    for i in range(300):
        sid = f"{i:08d}-0000-4000-8000-000000000000"
        (project / f"{sid}.jsonl").write_bytes(b"".join(session_lines(1, session=sid)))
    store = Store(open_writer(db))
    eng = Engine(Config(watch=(project.parent,), db=db, max_open_files=16), store)
    eng.rescan([project.parent])
    assert sum(1 for t in eng.by_id.values() if t.fd is not None) <= 16
    eng.finalize_all()
    eng.close()
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 300
    conn.close()


def test_a_renamed_file_competes_for_shared_messages_under_its_new_path(
    engine: Engine, project: Path, db: Path
) -> None:
    """Two sessions hold copies of one message with the same total: the copy with the smaller
    (path, offset) counts. Once one file is renamed past the other, the count follows its new
    path (as `rebuild` and a recount of the archive have it), and its record names that path."""
    root = project.parent
    other = "33333333-2222-4333-8444-555555555555"
    first = root / "-a" / f"{SESSION}.jsonl"
    second = root / "-b" / f"{other}.jsonl"
    for path, session in ((first, SESSION), (second, other)):
        path.parent.mkdir()
        copy = dumps(assistant("msg_shared", 1, session=session, inp=7, out=3))
        path.write_bytes(dumps(user("go", 0, session=session)) + copy)
    engine.rescan([root])
    engine.finalize_all()
    assert _tokens(db) == {SESSION: 7, other: 0}  # -a/… sorts before -b/…
    moved = root / "-c" / first.name
    moved.parent.mkdir()
    first.rename(moved)
    engine.rescan([root])
    engine.finalize_all()
    assert _tokens(db) == {SESSION: 0, other: 7}  # -b/… sorts before -c/… now
    assert mismatches(db) == []
    conn = sqlite3.connect(db)
    try:
        [(source_path,)] = conn.execute("SELECT source_path FROM jobs WHERE session_id = ?",
                                        (SESSION,)).fetchall()  # fmt: skip
    finally:
        conn.close()
    assert source_path == str(moved)


def _tokens(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT session_id, input_tokens FROM jobs"))
    finally:
        conn.close()


def test_an_import_keeps_no_file_the_workers_read_in_memory(
    tmp_path: Path, db: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`import` forgets each file the workers read once its session is final (memory would
    grow with the history); the archive, the records and a later import are unchanged."""
    from jobvault.ingest import workers

    monkeypatch.setattr(workers, "MIN_COLD_BYTES", 0)  # every session to the workers
    sessions = [f"{n:08d}-1111-4111-8111-111111111111" for n in range(12)]
    for n, sid in enumerate(sessions):
        (project / f"{sid}.jsonl").write_bytes(b"".join(session_lines(3 + n % 4, session=sid)))
    store = Store(open_writer(db))
    engine = Engine(Config(watch=(project.parent,), db=db, workers=2), store)
    try:
        engine.ingest_once([project.parent])
        # (a file the engine read itself would be tracked: none is, the workers read all)
        assert engine.tracker.by_path == {} and engine.tracker.by_id == {}
        assert engine.writer.track_cold  # the daemon's rounds keep tracking what they read
    finally:
        engine.close()
        store.close()
    assert mismatches(db) == []
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT COUNT(*), SUM(status = 'completed') FROM jobs").fetchone()
        offsets = conn.execute("SELECT SUM(offset) FROM files").fetchone()[0]
    finally:
        conn.close()
    assert rows == (12, 12)
    assert offsets == sum(p.stat().st_size for p in project.glob("*.jsonl"))
    for path in project.glob("*.jsonl"):
        assert archived(db, path) == path.read_bytes()
    # A second import reads only what was appended, from the offsets in the database.
    grown = project / f"{sessions[0]}.jsonl"
    with grown.open("ab") as fh:
        fh.write(dumps(assistant("msg_late", 500, session=sessions[0], out=9, text="late")))
    store = Store(open_writer(db))
    engine = Engine(Config(watch=(project.parent,), db=db, workers=2), store)
    try:
        engine.ingest_once([project.parent])
        assert engine.stats.bytes_archived == len(
            dumps(assistant("msg_late", 500, session=sessions[0], out=9, text="late"))
        )
    finally:
        engine.close()
        store.close()
    assert archived(db, grown) == grown.read_bytes()
    assert mismatches(db) == []


def test_a_file_cut_and_grown_back_before_a_worker_reads_it_is_a_new_generation(
    tmp_path: Path, db: Path, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the engine found grown is handed to a worker, and cut and grown back past its
    committed offset before the worker opens it (the same inode, other bytes there). The
    worker reads nothing from an offset that is now inside another line: the engine looks
    again and archives the new content as a new generation. No bad line, nothing of the new
    content filed under the old one, tokens exact by a recount."""
    from jobvault.ingest import workers

    monkeypatch.setattr(workers, "MIN_COLD_BYTES", 0)  # every session to the workers
    path = project / f"{SESSION}.jsonl"
    first = dumps(user("the first prompt", 0))
    old = [first, dumps(assistant("msg_a", 1, out=5)), dumps(assistant("msg_b", 2, out=6))]
    path.write_bytes(b"".join(old))
    _import_with_workers(db, project)
    committed = sum(map(len, old))
    with path.open("ab") as fh:  # grown: the next look sends it to a worker
        fh.write(dumps(assistant("msg_c", 3, out=7)))
    # The new content: the first line kept, then a line that ends past the old offset.
    new = [first, dumps(assistant("msg_d", 4, out=8, text="x" * (committed - len(first))))]
    assert sum(map(len, new)) > committed
    submit = workers.WorkerPool.submit
    cut: list[int] = []

    def cut_and_grow_back(pool: workers.WorkerPool, task: workers.UnitTask) -> Any:
        for ft in task.files:
            if ft.row.path == str(path) and not cut:
                assert ft.row.offset == committed
                with path.open("r+b") as fh:  # (in place: the inode stays)
                    fh.truncate(len(first))
                    fh.seek(0, os.SEEK_END)
                    fh.write(new[1])
                cut.append(ft.row.id)
        return submit(pool, task)

    monkeypatch.setattr(workers.WorkerPool, "submit", cut_and_grow_back)
    _import_with_workers(db, project)
    assert cut, "the file went to a worker"
    conn = sqlite3.connect(db)
    try:
        bad = conn.execute("SELECT offset, length, reason FROM bad_lines").fetchall()
        rows = conn.execute(
            "SELECT id, state, generation, offset FROM files ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    assert bad == []
    size = len(b"".join(new))
    assert rows == [(cut[0], "replaced", 0, committed), (rows[1][0], "active", 1, size)]
    assert archived(db, path) == path.read_bytes() == b"".join(new)
    assert mismatches(db) == []


def _import_with_workers(db: Path, project: Path) -> None:
    store = Store(open_writer(db))
    engine = Engine(Config(watch=(project.parent,), db=db, workers=2), store)
    try:
        engine.ingest_once([project.parent])
    finally:
        engine.close()
        store.close()


def _job_rows(db: Path) -> dict[str, tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT session_id, status, input_tokens, output_tokens, round(cost_usd, 9), "
                "started_at, ended_at, message_count FROM jobs"
            )
        }
    finally:
        conn.close()


def test_workers_settle_resumed_sessions_without_rebuilding_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed sessions read by the workers: a worker builds each record without the copies
    another session of its unit, or one committed before, holds better; the writer rebuilds
    a record from the archive only when that misses something (a session that now loses a
    message). The records are those of the engine reading alone, and exact by a recount; an
    import of nothing new rebuilds nothing."""
    from jobvault.ingest import workers
    from jobvault.ingest.book import SessionBook

    monkeypatch.setattr(workers, "MIN_COLD_BYTES", 0)  # every session to the workers
    rebuilt: list[str] = []
    invalidate = SessionBook.invalidate

    def counted(book: SessionBook, key: str, *args: Any) -> Any:
        rebuilt.append(key)
        return invalidate(book, key, *args)

    monkeypatch.setattr(SessionBook, "invalidate", counted)
    project = tmp_path / "projects" / "-work-app"
    project.mkdir(parents=True)
    sid = [f"{n:08d}-1111-4111-8111-111111111111" for n in range(5)]

    def original_line(i: int, session: str, out: int = 100) -> bytes:
        return dumps(assistant(f"msg_orig_{i}", 10 + i, session=session, inp=10 + i, out=out))

    def write(n: int, lines: list[bytes]) -> None:
        (project / f"{sid[n]}.jsonl").write_bytes(b"".join(lines))

    write(
        0, [dumps(user("start", 0, session=sid[0]))] + [original_line(i, sid[0]) for i in range(4)]
    )
    # Resumed: equal copies of the first two messages (the original's smaller path wins).
    write(1, [original_line(i, sid[1]) for i in range(2)]
          + [dumps(user("again", 60, session=sid[1])),
             dumps(assistant("msg_one", 61, session=sid[1], inp=3, out=4))])  # fmt: skip
    for n in (2, 3, 4):  # (more sessions of the project, none sharing anything)
        write(n, session_lines(2, session=sid[n], base=100 * n))

    def run_import(db: Path, workers_n: int) -> None:
        store = Store(open_writer(db))
        engine = Engine(Config(watch=(project.parent,), db=db, workers=workers_n), store)
        try:
            engine.ingest_once([project.parent])
        finally:
            engine.close()
            store.close()

    db = tmp_path / "vault" / "w.db"
    db.parent.mkdir(mode=0o700)
    run_import(db, 2)
    assert rebuilt == []  # one unit: its worker settled the resumed copies itself
    assert _job_rows(db)[sid[1]][1:3] == (3, 4)  # (only its own message counts)
    # Later, two more resumes of the original: one with equal copies (it loses them to the
    # committed original, as its worker saw), one with a better (later, longer) copy of a
    # message, which the original then loses: only the original is rebuilt.
    late = [f"{n:08d}-2222-4222-8222-222222222222" for n in (5, 6)]
    (project / f"{late[0]}.jsonl").write_bytes(
        b"".join(
            [original_line(i, late[0]) for i in range(3)]
            + [dumps(user("more", 90, session=late[0]))]
        )
    )
    (project / f"{late[1]}.jsonl").write_bytes(
        original_line(2, late[1], out=900) + dumps(user("and more", 95, session=late[1]))
    )
    run_import(db, 2)
    assert rebuilt == [sid[0]]
    rows = _job_rows(db)
    assert rows[late[0]][1:3] == (0, 0) and rows[late[1]][1:3] == (12, 900)
    assert rows[sid[0]][1:3] == (10 + 11 + 13, 300)  # msg_orig_2 counted in late[1]
    assert mismatches(db) == []
    run_import(db, 2)  # nothing new: the final records are left as they are, none rebuilt
    assert rebuilt == [sid[0]] and _job_rows(db) == rows
    alone = tmp_path / "vault" / "e.db"
    run_import(alone, 0)
    assert _job_rows(alone) == rows
