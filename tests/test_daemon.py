"""End to end with the real daemon, started in-process on temporary directories."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.errors import ConfigError
from jobvault.service import daemon as service
from jobvault.service.daemon import run_daemon
from tests.helpers import SESSION, archived, expected_tokens, run, session_lines, sha256


def _config(root: Path, db: Path, **extra: Any) -> Config:
    values: dict[str, Any] = {
        "watch": (root,),
        "db": db,
        "idle_timeout": 0.6,
        "rescan_interval": 0.3,
        "batch_interval": 0.02,
    }
    values.update(extra)
    return Config(**values)


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll `check` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(0.05)


def _job(db: Path, session: str = SESSION) -> dict[str, Any] | None:
    if not db.exists():
        return None
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM jobs WHERE session_id = ?", (session,)).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def _chunk_bytes(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COALESCE(SUM(length), 0) FROM chunks").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("events", [True, False], ids=["events", "rescan-only"])
async def test_small_appends_become_one_job(tmp_path: Path, db: Path, events: bool) -> None:
    root = tmp_path / "projects"
    project = root / "-work-app"
    lines = session_lines(8)
    path = project / f"{SESSION}.jsonl"
    # The watch root does not exist yet: it is picked up when it appears.
    async with run_daemon(_config(root, db, watch_events=events)) as daemon:
        project.mkdir(parents=True)
        with path.open("ab", buffering=0) as fh:
            for i, line in enumerate(lines):
                if i % 3 == 1:  # split this line in two writes
                    fh.write(line[:17])
                    await asyncio.sleep(0.03)
                    fh.write(line[17:])
                else:
                    fh.write(line)
                await asyncio.sleep(0.01)
        job = await eventually(lambda: (j := _job(db)) and j["finalized_at"] and j)
        assert daemon.engine is not None
        assert daemon.engine.stats.bad_lines == 0
    assert job["status"] == "completed"
    assert job["input_tokens"] == expected_tokens(8)["input_tokens"]
    assert job["output_tokens"] == expected_tokens(8)["output_tokens"]
    assert job["tool_call_count"] == 8
    assert job["failed_tool_calls"] == 1
    assert archived(db, path) == path.read_bytes()


async def test_deleted_right_after_last_write(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "projects"
    project = root / "-work-app"
    project.mkdir(parents=True)
    path = project / f"{SESSION}.jsonl"
    data = b"".join(session_lines(12))
    digest = None
    async with run_daemon(_config(root, db, idle_timeout=60)):
        with path.open("ab", buffering=0) as fh:
            for start in range(0, len(data), 700):
                fh.write(data[start : start + 700])
                await asyncio.sleep(0.005)
        digest = sha256(path)
        path.unlink()
        job = await eventually(lambda: (j := _job(db)) and j["finalized_at"] and j)
    assert job["tool_call_count"] == 12
    assert job["output_tokens"] == expected_tokens(12)["output_tokens"]
    out = tmp_path / "export.jsonl"
    assert run(capsys, "export", SESSION, "--db", str(db), "-o", str(out))[0] == 0
    assert sha256(out) == digest


async def test_restart_does_not_reread(tmp_path: Path, db: Path) -> None:
    root = tmp_path / "projects"
    project = root / "-work-app"
    project.mkdir(parents=True)
    path = project / f"{SESSION}.jsonl"
    lines = session_lines(6)
    path.write_bytes(b"".join(lines[:10]))
    config = _config(root, db)
    async with run_daemon(config):
        await eventually(lambda: _chunk_bytes(db) == path.stat().st_size)
    first = _chunk_bytes(db)
    async with run_daemon(config) as daemon:
        await asyncio.sleep(0.5)  # a few rescans with nothing new
        assert daemon.engine is not None
        assert daemon.engine.stats.bytes_archived == 0
        with path.open("ab") as fh:
            fh.write(b"".join(lines[10:]))
        await eventually(lambda: _chunk_bytes(db) == path.stat().st_size)
        assert daemon.engine.stats.bytes_archived == path.stat().st_size - first
        job = await eventually(lambda: (j := _job(db)) and j["finalized_at"] and j)
    assert archived(db, path) == path.read_bytes()
    # The resumed session is one job, recomputed over both runs' bytes.
    assert job["tool_call_count"] == 6
    assert job["output_tokens"] == expected_tokens(6)["output_tokens"]


async def test_database_is_private(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "data" / "jobvault.db"
    root = tmp_path / "projects"
    async with run_daemon(_config(root, db)):
        pass
    assert (os.stat(db.parent).st_mode & 0o777) == 0o700
    for name in os.listdir(db.parent):
        if name.startswith("jobvault.db"):
            assert (os.stat(db.parent / name).st_mode & 0o777) == 0o600, name


def test_record_rewrites_are_paced_by_their_build_time(tmp_path: Path, db: Path) -> None:
    """A record is rewritten about every ten times its build time, between 0.1 and 60 s."""
    from jobvault.ingest.book import Job
    from jobvault.ingest.engine import Engine
    from jobvault.sources.claude import ClaudeAdapter
    from jobvault.store.db import open_writer
    from jobvault.store.writer import Store

    store = Store(open_writer(db))
    engine = Engine(_config(tmp_path, db), store)  # the daemon's default pacing
    job = Job("s", ClaudeAdapter(), None)
    paces = {}
    for cost in (0.0005, 0.05, 1.5, 30.0):
        job.build_cost = cost
        paces[cost] = engine.book.interval(job)
    assert paces == {0.0005: 0.1, 0.05: 0.5, 1.5: 15.0, 30.0: 60.0}
    engine.close()
    store.close()


async def test_status_says_starting_until_the_engines_first_snapshot(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Between the engine's creation and its first snapshot `status` is `starting`, never
    `running` without the engine's figures (a client read `files_skipped` and got nothing)."""
    from jobvault.cli import tables
    from jobvault.ingest.engine import Engine
    from jobvault.store import queries
    from jobvault.store.db import open_writer
    from jobvault.store.writer import Store

    store = Store(open_writer(db))
    config = _config(tmp_path, db)
    engine = Engine(config, store)
    daemon = service.Daemon(config)
    status = service._status_provider(daemon)
    try:
        assert (await status())["state"] == "starting"  # no engine yet
        daemon.engine = engine
        early = await status()
        assert early["state"] == "starting" and not early["snapshot_fresh"]
        # `jobvault status` shows it as the server sends it: its part, the database's counts.
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        counts = queries.db_status(reader, str(db))
        reader.close()
        tables.status({"version": "x", "pid": os.getpid(), "uptime_seconds": 1.5, **early,
                       **counts})  # fmt: skip
        shown = capsys.readouterr().out
        assert f"starting (pid {os.getpid()}, up " in shown and "last error" in shown
        daemon.after_round()  # the first snapshot, as the daemon takes it after recovering
        now = await status()
        assert now["state"] == "running" and now["snapshot_fresh"]
        assert now["files_skipped"] == {} and "sessions_quarantined" in now
    finally:
        engine.close()
        store.close()


async def test_a_stop_asked_for_during_start_up_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    """`jobvault run` notes a SIGTERM that arrives before the event loop takes the signals
    over; the daemon then stops as soon as it has started, cleanly, before its backfill."""
    root = tmp_path / "projects" / "-p"
    root.mkdir(parents=True)
    (root / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(3)))
    db = tmp_path / "vault" / "jobvault.db"
    config = _config(tmp_path / "projects", db, socket=Path(os.environ["XDG_RUNTIME_DIR"]) / "s")
    await asyncio.wait_for(service.main(config, early_stop=[15]), 30)
    assert not config.socket.exists()  # shut down in order: the socket is gone
    assert _chunk_bytes(db) == 0  # it stopped before its backfill ...
    total = sum(len(line) for line in session_lines(3))
    async with run_daemon(config):  # ... which the next start does
        await eventually(lambda: _chunk_bytes(db) == total)


async def test_a_stop_asked_for_during_a_round_is_not_waited_out(tmp_path: Path) -> None:
    """SIGTERM while a round runs: the daemon stops when the round ends. (The loop used to
    clear its wake-up after the round and sleep until the next timer, up to 30 s, a stop
    asked for meanwhile unseen; under load a `systemctl stop` could hit that often.)"""
    import threading
    import time

    root = tmp_path / "projects" / "-p"
    root.mkdir(parents=True)
    path = root / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(session_lines(3)))
    db = tmp_path / "vault" / "jobvault.db"
    config = _config(tmp_path / "projects", db, idle_timeout=300.0, rescan_interval=300.0)
    daemon = service.Daemon(config)
    task = asyncio.create_task(service.serve(daemon))
    await asyncio.wait_for(daemon.ready.wait(), 30)
    await eventually(lambda: _chunk_bytes(db) > 0)
    release = threading.Event()
    held = asyncio.ensure_future(daemon.on_worker(release.wait, 30))  # the engine's thread
    await asyncio.sleep(0.2)
    with path.open("ab") as fh:  # a hint: the loop starts a round, queued behind `held`
        fh.write(session_lines(4)[3])
    await asyncio.sleep(0.5)
    assert daemon.in_round
    daemon.stop()  # as SIGTERM does, during the round
    release.set()
    began = time.monotonic()
    await asyncio.wait_for(task, 60)
    await held
    assert time.monotonic() - began < 5, "the stop waited for the loop's next timer"


@pytest.mark.parametrize("mode", [0o777 | 0o1000, 0o775, 0o755])
async def test_an_existing_socket_directory_is_never_changed(tmp_path: Path, mode: int) -> None:
    """A socket path in an existing directory (/tmp, a home) leaves its mode alone: one other
    users can write in is refused with a clear error (they could replace the socket), one
    they can only read is used as it is (the socket is 0600 and checks its peers)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    config = _config(tmp_path / "projects", tmp_path / "vault" / "jobvault.db",
                     socket=shared / "jv.sock")  # fmt: skip
    if mode & 0o022:
        with pytest.raises(ConfigError, match="other users can write in"):
            async with run_daemon(config):
                pass
    else:
        async with run_daemon(config) as daemon:
            assert daemon.server is not None
            assert (os.stat(config.socket).st_mode & 0o777) == 0o600
    assert (os.stat(shared).st_mode & 0o7777) == mode


def test_status_counts_unread_bytes_from_the_files_a_round_touched(
    tmp_path: Path, db: Path
) -> None:
    """`status`'s pending bytes and lag are found among the files changed since the last
    snapshot and those unread then, not by a walk over every file each round; they always
    equal that walk."""
    from jobvault.ingest.engine import Engine
    from jobvault.store.db import open_writer
    from jobvault.store.writer import Store

    root = tmp_path / "projects"
    paths = []
    for i in range(6):
        project = root / f"-p{i}"
        project.mkdir(parents=True)
        path = project / f"{SESSION[:-1]}{i}.jsonl"
        path.write_bytes(b"".join(session_lines(2, session=f"{SESSION[:-1]}{i}")))
        paths.append(path)
    store = Store(open_writer(db))
    engine = Engine(_config(root, db), store)

    def check() -> int:
        got = engine.snapshot()
        walked = engine._unread_bytes(list(engine.tracker.by_id))
        assert got["pending_bytes"] == sum(walked.values())
        assert (got["ingest_lag_seconds"] > 0) == bool(walked)
        return int(got["pending_bytes"])

    try:
        engine.rescan([root])
        assert check() == 0
        grown = 0
        for path in paths[::2]:  # grown, looked at, not read (a stop stops the reading)
            extra = session_lines(3, session=path.stem)[2]
            with path.open("ab") as fh:
                fh.write(extra)
            grown += len(extra)
        engine.stopping.set()
        engine.rescan([root])
        assert check() == grown  # unread: seen by the look, not yet read
        assert check() == grown  # still (nothing changed, nothing walked)
        engine.stopping.clear()
        engine.poll([str(paths[0])], [root])
        assert 0 < check() < grown  # one of them read
        paths[2].unlink()
        engine.rescan([root])  # read to its end (held open), the others too
        assert check() == 0
    finally:
        engine.close()
        store.close()
