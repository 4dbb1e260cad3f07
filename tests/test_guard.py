"""A database that cannot vanish or be shared unseen (issue 13, findings 5 to 7).

The real daemon, in-process (`run_daemon`) or as a `jobvault run` subprocess, on real
files: the database deleted, moved or replaced under it, its lock file deleted before a
second daemon starts, its directory open to others.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobvault.cli import main
from jobvault.config import Config
from jobvault.errors import ExitCode
from jobvault.service.daemon import run_daemon
from tests.helpers import SESSION, session_lines
from tests.procs import DaemonProcess
from tests.test_daemon import eventually

OTHER = "22222222-2222-4333-8444-555555555555"


def _seed(root: Path) -> tuple[Path, Path]:
    project = root / "-work-app"
    project.mkdir(parents=True, exist_ok=True)
    first, second = project / f"{SESSION}.jsonl", project / f"{OTHER}.jsonl"
    first.write_bytes(b"".join(session_lines(5)))
    second.write_bytes(b"".join(session_lines(2, session=OTHER, base=900)))
    return first, second


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _archived(db: Path) -> dict[str, tuple[int, int]]:
    """Per path: (archived bytes over every generation, number of file rows)."""
    rows = _query(
        db,
        "SELECT f.path, COALESCE(SUM(c.length), 0), COUNT(DISTINCT f.id) "
        "FROM files f LEFT JOIN chunks c ON c.file_id = f.id GROUP BY f.path",
    )
    return {path: (size, count) for path, size, count in rows}  # fmt: skip


async def _status(path: Path) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b'{"jsonrpc": "2.0", "id": 1, "method": "status"}\n')
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        if not line:  # closed unanswered: the serving cycle ended (it starts again at once)
            raise ConnectionResetError("the daemon closed the connection")
        answer = json.loads(line)
        result: dict[str, Any] = answer["result"]
        return result
    finally:
        writer.close()


@pytest.mark.parametrize("remove", ["db", "db+wal+shm", "move"])
async def test_database_deleted_under_the_daemon_is_put_back(tmp_path: Path, remove: str) -> None:
    root = tmp_path / "projects"
    first, second = _seed(root)
    db = tmp_path / "vault" / "jobvault.db"
    # The default schedule (30 s rescans): the guard, not a rescan, must notice in time.
    config = Config(watch=(root,), db=db)
    async with run_daemon(config) as daemon:
        await eventually(lambda: db.exists() and _query(db, "SELECT COUNT(*) FROM jobs")[0][0] == 2)
        if remove == "move":
            os.rename(db, tmp_path / "moved.db")
        else:
            for suffix in ("", "-wal", "-shm") if "wal" in remove else ("",):
                os.unlink(f"{db}{suffix}")
        started = time.monotonic()
        first.unlink()  # a transcript deleted meanwhile must not be lost
        with second.open("ab") as fh:
            fh.write(b"".join(session_lines(1, session=OTHER, base=2000)))
        while True:
            try:
                status = await _status(config.socket)
            except OSError:  # closed or re-bound while the daemon starts again
                status = {}
            if status.get("db_incident"):
                break
            assert time.monotonic() - started < 35, "the deletion did not show in status"
            await asyncio.sleep(0.2)
        incident = status["db_incident"]
        assert incident["kind"] == ("moved" if remove == "move" else "deleted")
        assert "deleted" in status["last_error"] or "moved" in status["last_error"]
        await eventually(lambda: daemon.incidents == 1 and daemon.ready.is_set(), 30)
        assert db.exists()
        # The daemon serves the database at the path again, with everything archived.
        await eventually(
            lambda: _archived(db).get(str(second), (0, 0))[0] == second.stat().st_size, 30
        )
        assert daemon.incidents == 1
        assert (await _status(config.socket))["db_path"] == str(db)
    archived = _archived(db)
    assert archived[str(first)][0] == len(b"".join(session_lines(5)))  # deleted, yet kept
    assert archived[str(second)] == (second.stat().st_size, 1)  # nothing doubled
    assert _query(db, "SELECT COUNT(*) FROM jobs")[0][0] == 2
    assert os.stat(db).st_mode & 0o777 == 0o600
    if remove == "move":
        assert (tmp_path / "moved.db").exists()  # the moved file is left where it was put


def test_database_replaced_under_the_daemon_exits_74_and_keeps_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "projects"
    _seed(root)
    db = tmp_path / "vault" / "jobvault.db"
    other_root = tmp_path / "elsewhere"
    (other_root / "-p").mkdir(parents=True)
    third = "33333333-2222-4333-8444-555555555555"
    (other_root / "-p" / f"{third}.jsonl").write_bytes(b"".join(session_lines(1, session=third)))
    replacement = tmp_path / "replacement.db"
    assert main(["import", str(other_root), "--db", str(replacement), "--no-progress"]) == 0
    proc = DaemonProcess(root, db, Path(os.environ["XDG_RUNTIME_DIR"]) / "jv.sock",
                         stderr=subprocess.PIPE)  # fmt: skip
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while proc.status()["jobs"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.replace(replacement, db)
        assert proc.proc is not None
        code = proc.proc.wait(35)
        assert code == ExitCode.STORE
        assert proc.proc.stderr is not None
        log = proc.proc.stderr.read().decode()
    finally:
        proc.stop()
    assert "database_incident" in log and "replaced" in log
    # The new file is untouched, the daemon's own copy is saved beside it.
    assert [r[0] for r in _query(db, "SELECT session_id FROM jobs")] == [third]
    saved = list(db.parent.glob("jobvault.db.saved-*"))
    assert len(saved) == 1
    assert sorted(r[0] for r in _query(saved[0], "SELECT session_id FROM jobs")) == sorted(
        [SESSION, OTHER]
    )
    assert saved[0].stat().st_mode & 0o777 == 0o600


def test_second_daemon_after_the_lock_file_is_deleted_exits_75(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    first, second = _seed(root)
    db = tmp_path / "vault" / "jobvault.db"
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    lock = db.with_name("jobvault.db.lock")
    with DaemonProcess(root, db, runtime / "a.sock") as winner:
        deadline = time.monotonic() + 30
        while winner.status()["jobs"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lock.unlink()
        loser = subprocess.run(
            [sys.executable, "-m", "jobvault", "run", "--watch", str(root), "--db", str(db),
             "--socket", str(runtime / "b.sock")],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert loser.returncode == ExitCode.LOCKED, loser.stderr
        message = loser.stderr.decode()
        # Refused by the lock on the database file itself, or (had the winner's next round
        # come first) by the lock file it re-created; either way naming the writer.
        assert f"pid {winner.pid}" in message and "is writing" in message
        # The winner re-creates its lock file, with its pid, within a round or two.
        deadline = time.monotonic() + 35
        while not (lock.exists() and lock.read_text().strip() == str(winner.pid)):
            assert time.monotonic() < deadline, "the lock file was not re-created"
            time.sleep(0.1)
        assert winner.status()["writer_lock_restored"] == 1
        with first.open("ab") as fh:
            fh.write(b"".join(session_lines(1, base=3000)))
        deadline = time.monotonic() + 30
        while _archived(db)[str(first)][0] != first.stat().st_size:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # Nothing archived twice: one file row each, exactly its bytes.
    assert _archived(db) == {
        str(first): (first.stat().st_size, 1),
        str(second): (second.stat().st_size, 1),
    }


def test_writer_lock_holds_the_database_itself(tmp_path: Path) -> None:
    from jobvault.errors import LockedError
    from jobvault.store.lock import WriterLock

    db = tmp_path / "vault" / "jobvault.db"
    with WriterLock(db):
        db.with_name("jobvault.db.lock").unlink()
        with pytest.raises(LockedError, match=rf"pid {os.getpid()}\).*lock file"):
            WriterLock(db).acquire()
    with WriterLock(db):  # released with its holder
        pass


def test_database_directory_is_made_private_or_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "projects"
    _seed(project)
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    assert main(["import", str(project), "--db", str(open_dir / "v.db"), "--no-progress"]) == 0
    assert open_dir.stat().st_mode & 0o777 == 0o700  # only the vault's files: tightened
    crowded = tmp_path / "crowded"  # other files (like /var/lib for root): never chmodded
    crowded.mkdir()
    (crowded / "notes.txt").write_text("not the vault's\n")
    crowded.chmod(0o755)
    capsys.readouterr()
    assert main(["import", str(project), "--db", str(crowded / "v.db"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "holds more than the vault" in err
    assert f"chmod 700 {crowded}" in err
    assert crowded.stat().st_mode & 0o777 == 0o755
    assert (crowded / "v.db").stat().st_mode & 0o777 == 0o600
    crowded.chmod(0o700)  # made private by its user: no warning
    assert main(["import", str(project), "--db", str(crowded / "v.db"), "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    capsys.readouterr()
    assert main(["import", str(project), "--db", str(shared / "v.db")]) == ExitCode.STORE
    assert "shared directory" in capsys.readouterr().err
    assert not (shared / "v.db").exists()
    home = Path(os.environ["HOME"])
    home.chmod(0o755)
    assert main(["import", str(project), "--db", str(home / "v.db")]) == ExitCode.STORE
    assert "home directory" in capsys.readouterr().err
    assert home.stat().st_mode & 0o777 == 0o755  # never changed


async def test_status_never_waits_for_a_busy_engine(tmp_path: Path) -> None:
    """`status` answers from the snapshot of the last round while the worker is busy."""
    root = tmp_path / "projects"
    _seed(root)
    config = Config(watch=(root,), db=tmp_path / "vault" / "jobvault.db")
    async with run_daemon(config) as daemon:
        await eventually(lambda: daemon.snapshot.get("files_tracked") == 2)
        busy = asyncio.ensure_future(daemon.on_worker(time.sleep, 3.0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        status = await _status(config.socket)
        assert time.monotonic() - started < 1.0  # the old code waited 2 s for the worker
        assert status["files_tracked"] == 2 and status["snapshot_age_seconds"] >= 0
        await busy
    shutil.rmtree(tmp_path / "vault")
