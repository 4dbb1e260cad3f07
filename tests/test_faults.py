"""Fault cases: each a scenario users hit, with the guarantee it keeps (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from jobvault.config import Config
from jobvault.errors import StoreError
from jobvault.ingest.engine import Engine
from jobvault.service.daemon import run_daemon
from jobvault.store.db import open_writer
from jobvault.store.writer import Store
from tests.helpers import SESSION, archived, expected_tokens, session_lines
from tests.test_daemon import _chunk_bytes, _job, eventually

ROOT = Path(__file__).resolve().parents[1]


def _engine(db: Path, root: Path, **extra: Any) -> tuple[Store, Engine]:
    store = Store(open_writer(db))
    return store, Engine(Config(watch=(root,), db=db, **extra), store, job_write_interval=0)


def _daemon_config(tmp_path: Path, **extra: Any) -> Config:
    values: dict[str, Any] = {
        "watch": (tmp_path / "projects",),
        "db": tmp_path / "v" / "j.db",
        "idle_timeout": 60.0,
        "rescan_interval": 0.2,
        "batch_interval": 0.01,
    }
    values.update(extra)
    return Config(**values)


def test_partial_line_across_a_restart(tmp_path: Path, db: Path) -> None:
    root = tmp_path / "projects"
    (root / "-p").mkdir(parents=True)
    path = root / "-p" / f"{SESSION}.jsonl"
    lines = session_lines(3)
    path.write_bytes(b"".join(lines[:3]) + lines[3][:25])
    store, engine = _engine(db, root)
    engine.rescan([root])
    engine.close()  # stopped (killed) while the line was half written: it is not archived
    store.close()
    assert archived(db, path) == b"".join(lines[:3])
    with path.open("ab") as fh:
        fh.write(lines[3][25:] + b"".join(lines[4:]))
    store, engine = _engine(db, root)
    engine.rescan([root])
    engine.finalize_all()
    assert archived(db, path) == path.read_bytes()
    assert _job(db)["tool_call_count"] == 3  # type: ignore[index]
    engine.close()
    store.close()


@pytest.mark.parametrize("size", [0, 200])
def test_truncated_while_stopped(tmp_path: Path, db: Path, size: int) -> None:
    root = tmp_path / "projects"
    (root / "-p").mkdir(parents=True)
    path = root / "-p" / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(session_lines(4)))
    store, engine = _engine(db, root)
    engine.rescan([root])
    engine.close()
    os.truncate(path, size)  # while stopped
    with path.open("ab") as fh:
        fh.write(b"".join(session_lines(1, base=900)))
    engine = Engine(Config(watch=(root,), db=db), store, job_write_interval=0)
    engine.rescan([root])
    engine.finalize_all()
    assert archived(db, path) == path.read_bytes()
    conn = sqlite3.connect(db)
    states = conn.execute("SELECT state FROM files ORDER BY id").fetchall()
    conn.close()
    assert states == [("truncated",), ("active",)]
    engine.close()
    store.close()


def test_copytruncate(tmp_path: Path, db: Path) -> None:
    """logrotate's copytruncate: the content is copied aside, the file cut to 0 and reused."""
    root = tmp_path / "projects"
    (root / "-p").mkdir(parents=True)
    path = root / "-p" / f"{SESSION}.jsonl"
    first = b"".join(session_lines(3))
    path.write_bytes(first)
    store, engine = _engine(db, root)
    engine.rescan([root])
    shutil.copy(path, tmp_path / "rotated.1")  # outside the watched tree
    with path.open("r+b") as fh:
        fh.truncate(0)
    later = b"".join(session_lines(2, base=700))
    path.write_bytes(later)
    engine.rescan([root])
    engine.finalize_all()
    assert archived(db, path) == later
    conn = sqlite3.connect(db)
    old = conn.execute("SELECT offset, state FROM files ORDER BY id").fetchall()
    conn.close()
    assert old[0] == (len(first), "truncated")  # the rotated bytes stay in the archive
    engine.close()
    store.close()


def test_inode_reuse_is_a_new_file(tmp_path: Path, db: Path) -> None:
    root = tmp_path / "projects"
    (root / "-p").mkdir(parents=True)
    path = root / "-p" / f"{SESSION}.jsonl"
    store, engine = _engine(db, root)
    path.write_bytes(b"".join(session_lines(2)))
    engine.rescan([root])
    old_inode = path.stat().st_ino
    path.unlink()
    engine.rescan([root])
    other = root / "-p" / "33333333-2222-4333-8444-555555555555.jsonl"
    for attempt in range(50):  # ask the filesystem for the freed inode back
        other.write_bytes(b"".join(session_lines(2, session=other.stem, base=300)))
        if other.stat().st_ino == old_inode or attempt == 49:
            break  # (without reuse the file must still be archived as a new file)
        other.unlink()
    engine.rescan([root])
    engine.finalize_all()
    assert archived(db, other) == other.read_bytes()  # not mistaken for the deleted file
    conn = sqlite3.connect(db)
    jobs = dict(conn.execute("SELECT session_id, tool_call_count FROM jobs"))
    conn.close()
    assert jobs == {SESSION: 2, other.stem: 2}
    engine.close()
    store.close()


async def test_created_and_deleted_between_rescans(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path, watch_events=False, rescan_interval=5.0)
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    async with run_daemon(config) as daemon:
        await asyncio.sleep(0.5)  # the start-up scan is over; the next one is 5 s away
        for i in range(20):  # appear and vanish faster than any rescan
            flash = project / f"{i:08d}-0000-4000-8000-000000000000.jsonl"
            flash.write_bytes(b"".join(session_lines(1, session=flash.stem)))
            flash.unlink()
        keeper = project / f"{SESSION}.jsonl"
        keeper.write_bytes(b"".join(session_lines(2)))
        daemon.hint(str(keeper))  # an event for the survivor only
        await eventually(lambda: _chunk_bytes(config.db) == keeper.stat().st_size)
        assert daemon.engine is not None and daemon.engine.stats.bad_lines == 0


async def test_new_subdirectory_arrives_with_files(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path, rescan_interval=30.0)  # only events can find it soon
    (tmp_path / "projects").mkdir()
    staging = tmp_path / "staging" / "-newproject"
    sub = staging / SESSION / "subagents"
    sub.mkdir(parents=True)
    (staging / f"{SESSION}.jsonl").write_bytes(b"".join(session_lines(2)))
    (sub / "agent-a1.jsonl").write_bytes(b"".join(session_lines(1, base=50)))
    async with run_daemon(config):
        await asyncio.sleep(0.3)
        staging.rename(tmp_path / "projects" / "-newproject")  # one event for a whole tree
        total = sum(p.stat().st_size for p in (tmp_path / "projects").rglob("*.jsonl"))
        await eventually(lambda: _chunk_bytes(config.db) == total)


@pytest.mark.slow
def test_ten_thousand_files_within_a_small_descriptor_limit(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    line = session_lines(1)
    for i in range(10_000):
        sid = f"{i:08d}-0000-4000-8000-000000000000"
        (project / f"{sid}.jsonl").write_bytes(line[0].replace(SESSION.encode(), sid.encode()))
    db = tmp_path / "v" / "j.db"
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "from jobvault.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "import", str(tmp_path / "projects"), "--db", str(db),
         "--no-progress", "--json"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemon")}, capture_output=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    conn = sqlite3.connect(db)
    files, jobs = conn.execute("SELECT COUNT(*), (SELECT COUNT(*) FROM jobs) FROM files").fetchone()
    conn.close()
    assert files == 10_000 and jobs == 10_000


# Read at import: the autouse fixture clears JOBVAULT_* variables before each test.
BIG_FILE_MB = int(os.environ.get("JOBVAULT_BIG_FILE_MB", "300"))


def _big_file(path: Path, size: int) -> int:
    """Write a session of about `size` bytes (large tool outputs), streaming to disk."""
    written = 0
    n = 0
    with path.open("wb") as fh:
        while written < size:
            for line in session_lines(20, base=n * 100):
                fh.write(line)
                written += len(line)
            blob = (
                b'{"type":"user","message":{"role":"user","content":"' + b"x" * 2_000_000 + b'"}}\n'
            )
            fh.write(blob)
            written += len(blob)
            n += 1
    return written


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc), at this moment."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return found


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("VmHWM")), 0)
    except OSError:
        return 0


def _import_peaks(args: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run `jobvault import ARGS` as a process; return its peak resident memory and the
    largest of its worker processes' (KiB), watched from here while they run."""
    # The import reports its own peak: VmHWM belongs to this process image (ru_maxrss would
    # carry over the forking parent's peak across exec). The workers' high-water marks are
    # read while they live (they only grow, and the workers idle before they end).
    code = (
        "import sys\n"
        "from jobvault.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "print(peak[0], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    workers: dict[int, int] = {}
    deadline = time.monotonic() + 1200
    with tempfile.TemporaryFile() as err:
        with subprocess.Popen(
            [sys.executable, "-c", code, "import", *args],
            env={**os.environ, "PYTHONPATH": str(ROOT / "daemon"), **env},
            stdout=subprocess.DEVNULL, stderr=err,
        ) as proc:  # fmt: skip
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the import did not end"
                for pid in _descendants(proc.pid):
                    workers[pid] = max(workers.get(pid, 0), _hwm_kib(pid))
                time.sleep(0.05)
        err.seek(0)
        stderr = err.read().decode()
    assert proc.returncode == 0, stderr[-2000:]
    return int(stderr.split()[-1]), max(workers.values(), default=0)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_large_file_memory_stays_bounded(tmp_path: Path) -> None:
    """A big transcript is streamed: peak memory does not grow with the file.

    `make test` uses 300 MB, `make soak` 1 GB (JOBVAULT_BIG_FILE_MB). A non-streaming reader
    would need at least the file's size in memory; the bound here is far below it.
    """
    size = BIG_FILE_MB * 1024 * 1024
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    path = project / f"{SESSION}.jsonl"
    written = _big_file(path, size)
    db = tmp_path / "v" / "j.db"
    peak_kib, _workers = _import_peaks([str(project), "--db", str(db), "--no-progress"], {})
    print(
        f"\nlarge file: {written / 1e6:.0f} MB imported with a peak RSS of {peak_kib / 1024:.0f} MB"
    )
    assert peak_kib * 1024 < min(written // 2, 200 * 1024 * 1024), peak_kib
    assert _chunk_bytes(db) == written


def test_database_full_rolls_back_and_retries(tmp_path: Path, db: Path) -> None:
    root = tmp_path / "projects"
    (root / "-p").mkdir(parents=True)
    path = root / "-p" / f"{SESSION}.jsonl"
    path.write_bytes(b"".join(session_lines(2)))
    store, engine = _engine(db, root)
    engine.rescan([root])
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    with path.open("ab") as fh:
        for i in range(30):  # incompressible tool output, so the archive must grow
            fh.write(b"".join(session_lines(2, base=1000 + i)))
            fh.write(b'{"type":"user","content":"' + os.urandom(3000).hex().encode() + b'"}\n')
    with pytest.raises(StoreError, match="full"):
        engine.rescan([root])
    assert engine.stats.fault and "full" in engine.stats.fault
    # Whatever committed is whole: the stored offset equals the bytes archived, and those
    # are exactly the file's first bytes; the rest is still in the file.
    conn = sqlite3.connect(db)
    offset, archived_len = conn.execute(
        "SELECT offset, (SELECT SUM(length) FROM chunks) FROM files"
    ).fetchone()
    conn.close()
    assert offset == archived_len < path.stat().st_size
    assert engine.by_path[str(path)].row.offset == offset
    assert path.read_bytes().startswith(archived(db, path))
    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
    engine.rescan([root])
    engine.finalize_all()
    assert archived(db, path) == path.read_bytes()
    assert engine.stats.fault is None
    engine.close()
    store.close()


async def test_read_only_database_keeps_data_and_status_shows_fault(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path)
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    path = project / f"{SESSION}.jsonl"
    async with run_daemon(config) as daemon:
        assert daemon.engine is not None and daemon.server is not None
        store = daemon.engine.store
        await daemon.on_worker(store.conn.execute, "PRAGMA query_only = ON")  # read-only
        path.write_bytes(b"".join(session_lines(3)))
        await eventually(lambda: daemon.engine is not None and daemon.engine.stats.fault)
        status = await daemon.server.status()
        assert "readonly" in (status["store_fault"] or "")
        assert status["last_error"] and status["bytes_archived"] == 0
        path.unlink()  # deleted while the database refuses writes: the open descriptor keeps it
        await asyncio.sleep(0.5)
        await daemon.on_worker(store.conn.execute, "PRAGMA query_only = OFF")
        await eventually(lambda: _chunk_bytes(config.db) > 0)
        await eventually(lambda: (j := _job(config.db)) and j["tool_call_count"] == 3)
        assert (await daemon.server.status())["store_fault"] is None
    assert _job(config.db)["output_tokens"] == expected_tokens(3)["output_tokens"]  # type: ignore[index]


async def test_long_reader_does_not_stop_ingestion_and_wal_shrinks(tmp_path: Path) -> None:
    config = _daemon_config(tmp_path)
    project = tmp_path / "projects" / "-p"
    project.mkdir(parents=True)
    async with run_daemon(config):
        (project / "seed.jsonl").write_bytes(b"".join(session_lines(1, session="seed")))
        await eventually(lambda: _chunk_bytes(config.db) > 0)
        reader = sqlite3.connect(config.db, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM chunks").fetchone()  # holds a snapshot
        total = 0
        for i in range(120):
            sid = f"{i:08d}-0000-4000-8000-000000000000"
            noise = b'{"type":"user","content":"' + os.urandom(40_000).hex().encode() + b'"}\n'
            data = b"".join(session_lines(5, session=sid)) + noise
            (project / f"{sid}.jsonl").write_bytes(data)
            total += len(data)
        await eventually(lambda: _chunk_bytes(config.db) >= total)  # ingestion went on
        wal = Path(str(config.db) + "-wal")
        held = wal.stat().st_size
        assert held > 2 * 1024 * 1024  # the snapshot kept the WAL from being reused
        reader.execute("COMMIT")
        reader.close()
        await eventually(lambda: not wal.exists() or wal.stat().st_size < held // 4, 20)


BIG_ROLLOUT_MB = int(os.environ.get("JOBVAULT_BIG_ROLLOUT_MB", "320"))


def _big_rollout(path: Path, size: int) -> tuple[int, int]:
    """Write a compressed Codex rollout of about `size` bytes (decompressed) in the shape of
    the 700 MB to 2 GB ones users report: `compacted` lines repeating the history, user
    messages with `data:` image URLs, a token count after each. Streams to disk; returns the
    decompressed size and the last cumulative token total."""
    import base64
    import json
    import random

    import zstandard

    rng = random.Random(5)
    history = [
        {"type": "message", "role": role, "content": [{"type": kind, "text": text * 40}]}
        for role, kind, text in (("user", "input_text", "explain the importer "),
                                 ("assistant", "output_text", "the importer reads "))
    ] * 300  # fmt: skip

    def line(n: int, kind: str, payload: dict[str, Any]) -> bytes:
        ts = f"2025-12-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"
        obj = {"timestamp": ts, "type": kind, "payload": payload}
        return json.dumps(obj, separators=(",", ":")).encode() + b"\n"

    written = n = 0
    with path.open("wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
        for data in (
            line(
                0, "session_meta", {"id": path.name[-46:-10], "cwd": "/w", "cli_version": "0.140"}
            ),
            line(0, "turn_context", {"model": "gpt-5-codex", "cwd": "/w"}),
        ):
            out.write(data)
            written += len(data)
        while written < size:
            n += 1
            if n % 30 == 0:
                image = base64.b64encode(rng.randbytes(400_000)).decode()
                content = [
                    {"type": "input_text", "text": f"look at this {n}"},
                    {"type": "input_image", "image_url": "data:image/png;base64," + image},
                ]
                data = line(n, "response_item", {"type": "message", "role": "user",
                                                 "content": content})  # fmt: skip
            else:
                data = line(n, "compacted", {"message": "", "replacement_history": history})
            total = {"input_tokens": 1000 * n, "cached_input_tokens": 500 * n,
                     "output_tokens": 10 * n, "reasoning_output_tokens": 0,
                     "total_tokens": 1010 * n}  # fmt: skip
            data += line(n, "event_msg", {"type": "token_count", "info": {
                "total_token_usage": total, "last_token_usage": total}})  # fmt: skip
            out.write(data)
            written += len(data)
    return written, n


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("workers", ["0", "2"], ids=["engine", "workers"])
def test_large_compressed_rollout_memory_stays_bounded(tmp_path: Path, workers: str) -> None:
    """A big `.jsonl.zst` rollout is decompressed as a stream, whether the engine or a worker
    process reads it: no process's peak memory grows with the file.

    `make test` uses 320 MB (decompressed), `make soak` 2 GB (JOBVAULT_BIG_ROLLOUT_MB). A reader
    that decompressed the file whole would need at least its size in memory.
    """
    sessions = tmp_path / "codex" / "sessions" / "2025" / "12" / "01"
    sessions.mkdir(parents=True)
    path = sessions / "rollout-2025-12-01T00-00-00-0199c0ff-0000-7000-8000-00000000000b.jsonl.zst"
    written, turns = _big_rollout(path, BIG_ROLLOUT_MB * 1024 * 1024)
    db = tmp_path / "v" / "j.db"
    args = [str(tmp_path / "codex" / "sessions"), "--db", str(db), "--no-progress"]
    peak_kib, worker_kib = _import_peaks(args, {"JOBVAULT_WORKERS": workers})
    print(f"\nlarge rollout: {written / 1e6:.0f} MB ({path.stat().st_size / 1e6:.0f} MB "
          f"compressed) imported with a peak RSS of {peak_kib / 1024:.0f} MB, "
          f"{worker_kib / 1024:.0f} MB in a worker")  # fmt: skip
    bound = min(written // 2, 200 * 1024 * 1024)
    assert peak_kib * 1024 < bound and worker_kib * 1024 < bound, (peak_kib, worker_kib)
    if workers != "0":
        assert worker_kib > 0  # (read by a worker indeed)
    assert _chunk_bytes(db) == written
    conn = sqlite3.connect(db)
    tokens = conn.execute("SELECT input_tokens + cache_read_tokens FROM jobs").fetchall()
    conn.close()
    assert tokens == [(1000 * turns,)]
