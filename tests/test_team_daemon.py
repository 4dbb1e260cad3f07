"""The daemon pushes on its own, and a team server that stops during a push neither stops
nor slows ingestion: the real daemon in-process, a real PostgreSQL server stopped mid-push
(its push held inside a transaction first) and started again."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobvault.config import Config
from jobvault.serve.client import Client
from jobvault.service.daemon import run_daemon
from jobvault.team.schema import SHARED_LOCK
from tests.helpers import run, session_lines
from tests.pg import PgServer
from tests.teamkit import append, check_consistent, sid, write_session
from tests.test_daemon import eventually


def _status(config: Config) -> dict[str, Any]:
    with Client(config.socket) as client:
        status: dict[str, Any] = client.call("status", {})
    return status


def _local_jobs(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT id, message_count FROM jobs").fetchall())
    finally:
        conn.close()


def _remote_jobs(url: str) -> dict[str, int]:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            return dict(conn.execute("SELECT job_id, message_count FROM jobvault.jobs").fetchall())
    except psycopg.OperationalError:
        return {}


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {check.__name__}")
        await asyncio.sleep(0.05)


def _holding(url: str) -> bool:
    """The daemon's push waits inside its transaction, at the lock the test holds."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobvault-daemon' "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(found and found[0])


async def test_the_daemon_pushes_and_rides_out_a_server_stopped_mid_push(
    tmp_path: Path, team_db: str, pg_server: PgServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "team", "init", "--url", team_db)
    assert code == 0, out
    root = tmp_path / "claude"
    db = tmp_path / "vault" / "jobvault.db"
    config = Config(
        watch=(root / "projects",), db=db, idle_timeout=0.5, rescan_interval=0.3,
        batch_interval=0.02, sync_url=team_db, sync_interval=0.2,
    )  # fmt: skip
    first = write_session(root, sid(1), session_lines(3, session=sid(1)))
    async with run_daemon(config):
        # On its own: the record reaches the team database, and status says so.
        await eventually(lambda: _remote_jobs(team_db) == _local_jobs(db) != {}, 30)
        status = await asyncio.to_thread(_status, config)
        assert status["sync"]["state"] in ("idle", "pushing")
        assert status["sync"]["last_push_at"] and status["sync"]["last_error"] is None
        assert "s3cret" not in str(status)

        holder: psycopg.Connection[Any] = await asyncio.to_thread(
            lambda: psycopg.connect(team_db, autocommit=True)
        )
        try:
            holder.execute("SELECT pg_advisory_lock(%s)", (SHARED_LOCK,))
            append(first, session_lines(3, session=sid(1), base=600)[1:])
            await eventually(lambda: _holding(team_db), 30)  # a push, half-way
            held = _local_jobs(db)[f"claude:{sid(1)}"]
        finally:
            try:
                await asyncio.to_thread(pg_server.stop, "fast")  # the server goes away
            finally:
                holder.close()
        try:
            # Ingestion goes on: appends and a new session are read and recorded.
            second = write_session(root, sid(2), session_lines(2, session=sid(2), base=1200))
            append(first, session_lines(2, session=sid(1), base=1800)[1:])
            await eventually(lambda: len(_local_jobs(db)) == 2, 30)
            await eventually(lambda: _local_jobs(db)[f"claude:{sid(1)}"] > held, 30)

            # The push that was waiting on the lock learns of the stop in its own time (under
            # load, after the new lines are recorded): status says so once it has.
            async def failed() -> bool:
                return bool((await asyncio.to_thread(_status, config))["sync"]["last_error"])

            await _until(failed, 30)
            status = await asyncio.to_thread(_status, config)
            sync = status["sync"]
            assert sync["last_error"] and "team database" in sync["last_error"], sync
            assert sync["rows_pending"] and sync["rows_pending"] >= 1, sync
            assert "s3cret" not in str(status)

            async def retrying() -> bool:
                sync = (await asyncio.to_thread(_status, config))["sync"]
                return bool(sync["state"] == "retrying" and sync["retry_in_seconds"])

            await _until(retrying, 30)
            assert second.exists()
        finally:
            await asyncio.to_thread(pg_server.start)
        # The server is back: the push completes, nothing lost, nothing doubled.
        await eventually(lambda: _remote_jobs(team_db) == _local_jobs(db), 60)

        async def caught_up() -> bool:
            sync = (await asyncio.to_thread(_status, config))["sync"]
            return bool(sync["rows_pending"] == 0 and sync["state"] == "idle")

        await _until(caught_up, 30)
        check_consistent(team_db)
        with psycopg.connect(team_db) as conn:
            hours = conn.execute(
                "SELECT job_id, count(*), count(DISTINCT hour) FROM jobvault.job_usage "
                "GROUP BY 1 ORDER BY 1"
            ).fetchall()
        assert all(n == distinct for _, n, distinct in hours)  # each hour once per job
